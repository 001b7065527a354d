"""Reading batch inputs (JSONL, CSV, Parquet) and writing results (Parquet), with pyarrow.

This is the only module that touches pyarrow (it ships no type information, so the rest of the
code sees plain rows: ``list[dict[str, object]]``). Functions here are blocking; callers run them
in a thread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from bot.errors import ConfigError

INPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
INPUT_ACCEPTED = "give a .jsonl, .csv or .parquet file with a 'message' column"

#: Columns a result table adds after the input's own columns, with their Arrow types.
RESULT_FIELDS: tuple[tuple[str, Any], ...] = (
    ("row", pa.int64()),
    ("reply", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("latency_ms", pa.int64()),
    ("retrieved", pa.string()),
)
RESULT_COLUMNS = tuple(name for name, _ in RESULT_FIELDS)


@dataclass(frozen=True, slots=True)
class Table:
    """Rows as Python values, plus the Arrow schema to write them back with the same types."""

    columns: list[str]
    rows: list[dict[str, object]]
    schema: Any  # pyarrow.Schema
    metadata: dict[str, str]


def _from_arrow(table: Any) -> Table:
    raw = table.schema.metadata or {}
    metadata = {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"fmbot.")}
    return Table(list(table.column_names), table.to_pylist(), table.schema, metadata)


def _read_jsonl(path: Path) -> Table:
    # Parsed here rather than by pyarrow: an error can name its line, and rows may differ in
    # which keys they have.
    rows: list[dict[str, object]] = []
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    "--input", f"{path}:{lineno}", f"not valid JSON ({exc.msg}); {INPUT_ACCEPTED}"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    "--input",
                    f"{path}:{lineno}",
                    f"each line must be a JSON object; {INPUT_ACCEPTED}",
                )
            rows.append(row)
            columns.update(dict.fromkeys(row))
    names = list(columns)
    full = [{name: row.get(name) for name in names} for row in rows]
    try:
        schema = pa.Table.from_pylist(full).schema if full else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ConfigError(
            "--input", str(path), f"a column mixes types that Parquet cannot hold ({exc})"
        ) from None
    return Table(names, full, schema, {})


def _read_csv(path: Path) -> Table:
    # Every column is read as text so values come back exactly as written ("007" stays "007");
    # variables are converted to their template types later. Empty cells are missing values.
    names = pa_csv.open_csv(path).schema.names
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=True,
        null_values=[""],
    )
    return _from_arrow(pa_csv.read_csv(path, convert_options=options))


def read_input(path: Path) -> Table:
    """The rows of a batch input file; ConfigError says what is wrong with it."""
    if path.suffix not in INPUT_SUFFIXES:
        raise ConfigError("--input", str(path), INPUT_ACCEPTED)
    if not path.is_file():
        raise ConfigError("--input", str(path), f"no such file; {INPUT_ACCEPTED}")
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".csv":
            return _read_csv(path)
        return read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(
            "--input", str(path), f"cannot read it ({exc}); {INPUT_ACCEPTED}"
        ) from None


def read_parquet(path: Path) -> Table:
    return _from_arrow(pq.read_table(path))


def parquet_records(data: bytes) -> list[dict[str, object]]:
    """The records of a Parquet file held in memory (a downloaded batch result part)."""
    return list(pq.read_table(pa.BufferReader(data)).to_pylist())


def write_parquet(
    path: Path, input_schema: Any, rows: list[dict[str, object]], metadata: dict[str, str]
) -> None:
    """Write result rows (input columns, then RESULT_FIELDS) atomically: a crash mid-write
    leaves the previous file, never a truncated one."""
    schema = pa.schema([*input_schema, *(pa.field(n, t) for n, t in RESULT_FIELDS)])
    schema = schema.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    _write_atomic(path, pa.Table.from_pylist(rows, schema=schema))


def write_records(path: Path, rows: list[dict[str, object]], metadata: dict[str, str]) -> None:
    """Write rows whose column types Arrow infers from the values (``fmbot eval`` results:
    lists of assertion outcomes), atomically like :func:`write_parquet`."""
    table = pa.Table.from_pylist(rows)
    meta = {k.encode(): v.encode() for k, v in metadata.items()}
    _write_atomic(path, table.replace_schema_metadata(meta))


def _write_atomic(path: Path, table: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)

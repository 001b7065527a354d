"""The progress file of a batch run: one JSON line per finished row, next to the output.

Each row's result is appended and fsynced as soon as it is known, so a run killed at any moment
loses at most the rows in flight. The first line records what the results belong to (template
and model); a run with different ones refuses to mix its results in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

log = logging.getLogger(__name__)

Status = Literal["ok", "error"]
#: Why a row failed, for the advice after a run: ``retry`` (network, 429, 5xx, timeout: the
#: same row may succeed later), ``input`` (a cell the template or model cannot use: fix it),
#: ``other`` (refused content, credentials, a bug).
Failure = Literal["retry", "input", "other"]
HEADER_KIND = "fmbot-batch-progress"
#: Lines about a Yandex batch task (``--mode batch``): its datasets and ids, as soon as they exist.
TASK_KIND = "fmbot-batch-task"


@dataclass(frozen=True, slots=True)
class RowResult:
    """What a row produced. ``key`` fingerprints the row's inputs, so an edited row re-runs."""

    row: int
    key: str
    status: Status
    reply: str | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: int | None = None
    failure: Failure | None = None
    #: The passages retrieved for the row (a template with ``knowledge:``), as JSON.
    retrieved: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowResult:
        status: Status = "ok" if data.get("status") == "ok" else "error"
        failure = data.get("failure")

        def number(name: str) -> int | None:
            value = data.get(name)
            return None if value is None else int(value)

        return cls(
            row=int(data["row"]),
            key=str(data["key"]),
            status=status,
            reply=None if data.get("reply") is None else str(data["reply"]),
            error=None if data.get("error") is None else str(data["error"]),
            input_tokens=number("input_tokens"),
            output_tokens=number("output_tokens"),
            latency_ms=number("latency_ms"),
            failure=failure if failure in ("retry", "input", "other") else None,
            retrieved=None if data.get("retrieved") is None else str(data["retrieved"]),
        )


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress.jsonl")


def read_progress(path: Path) -> tuple[dict[str, str], list[RowResult]]:
    """(header, results) of a progress file; a missing file is empty.

    A torn last line (the process died mid-write) is skipped: that row simply runs again.
    """
    if not path.exists():
        return {}, []
    header: dict[str, str] = {}
    results: list[RowResult] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                data = json.loads(line)
                if data.get("kind") == HEADER_KIND:
                    header = {k: str(v) for k, v in data.items() if k != "kind"}
                elif data.get("kind") == TASK_KIND:
                    continue  # see read_task_notes
                else:
                    results.append(RowResult.from_json(data))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning(
                    "%s:%d: unreadable progress line skipped; its row runs again", path, lineno
                )
    return header, results


def read_task_notes(path: Path) -> list[dict[str, Any]]:
    """The batch-task lines of a progress file, oldest first (torn lines skipped)."""
    if not path.exists():
        return []
    notes = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("kind") == TASK_KIND:
                notes.append(data)
    return notes


class ProgressFile:
    """Appends results durably. Use ``async with``; safe to call from concurrent tasks."""

    def __init__(self, path: Path, header: dict[str, str]) -> None:
        self.path = path
        self._header = header
        self._file: IO[str] | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> IO[str]:
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as raw:
                raw.seek(-1, os.SEEK_END)
                torn = raw.read(1) != b"\n"
            new = False
        else:
            new = True
        f = self.path.open("a", encoding="utf-8")
        if new:
            self._write(f, {"kind": HEADER_KIND, **self._header})
        elif torn:  # the process died mid-line: start ours on a fresh one
            f.write("\n")
        return f

    @staticmethod
    def _write(f: IO[str], data: dict[str, Any]) -> None:
        f.write(json.dumps(data, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())

    async def __aenter__(self) -> ProgressFile:
        self._file = await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def note(self, data: dict[str, Any]) -> None:
        """Append a batch-task line (ids of datasets and tasks) durably."""
        assert self._file is not None, "use `async with ProgressFile(...)`"
        async with self._lock:
            await asyncio.to_thread(self._write, self._file, {"kind": TASK_KIND, **data})

    async def append(self, result: RowResult) -> None:
        assert self._file is not None, "use `async with ProgressFile(...)`"
        async with self._lock:
            await asyncio.to_thread(self._write, self._file, asdict(result))

"""Two evaluation runs side by side: cells aligned by case, template, model and repeat; which
went from pass to fail and back; the pass-rate change per template × model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bot.batch import table
from bot.batch.compare import escape, page
from bot.errors import ConfigError
from bot.eval.run import RESULTS

CellId = tuple[int, str, str, int]  # case, template, model, repeat


@dataclass(frozen=True, slots=True)
class Flip:
    """A cell whose outcome differs: ``before``/``after`` None when the run has no such cell."""

    case: int
    message: str
    template: str
    model: str
    repeat: int
    before: bool | None
    after: bool | None
    reasons: str  # why it failed, in the run where it failed (B first)


@dataclass(frozen=True, slots=True)
class RateChange:
    template: str
    model: str
    rate_a: float | None
    rate_b: float | None


@dataclass(frozen=True, slots=True)
class EvalComparison:
    name_a: str
    name_b: str
    flips: list[Flip]
    rates: list[RateChange]

    def summary(self) -> list[str]:
        worse = sum(f.before is True and f.after is False for f in self.flips)
        better = sum(f.before is False and f.after is True for f in self.flips)
        lines = [f"pass → fail: {worse}; fail → pass: {better}"]
        for r in self.rates:
            lines.append(
                f"{r.template} × {r.model}: {_rate(r.rate_a)} → {_rate(r.rate_b)}"
                f"{_delta(r.rate_a, r.rate_b)}"
            )
        return lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    return f" ({(b - a) * 100:+.0f} points)"


def _reasons(row: dict[str, object]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('error') or 'no reply'}"
    found = row.get("assertions")
    failed = [
        f"{a.get('type')}: {a.get('reason')}"
        for a in (found if isinstance(found, list) else [])
        if isinstance(a, dict) and not a.get("pass") and (a.get("weight") or 0) > 0
    ]
    return "; ".join(failed)


def load_cells(directory: Path) -> dict[CellId, dict[str, object]]:
    path = directory / RESULTS
    try:
        data = table.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a missing or damaged file
        raise ConfigError(
            "DIR",
            str(directory),
            f"cannot read its {RESULTS} ({type(exc).__name__}); give the "
            "--output of an `fmbot eval run`",
        ) from None
    if "fmbot.eval" not in data.metadata:
        raise ConfigError("DIR", str(directory), f"its {RESULTS} was not written by fmbot eval")
    return {
        (int(str(r["case"])), str(r["template"]), str(r["model"]), int(str(r["repeat"]))): r
        for r in data.rows
    }


def _rates(cells: dict[CellId, dict[str, object]]) -> dict[tuple[str, str], float]:
    outcomes: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for (_, template, model, _), row in cells.items():
        outcomes[(template, model)].append(bool(row.get("pass")))
    return {k: sum(v) / len(v) for k, v in outcomes.items()}


def compare_dirs(a: Path, b: Path) -> EvalComparison:
    cells_a, cells_b = load_cells(a), load_cells(b)
    flips = []
    for cell in sorted(cells_a.keys() | cells_b.keys()):
        left, right = cells_a.get(cell), cells_b.get(cell)
        before = None if left is None else bool(left.get("pass"))
        after = None if right is None else bool(right.get("pass"))
        if before == after:
            continue
        either = right if right is not None else left
        assert either is not None
        failing = right if after is False else left
        flips.append(
            Flip(
                case=cell[0],
                message=str(either.get("message") or ""),
                template=cell[1],
                model=cell[2],
                repeat=cell[3],
                before=before,
                after=after,
                reasons=_reasons(failing) if failing is not None else "",
            )
        )
    rates_a, rates_b = _rates(cells_a), _rates(cells_b)
    rates = [
        RateChange(t, m, rates_a.get((t, m)), rates_b.get((t, m)))
        for t, m in sorted(rates_a.keys() | rates_b.keys())
    ]
    return EvalComparison(str(a), str(b), flips, rates)


def _outcome(value: bool | None) -> str:
    return "-" if value is None else ("pass" if value else "fail")


def to_html(c: EvalComparison) -> str:
    """A self-contained page; every value from the runs is escaped."""
    rows = "\n".join(
        f'<tr class="changed"><td class="num">{f.case}</td><td class="text">{escape(f.message)}'
        f"</td><td>{escape(f.template)}</td><td>{escape(f.model)}</td>"
        f'<td class="num">{f.repeat}</td><td>{_outcome(f.before)} → {_outcome(f.after)}</td>'
        f'<td class="text">{escape(f.reasons)}</td></tr>'
        for f in c.flips
    )
    body = (
        "<table><thead><tr><th>case</th><th>message</th><th>template</th><th>model</th>"
        "<th>repeat</th><th>A → B</th><th>why it failed</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody></table>\n"
    )
    return page(f"fmbot eval: {c.name_a} vs {c.name_b}", c.name_a, c.name_b, c.summary(), body)

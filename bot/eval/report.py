"""What an evaluation says: pass rates per template × model and per metric, JUnit XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean

from bot.eval.run import Cell, EvalResult

#: Characters XML 1.0 cannot hold even escaped (replies may contain any of them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Line:
    """One template × model of the matrix."""

    template: str
    model: str
    cells: int
    passed: int
    #: Cases that passed in every repeat, of all cases (pass^N).
    every_time: int
    cases: int
    score: float
    input_tokens: int
    output_tokens: int
    latency_ms: float | None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cells if self.cells else 0.0

    @property
    def pass_every_time(self) -> float:
        return self.every_time / self.cases if self.cases else 0.0


@dataclass(frozen=True, slots=True)
class MetricLine:
    template: str
    model: str
    metric: str
    checked: int
    passed: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.checked if self.checked else 0.0


def _pairs(result: EvalResult) -> dict[tuple[str, str], list[Cell]]:
    by_pair: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in result.cells:
        by_pair[(cell.key.template, cell.key.model)].append(cell)
    return by_pair


def matrix(result: EvalResult) -> list[Line]:
    lines = []
    for (template, model), cells in _pairs(result).items():
        by_case: dict[int, list[bool]] = defaultdict(list)
        for c in cells:
            by_case[c.key.case].append(c.passed)
        latencies = [c.latency_ms for c in cells if c.latency_ms is not None]
        lines.append(
            Line(
                template=template,
                model=model,
                cells=len(cells),
                passed=sum(c.passed for c in cells),
                every_time=sum(all(v) for v in by_case.values()),
                cases=len(by_case),
                score=fmean(c.score for c in cells),
                input_tokens=sum(c.input_tokens or 0 for c in cells),
                output_tokens=sum(c.output_tokens or 0 for c in cells),
                latency_ms=fmean(latencies) if latencies else None,
            )
        )
    return lines


def metrics(result: EvalResult) -> list[MetricLine]:
    lines = []
    for (template, model), cells in _pairs(result).items():
        counts: dict[str, list[bool]] = defaultdict(list)
        for c in cells:
            for g in c.graded:
                if g.assertion.metric:
                    counts[g.assertion.metric].append(g.outcome.passed)
        for metric, outcomes in sorted(counts.items()):
            lines.append(MetricLine(template, model, metric, len(outcomes), sum(outcomes)))
    return lines


def below_threshold(result: EvalResult) -> list[Line]:
    """The template × model lines whose pass rate is below the suite's threshold."""
    return [line for line in matrix(result) if line.pass_rate < result.threshold]


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(result: EvalResult, name: str) -> bytes:
    """JUnit XML: a testsuite per template × model, a testcase per cell (every repeat)."""
    root = ET.Element("testsuites", name=_xml_text(name))
    for (template, model), cells in _pairs(result).items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_xml_text(f"{template} × {model}"),
            tests=str(len(cells)),
            failures=str(sum(not c.passed and c.status == "ok" for c in cells)),
            errors=str(sum(c.status != "ok" for c in cells)),
        )
        for c in cells:
            repeat = f" (repeat {c.key.repeat + 1})" if result.repeats > 1 else ""
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_xml_text(f"{template} × {model}"),
                name=_xml_text(f"case {c.key.case}: {c.message[:80]}{repeat}"),
                time=f"{(c.latency_ms or 0) / 1000:.3f}",
            )
            if c.passed:
                continue
            reasons = c.failures() or ["failed"]
            kind = "failure" if c.status == "ok" else "error"
            element = ET.SubElement(case, kind, message=_xml_text(reasons[0]))
            element.text = _xml_text("\n".join(reasons))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))

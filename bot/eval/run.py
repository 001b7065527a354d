"""A whole evaluation run."""

from __future__ import annotations

from pathlib import Path


def example_suite() -> str:
    """The commented example ``fmbot eval init`` writes."""
    return (Path(__file__).parent / "example.yaml").read_text(encoding="utf-8")

"""The console's ``/see PATH [QUESTION]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.console import CONSOLE_HELP, see


@pytest.mark.parametrize(
    ("arg", "path", "question"),
    [
        ("plant.jpg what is wrong?", "plant.jpg", "what is wrong?"),
        ("/tmp/a.png", "/tmp/a.png", ""),
        ('"my photos/a b.png" what\'s this?', "my photos/a b.png", "what's this?"),
        ("'unclosed path.png", "unclosed path.png", ""),
        ("~/x.jpg", str(Path.home() / "x.jpg"), ""),
    ],
)
def test_see_takes_a_path_and_an_optional_question(arg: str, path: str, question: str) -> None:
    assert see(arg) == (Path(path).absolute(), question)


@pytest.mark.parametrize("arg", ["", "   ", '""'])
def test_see_without_a_path_is_none(arg: str) -> None:
    assert see(arg) is None


def test_help_lists_see() -> None:
    assert "/see PATH [QUESTION]" in CONSOLE_HELP

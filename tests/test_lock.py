"""requirements/dev.lock pins what pyproject.toml asks for, and every install goes through it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.test_readme import readme_commands

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;\s*(.+))?$")


def locked() -> dict[str, list[tuple[Version, Marker | None]]]:
    """name -> its pins (a universal lock may pin a package twice, under exclusive markers)."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name, version, marker = match.groups()
            pins.setdefault(canonicalize_name(name), []).append(
                (Version(version), Marker(marker) if marker else None)
            )
    return pins


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_the_lock_pins_a_version_pyproject_allows(requirement: Requirement) -> None:
    pins = locked().get(canonicalize_name(requirement.name))
    assert pins, f"{requirement.name} is not in {LOCK.name}: run `make lock`"
    for version, _ in pins:
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {requirement.name}=={version}, pyproject.toml asks for "
            f"{requirement.specifier}: run `make lock`"
        )


def test_pins_are_exact_and_lines_parse() -> None:
    pins = locked()
    assert len(pins) > 50  # the whole tree, not only the direct dependencies
    for line in LOCK.read_text().splitlines():
        assert not line or line.lstrip().startswith("#") or PIN.match(line), line


def test_every_install_goes_through_the_lock() -> None:
    _, test_command = readme_commands()
    assert "-c requirements/dev.lock" in test_command
    assert "pip install -q -c $(LOCK) -e '.[dev]'" in (ROOT / "Makefile").read_text()
    # The Dockerfile's install: tests/test_compose.py

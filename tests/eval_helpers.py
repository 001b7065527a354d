"""Running ``fmbot eval`` as a user does: a real process of this tree's code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI

FMBOT = str(Path(sys.executable).parent / "fmbot")
#: The console script imports whichever tree the venv was installed from: point it at ours.
TREE = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    return clean | {
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_TEXT_MODEL": "echo:",
        "PYTHONPATH": TREE,
        "COLUMNS": "200",
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def openai_env(env: dict[str, str], fake: FakeOpenAI) -> dict[str, str]:
    """``env`` with the fake OpenAI server's address and key (models ``openai:gpt-test``)."""
    assert fake.api_key is not None
    return env | {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url}


async def fmbot(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run fmbot without blocking the event loop a fake server answers on."""
    proc = await asyncio.create_subprocess_exec(
        FMBOT, *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def graded(row: dict[str, object], kind: str) -> dict[str, object]:
    """The outcome of a results.parquet row's first assertion of type ``kind``."""
    assertions = row["assertions"]
    assert isinstance(assertions, list)
    found: dict[str, object] = next(a for a in assertions if a["type"] == kind)
    return found

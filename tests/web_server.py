"""``fmbot web`` as a real process on a free port, for the API and browser tests.

The command runs this tree's code (PYTHONPATH), whatever fmbot the venv's entry point installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bot.settings import shipped_prompts_dir
from tests.conftest import free_port
from tests.fakes import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
FMBOT = str(Path(sys.executable).parent / "fmbot")
START_WITHIN = 30.0  # s for the process to answer /healthz (imports, the store) on a busy machine
STOP_WITHIN = 15.0  # s for a clean shutdown after SIGTERM


@dataclass
class WebServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def web_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: echo model, a store and a copy of the shipped templates in tmp."""
    prompts = tmp_path / "prompts"
    if not prompts.exists():
        shutil.copytree(shipped_prompts_dir(), prompts)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_", "PYTHONPATH"))
    }
    return env | {
        "PYTHONPATH": str(ROOT),
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_PROMPTS_DIR": str(prompts),
        "FMBOT_TEXT_MODEL": "echo:?chunks=4",
        **extra,
    }


def openai_env(tmp_path: Path, openai: FakeOpenAI, **extra: str) -> dict[str, str]:
    """web_env on the fake OpenAI server's text model."""
    return web_env(
        tmp_path,
        FMBOT_TEXT_MODEL="openai:gpt-test",
        OPENAI_API_KEY=openai.api_key or "",
        OPENAI_BASE_URL=openai.base_url,
        **extra,
    )


#: A knowledge base for the shipped ``support`` template, as ``fmbot kb add support`` builds
#: it. The second heading is markup, which the page must show as text.
SUPPORT_DOCS = {
    "warranty.md": "# Warranty\n\nEvery product has a two-year warranty.\n",
    "returns.md": "# Returns <img src=x id=injected>\n\nReturns are accepted for thirty days.\n",
}


def add_support_kb(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``fmbot kb add support`` on SUPPORT_DOCS written to ``folder``, embedded by the fake
    OpenAI server's model (cheap; a test of the web channel needs sources, not good ranking).
    Returns ``env`` with that embedder, which the server must use too."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SUPPORT_DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    env = env | {"FMBOT_EMBED_MODEL": "openai:embed-test"}
    added = run_fmbot(env, "kb", "add", "support", str(folder))
    assert added.returncode == 0, added.stderr
    return env


def run_fmbot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fmbot ARGS`` to completion (commands that are expected to stop at once)."""
    return subprocess.run(
        [FMBOT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@contextlib.contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    """``fmbot web`` on 127.0.0.1:free port until the block ends; then SIGTERM, and it must
    exit 0 within STOP_WITHIN."""
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / f"web-{url.rsplit(':', 1)[1]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FMBOT, "web", "--listen", url.removeprefix("http://")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = WebServer(url, proc, log)
    try:
        _wait_until_up(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WITHIN)
            raise AssertionError(f"fmbot web ignored SIGTERM:\n{server.output()}") from None
    assert code == 0, f"fmbot web exited {code}:\n{server.output()}"


def _wait_until_up(server: WebServer) -> None:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"fmbot web exited at start:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"fmbot web did not answer within {START_WITHIN} s:\n{server.output()}")

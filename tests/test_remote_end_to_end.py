"""The console and the dialog manager on remote backends, against the fake servers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.events import FinalText, Incoming, Notice, TextDelta
from bot.models.base import GenerationOptions
from bot.models.yandex import YandexClient, YandexCredentials, YandexTextModel
from bot.prompts.library import PromptLibrary
from bot.stores import open_store
from tests.fakes import FakeOpenAI, FakeYandex, Fault

FMBOT = str(Path(sys.executable).parent / "fmbot")


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    return env | {"FMBOT_HOME": str(tmp_path / "home")}


def yandex_env(fake: FakeYandex, tmp_path: Path, key: str | None = None) -> dict[str, str]:
    return base_env(tmp_path) | {
        "FMBOT_TEXT_MODEL": "yandex:yandexgpt-lite/latest",
        "YANDEX_API_KEY": key or fake.api_key,
        "YANDEX_FOLDER_ID": fake.folder_id,
        "YANDEX_FM_URL": fake.llm_url,
        "YANDEX_OPERATIONS_URL": fake.operations_url,
    }


async def fmbot(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run the CLI without blocking the loop that serves the fakes."""
    proc = await asyncio.create_subprocess_exec(
        FMBOT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_console_on_yandexgpt_streams_and_stores(yandex: FakeYandex, tmp_path: Path) -> None:
    env = yandex_env(yandex, tmp_path)
    code, out, err = await fmbot(env, "console", "--chat", "y", stdin="Hello there\n")
    assert code == 0, err
    assert out == "Echo: Hello there\n"
    [call] = yandex.requests_to("/foundationModels/v1/completion")
    assert call.body["completionOptions"]["stream"] is True
    assert call.body["modelUri"] == f"gpt://{yandex.folder_id}/yandexgpt-lite/latest"
    assert call.body["messages"][0]["role"] == "system"
    # History was trimmed with the service's own tokenizer.
    assert yandex.requests_to("/foundationModels/v1/tokenizeCompletion")
    code, out, _ = await fmbot(env, "history", "y")
    assert out == "user: Hello there\nassistant: Echo: Hello there\n"


async def test_rejected_key_is_explained_without_leaking_it(
    yandex: FakeYandex, tmp_path: Path
) -> None:
    wrong = "AQVN-wrong-key-that-must-not-leak"
    code, out, err = await fmbot(yandex_env(yandex, tmp_path, key=wrong), "console", stdin="Hi\n")
    assert code == 0  # the console goes on; the user is told what happened
    assert "check YANDEX_API_KEY" in err
    assert wrong not in out + err
    assert "Traceback" not in err


async def test_missing_credentials_is_a_config_error(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"FMBOT_TEXT_MODEL": "yandex:yandexgpt/latest"}
    code, out, err = await fmbot(env, "console", stdin="Hi\n")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "fmbot: configuration error: YANDEX_API_KEY=(not set) is not valid: set YANDEX_API_KEY "
        "(or YANDEX_IAM_TOKEN) and YANDEX_FOLDER_ID"
    ]


async def test_console_on_an_openai_compatible_server(openai: FakeOpenAI, tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "FMBOT_TEXT_MODEL": "openai:gpt-test",
        "OPENAI_API_KEY": openai.api_key or "",
        "OPENAI_BASE_URL": openai.base_url,
    }
    code, out, err = await fmbot(env, "console", stdin="Ping\n")
    assert code == 0, err
    assert out.strip() and "Ping" in out
    [call] = openai.requests_to("/chat/completions")
    assert call.body["stream"] is True and call.body["model"] == "gpt-test"


async def test_cut_stream_through_the_manager(yandex: FakeYandex, tmp_path: Path) -> None:
    credentials = YandexCredentials(
        folder_id=yandex.folder_id, api_key=SecretStr(yandex.api_key), iam_token=None
    )
    client = YandexClient(credentials, fm_url=yandex.llm_url, operations_url=yandex.operations_url)
    model = YandexTextModel(client, f"gpt://{yandex.folder_id}/yandexgpt-lite/latest")
    store = await open_store(f"sqlite:///{tmp_path / 'cut.db'}")
    prompts = Path(__file__).resolve().parent.parent / "prompts"
    manager = DialogManager(
        store, model, PromptLibrary(prompts), options=GenerationOptions(max_tokens=50)
    )
    yandex.reply = "one two three four five six"
    yandex.inject(Fault("cut", after=2), path="/completion")
    events = [e async for e in manager.handle(Incoming("c", "count"))]
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    [final] = [e for e in events if isinstance(e, FinalText)]
    assert final.complete is False and final.text == deltas and deltas
    notice = events[-1]
    assert isinstance(notice, Notice) and notice.kind == "error" and "interrupted" in notice.text
    turns = await store.read("c")
    assert turns[1].text == deltas and turns[1].meta["status"] == "interrupted"
    await store.aclose()
    await client.aclose()

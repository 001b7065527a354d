"""Yandex batch mode (``--mode batch``): the gRPC client against the fake Dataset, Batch
Inference, batch completion and Operation services on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.batch.yandex import (
    MULTIPART_THRESHOLD,
    BatchClient,
    DatasetInvalidError,
    TaskState,
    Usage,
    request_key,
    request_line,
    response_text,
    response_usage,
)
from bot.errors import AuthenticationError, ConfigError, ModelError, RateLimitError
from bot.events import Message
from bot.models.base import GenerationOptions
from bot.models.yandex.client import YandexCredentials
from bot.settings import load_settings
from bot.urls import grpc_target
from tests.fakes.yandex_batch_server import FakeYandexBatch

MODEL = "gpt://b1gfolder/yandexgpt-lite/latest"


@pytest.fixture
async def fake() -> AsyncIterator[FakeYandexBatch]:
    async with FakeYandexBatch() as server:
        yield server


def client_for(
    fake: FakeYandexBatch, key: str = "test-key", part_size: int = MULTIPART_THRESHOLD
) -> BatchClient:
    credentials = YandexCredentials(folder_id="b1gfolder", api_key=SecretStr(key))
    return BatchClient(
        credentials,
        grpc_url=fake.grpc_url,
        operations_grpc_url=fake.grpc_url,
        timeout=10,
        poll_initial=0.01,
        poll_max=0.05,
        part_size=part_size,
    )


def lines(*texts: str) -> bytes:
    return "".join(
        request_line([Message("system", "Be brief."), Message("user", t)]) + "\n" for t in texts
    ).encode()


def test_grpc_urls() -> None:
    assert grpc_target("grpcs://llm.api.cloud.yandex.net:443", "X") == (
        "llm.api.cloud.yandex.net:443",
        True,
    )
    assert grpc_target("grpc://127.0.0.1:5000", "X") == ("127.0.0.1:5000", False)
    for bad in ("https://llm.api.cloud.yandex.net", "grpc://host", "grpcs://h:1/path", "h:1"):
        with pytest.raises(ConfigError) as info:
            grpc_target(bad, "YANDEX_GRPC_URL")
        assert "YANDEX_GRPC_URL" in str(info.value)
        assert "grpcs://HOST:PORT" in str(info.value)


def test_settings_check_grpc_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YANDEX_OPERATIONS_GRPC_URL", "http://operation.api.cloud.yandex.net")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "YANDEX_OPERATIONS_GRPC_URL" in str(info.value)
    monkeypatch.delenv("YANDEX_OPERATIONS_GRPC_URL")
    settings = load_settings()
    assert settings.yandex_grpc_url == "grpcs://llm.api.cloud.yandex.net:443"
    assert settings.yandex_operations_grpc_url == "grpcs://operation.api.cloud.yandex.net:443"


def test_request_and_response_forms() -> None:
    records = [{"role": "user", "text": "hi"}]
    assert request_key(records) == request_key(json.dumps(records))
    assert request_key({"request": records}) == request_key(records)
    assert response_text("plain") == "plain"
    assert response_text({"alternatives": [{"message": {"text": "alt"}}]}) == "alt"
    assert response_text('{"message": {"role": "assistant", "text": "js"}}') == "js"
    assert response_text({"result": {"alternatives": [{"message": {"text": "rest"}}]}}) == "rest"


def test_usage_of_result_records() -> None:
    nested = {
        "alternatives": [{"message": {"role": "assistant", "text": "hi"}}],
        "usage": {"inputTextTokens": 12, "completionTokens": 3, "totalTokens": 15},
    }
    as_json = json.dumps(
        nested | {"usage": {"inputTextTokens": "12", "completionTokens": "3", "totalTokens": "15"}}
    )
    for response in (nested, as_json, json.dumps({"result": nested}).encode()):
        assert response_usage({"request": [], "response": response}) == Usage(12, 3)
    # A usage column of the record itself (snake_case, as protobuf field names are).
    column = {"input_text_tokens": "7", "completion_tokens": "2", "total_tokens": "9"}
    assert response_usage({"response": "text", "usage": column}) == Usage(7, 2)
    for empty in ("plain reply", None, {"alternatives": []}, '{"usage": "n/a"}'):
        assert response_usage({"response": empty}) == Usage(None, None)
    assert response_usage({"response": {"usage": {"inputTextTokens": "many"}}}) == Usage()


async def test_dataset_task_and_result(fake: FakeYandexBatch) -> None:
    async with client_for(fake) as client:
        created: list[str] = []

        async def on_created(dataset_id: str) -> None:
            created.append(dataset_id)

        dataset_id = await client.upload_dataset("t", lines("one", "two", "FAIL me"), on_created)
        assert created == [dataset_id]
        assert fake.datasets[dataset_id].status == "READY"
        started = await client.start(
            MODEL, GenerationOptions(temperature=0.2, max_tokens=8), dataset_id
        )
        assert started.task_id in fake.tasks
        assert not started.done
        task = fake.tasks[started.task_id]
        assert task.options.max_tokens.value == 8
        assert task.options.temperature.value == pytest.approx(0.2)
        seen: list[TaskState] = []
        async with asyncio.timeout(10):
            final = await client.wait(started.operation_id, seen.append)
        assert final.done and final.status == "COMPLETED" and final.result_dataset_id
        progress = [(s.completed_batches, s.total_batches) for s in seen]
        assert progress[0] == (1, 3) and progress[-1] == (3, 3)
        assert [s.status for s in seen][:1] == ["IN_PROGRESS"]
        records = await client.download(final.result_dataset_id)
        replies = {request_key(r["request"]): response_text(r["response"]) for r in records}
        one = request_line([Message("system", "Be brief."), Message("user", "one")])
        assert replies[request_key(one)] == "echo: one"
        usage = {request_key(r["request"]): response_usage(r) for r in records}
        assert usage[request_key(one)] == Usage(*fake.usage["one"])
        assert all(u.input_tokens and u.output_tokens for u in usage.values())
        assert len(records) == 2  # the FAIL line has no result
        described = await client.describe(final.task_id)
        assert described.status == "COMPLETED"
        assert described.by_line == {3: fake.fail_reason}  # the FAIL line, 1-based
        assert described.errors == [f"line 3: {fake.fail_reason}"]
        await client.delete_dataset(dataset_id)
        assert fake.deleted == [dataset_id]


async def test_large_dataset_goes_up_in_parts(fake: FakeYandexBatch) -> None:
    # The storage's limits scaled down (5 GB single PUT, 5 MB parts), and the threshold with them.
    fake.max_single_put = fake.min_part_size = part = 4096
    big = lines(*(f"question number {i}, asked at some length" for i in range(300)))
    assert len(big) > 3 * part
    async with client_for(fake, part_size=part) as client:
        dataset_id = await client.upload_dataset("big", big)
        assert fake.datasets[dataset_id].data == big  # every byte, in order
        assert fake.datasets[dataset_id].status == "READY"
        assert fake.multipart_uploads == [len(big) // part]
        assert "Dataset.GetUploadDraftUrl" not in fake.calls
        small = lines("one", "two")
        small_id = await client.upload_dataset("small", small)
    assert fake.datasets[small_id].data == small
    assert fake.calls.count("Dataset.GetUploadDraftUrl") == 1  # one PUT up to the threshold
    assert fake.multipart_uploads == [len(big) // part]


async def test_validation_errors_name_lines(fake: FakeYandexBatch) -> None:
    async with client_for(fake) as client:
        with pytest.raises(DatasetInvalidError) as info:
            await client.upload_dataset("t", lines("ok", "INVALID", "ok", "INVALID too"))
    assert info.value.problems[0].rows == (2, 4)
    assert "line(s) 2, 4" in str(info.value)


async def test_bad_key_unsupported_model_quota(fake: FakeYandexBatch) -> None:
    async with client_for(fake, key="wrong") as client:
        with pytest.raises(AuthenticationError) as auth:
            await client.upload_dataset("t", lines("x"))
    assert "YANDEX_API_KEY" in str(auth.value)
    async with client_for(fake) as client:
        dataset_id = await client.upload_dataset("t", lines("x"))
        with pytest.raises(ModelError) as unsupported:
            await client.start("gpt://b1gfolder/yandexgpt-lite/rc", GenerationOptions(), dataset_id)
        assert "not supported in batch mode" in str(unsupported.value)
        fake.quota_exceeded = True
        with pytest.raises(RateLimitError):
            await client.start(MODEL, GenerationOptions(), dataset_id)


async def test_cancel(fake: FakeYandexBatch) -> None:
    async with client_for(fake) as client:
        dataset_id = await client.upload_dataset("t", lines("a", "b"))
        started = await client.start(MODEL, GenerationOptions(), dataset_id)
        await client.cancel(started.task_id)
        async with asyncio.timeout(10):
            final = await client.wait(started.operation_id)
        assert final.status == "CANCELED"
        assert (await client.describe(started.task_id)).status == "CANCELED"


def test_mode_option_sets_the_yandex_mode() -> None:
    from bot.batch.model import with_mode

    assert with_mode("yandex:yandexgpt/rc?mode=stream", "sync", "--mode") == (
        "yandex:yandexgpt/rc?mode=sync"
    )
    with pytest.raises(ConfigError) as info:
        with_mode("openai:gpt-4o-mini", "async", "--mode")
    assert "--mode needs a yandex: model" in str(info.value)

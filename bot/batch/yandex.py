"""Yandex batch mode over gRPC: a request dataset in, a batch task, a result dataset out.

The protocol (Yandex AI Studio, "Batch processing"):

1. ``DatasetService.Create`` (task type ``TextToTextGenerationRequest``, format ``jsonlines``),
   ``GetUploadDraftUrl`` and an HTTP PUT of the JSON lines to that presigned URL (above
   ``MULTIPART_THRESHOLD``: ``StartMultipartUploadDraft``, a PUT per part, and
   ``FinishMultipartUploadDraft`` with the parts' ETags), then ``Validate``: an Operation whose
   response says whether the dataset is valid, with errors by row number.
2. ``TextGenerationBatchService.Completion`` (model URI, options, source dataset): an Operation
   whose metadata carries the task id, its status and ``completed_batches/total_batches``, and
   whose response names the result dataset.
3. ``OperationService.Get`` to follow it (operations host), ``BatchInferenceService`` to describe
   or cancel the task, ``DatasetService.GetDownloadUrls`` for the result's Parquet parts,
   ``DatasetService.Delete`` for temporary datasets.

The generated stubs ship in the ``yandexcloud`` package (extra ``fmbot[batch]``). Only this
module imports them or gRPC, and only when batch mode is used: the bot never loads gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

from bot.batch import table
from bot.errors import ConfigError, ModelError, ModelUnavailableError, RateLimitError
from bot.events import Message
from bot.models.base import GenerationOptions
from bot.models.yandex.client import YandexCredentials, grpc_error
from bot.urls import grpc_target

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

MISSING_EXTRA = "batch mode needs the gRPC stubs of Yandex Cloud: pip install 'fmbot[batch]'"
REQUEST_TASK_TYPE = "TextToTextGenerationRequest"
UPLOAD_FORMAT = "jsonlines"
#: Task statuses (BatchInferenceTaskStatus) by number.
TASK_STATUSES = (
    "UNSPECIFIED",
    "CREATED",
    "PENDING",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
    "CANCELED",
)
FINISHED = ("COMPLETED", "FAILED", "CANCELED")
#: Request datasets larger than this go up in parts (``StartMultipartUploadDraft``, a PUT per
#: part, ``FinishMultipartUploadDraft``) instead of one PUT: the official SDK's default part
#: size. The service takes parts of 5 MB to 5 GB, and a single PUT only up to 5 GB.
MULTIPART_THRESHOLD = 100 * 1024**2
#: Parts uploaded at once (each one is a copy of its slice in memory while it is sent).
PARTS_IN_FLIGHT = 3


class _Stubs:
    """The generated modules, imported on first use (ConfigError when the extra is missing)."""

    def __init__(self) -> None:
        def load(name: str) -> ModuleType:
            try:
                return importlib.import_module(name)
            except ImportError:
                raise ConfigError("--mode", "batch", MISSING_EXTRA) from None

        self.grpc = load("grpc")
        self.grpc_aio = load("grpc.aio")
        base = "yandex.cloud.ai."
        self.ds = load(base + "dataset.v1.dataset_service_pb2")
        self.ds_grpc = load(base + "dataset.v1.dataset_service_pb2_grpc")
        self.bi = load(base + "batch_inference.v1.batch_inference_service_pb2")
        self.bi_grpc = load(base + "batch_inference.v1.batch_inference_service_pb2_grpc")
        self.tg = load(base + "foundation_models.v1.text_generation.text_generation_service_pb2")
        self.tg_grpc = load(
            base + "foundation_models.v1.text_generation.text_generation_service_pb2_grpc"
        )
        self.common = load(base + "foundation_models.v1.text_common_pb2")
        self.op_service = load("yandex.cloud.operation.operation_service_pb2")
        self.op_grpc = load("yandex.cloud.operation.operation_service_pb2_grpc")


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    """One kind of error the Dataset service found, with the (1-based) lines it found it on."""

    error: str
    description: str
    rows: tuple[int, ...]


class NotFoundError(ModelError):
    """A dataset, task or operation the service does not have (any more)."""


class DatasetInvalidError(ModelError):
    """The uploaded request dataset failed validation; ``problems`` name its lines."""

    def __init__(self, problems: tuple[ValidationProblem, ...]) -> None:
        parts = []
        for p in problems:
            lines = ", ".join(str(r) for r in p.rows[:10]) + (", ..." if len(p.rows) > 10 else "")
            parts.append(f"{p.description or p.error} (line(s) {lines})")
        super().__init__(
            "Yandex Cloud rejected the request dataset: " + "; ".join(parts or ["no reason given"])
        )
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TaskState:
    """Where a batch task stands, from its Operation."""

    operation_id: str
    task_id: str
    status: str
    completed_batches: int
    total_batches: int
    done: bool
    result_dataset_id: str = ""
    #: The operation's error, when it failed.
    error: str | None = None
    error_code: int | None = None


#: Line numbers beyond any dataset we send (bounds a batch error's range of lines).
MAX_LINE = 10_000_000


@dataclass(frozen=True, slots=True)
class TaskDescription:
    """A task as the Batch Inference service describes it."""

    status: str
    #: Its errors, one line each ("line 3: ...", "lines 1-100: ...").
    errors: list[str]
    #: The reason for each line (1-based, like validation's row numbers) the task could not
    #: process, from its line and batch errors.
    by_line: dict[int, str]


def request_line(messages: list[Message]) -> str:
    """One line of a request dataset: ``{"request": [{"role": ..., "text": ...}, ...]}``."""
    return json.dumps(
        {"request": [{"role": m.role, "text": m.text} for m in messages]}, ensure_ascii=False
    )


def request_key(request: object) -> str:
    """A canonical form of a request (records or their JSON text) for matching results to rows."""
    if isinstance(request, str | bytes):
        try:
            request = json.loads(request)
        except ValueError:
            return str(request)
    if isinstance(request, Mapping) and "request" in request:
        request = request["request"]
    if isinstance(request, list):
        request = [
            {"role": str(m.get("role")), "text": str(m.get("text"))}
            for m in request
            if isinstance(m, Mapping)
        ]
    return json.dumps(request, sort_keys=True, ensure_ascii=False)


def _decoded(value: object) -> object:
    """A result cell as records: JSON text is parsed, anything else is returned as it is."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def response_text(response: object) -> str | None:
    """The reply in a result record: plain text, or a completion result / alternative / message
    record (nested, or as JSON text)."""
    decoded = _decoded(response)
    if isinstance(decoded, str):
        return decoded
    if isinstance(decoded, list):
        return response_text(decoded[0]) if decoded else None
    if isinstance(decoded, Mapping):
        for key in ("result", "alternatives", "message", "text", "content"):
            if key in decoded:
                return response_text(decoded[key])
    return None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one result record, as the completion result's ``usage`` reports them."""

    input_tokens: int | None = None
    output_tokens: int | None = None


def _count(value: object) -> int | None:
    # int64 fields come as JSON strings ("12") in JSON text, as integers in Parquet structs.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _usage_of(value: object) -> Usage | None:
    decoded = _decoded(value)
    if not isinstance(decoded, Mapping):
        return None
    if "result" in decoded:  # the REST form wraps the completion result
        return _usage_of(decoded["result"])
    usage = _decoded(decoded.get("usage"))
    if not isinstance(usage, Mapping):
        return None

    def first(*names: str) -> int | None:
        for name in names:
            if usage.get(name) is not None:
                return _count(usage[name])
        return None

    return Usage(
        input_tokens=first("inputTextTokens", "input_text_tokens"),
        output_tokens=first("completionTokens", "completion_tokens"),
    )


def response_usage(record: Mapping[str, object]) -> Usage:
    """The tokens of a result record: the completion result's ``usage`` in its ``response``
    (nested or JSON text), or a ``usage`` column of the record itself; empty when neither is
    there (a plain-text response carries none)."""
    return _usage_of(record.get("response")) or _usage_of(record) or Usage()


class BatchClient:
    """The Dataset, Batch Inference, batch completion and Operation services, with our
    credentials, a timeout on every call, and errors mapped to fmbot's (one clear line each)."""

    def __init__(
        self,
        credentials: YandexCredentials,
        *,
        grpc_url: str = "grpcs://llm.api.cloud.yandex.net:443",
        operations_grpc_url: str = "grpcs://operation.api.cloud.yandex.net:443",
        timeout: float = 60.0,
        poll_initial: float = 1.0,
        poll_max: float = 30.0,
        part_size: int = MULTIPART_THRESHOLD,
    ) -> None:
        self.credentials = credentials
        self.part_size = part_size
        self.service = credentials.service()
        self._stubs = _Stubs()
        self._timeout = timeout
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self._llm = self._channel(grpc_url, "YANDEX_GRPC_URL")
        self._ops = self._channel(operations_grpc_url, "YANDEX_OPERATIONS_GRPC_URL")
        s = self._stubs
        self._datasets = s.ds_grpc.DatasetServiceStub(self._llm)
        self._tasks = s.bi_grpc.BatchInferenceServiceStub(self._llm)
        self._batch = s.tg_grpc.TextGenerationBatchServiceStub(self._llm)
        self._operations = s.op_grpc.OperationServiceStub(self._ops)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> BatchClient:
        return cls(
            YandexCredentials.from_settings(settings),
            grpc_url=settings.yandex_grpc_url,
            operations_grpc_url=settings.yandex_operations_grpc_url,
            **kwargs,
        )

    def _channel(self, url: str, setting: str) -> Any:
        target, tls = grpc_target(url, setting)
        aio = self._stubs.grpc_aio
        if tls:
            return aio.secure_channel(target, self._stubs.grpc.ssl_channel_credentials())
        return aio.insecure_channel(target)

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._llm.close()
        await self._ops.close()

    @property
    def folder_id(self) -> str:
        return self.credentials.folder_id

    async def _call(self, method: Any, request: Any, missing: str | None = None) -> Any:
        """Call a service method. ``missing`` names what the request refers to, for NOT_FOUND
        (the generic mapping speaks of an unknown model, which is right only for Completion)."""
        metadata = (
            ("authorization", self.credentials.authorization()),
            ("x-folder-id", self.credentials.folder_id),
            ("x-data-logging-enabled", "false"),
        )
        try:
            return await method(request, metadata=metadata, timeout=self._timeout)
        except self._stubs.grpc_aio.AioRpcError as exc:
            code = int(exc.code().value[0])
            if code == 4:  # DEADLINE_EXCEEDED: ours (the timeout) or the server's
                raise ModelUnavailableError(
                    f"{self.service.title} did not answer within {self._timeout:.0f} s."
                ) from None
            if code == 5 and missing is not None:
                raise NotFoundError(
                    f"{self.service.title} has no {missing} (deleted, or expired); if the "
                    "progress file names it, delete that file and run the command again."
                ) from None
            raise grpc_error(code, str(exc.details() or ""), self.service) from None

    # --- datasets ---

    async def upload_dataset(
        self,
        name: str,
        data: bytes,
        on_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> str:
        """Create a request dataset from JSON lines, upload and validate it; its id.

        ``on_created`` hears the id as soon as it exists (to record it before anything else can
        fail). DatasetInvalidError names the lines validation rejected.
        """
        ds = self._stubs.ds
        created = await self._call(
            self._datasets.Create,
            ds.CreateDatasetRequest(
                folder_id=self.folder_id,
                name=name,
                task_type=REQUEST_TASK_TYPE,
                upload_format=UPLOAD_FORMAT,
            ),
        )
        dataset_id = str(created.dataset_id)
        if on_created is not None:
            await on_created(dataset_id)
        await self._upload(dataset_id, data)
        operation = await self._call(
            self._datasets.Validate, ds.ValidateDatasetRequest(dataset_id=dataset_id)
        )
        operation = await self._wait(operation)
        if operation.HasField("error"):
            raise grpc_error(operation.error.code, operation.error.message, self.service)
        result = ds.ValidateDatasetResponse()
        operation.response.Unpack(result)
        if not result.is_valid:
            raise DatasetInvalidError(
                tuple(
                    ValidationProblem(e.error, e.error_description, tuple(e.row_numbers))
                    for e in result.errors
                )
            )
        return dataset_id

    async def _upload(self, dataset_id: str, data: bytes) -> None:
        """Put the dataset's bytes in storage: one PUT, or in parts above ``part_size``."""
        ds = self._stubs.ds
        if len(data) <= self.part_size:
            draft = await self._call(
                self._datasets.GetUploadDraftUrl,
                ds.GetUploadDraftUrlRequest(dataset_id=dataset_id, size_bytes=len(data)),
            )
            await self._transfer("PUT", str(draft.upload_url), data)
            return
        # Whole parts of at least part_size each (as the SDK splits), so none is below the
        # storage's minimum; the service may answer another number of URLs, which rules.
        started = await self._call(
            self._datasets.StartMultipartUploadDraft,
            ds.StartMultipartUploadDraftRequest(
                dataset_id=dataset_id, size_bytes=len(data), parts=len(data) // self.part_size
            ),
        )
        urls = [str(url) for url in started.multipart_upload_urls]
        if not urls:
            raise ModelError(
                f"{self.service.title} gave no upload URLs for the dataset's parts; try again, "
                "and report it if it persists."
            )
        size = -(-len(data) // len(urls))  # ceiling: the parts cover every byte
        limit = asyncio.Semaphore(PARTS_IN_FLIGHT)

        async def put(number: int, url: str) -> str:
            async with limit:
                offset = (number - 1) * size
                response = await self._send("PUT", url, data[offset : offset + size])
            etag = response.headers.get("etag")
            if not etag:
                raise ModelUnavailableError(
                    f"Yandex Cloud storage did not confirm part {number} of the dataset upload "
                    "(no ETag); run the same command again."
                )
            return str(etag)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(put(n, url)) for n, url in enumerate(urls, 1)]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # one clear error, not a group
        await self._call(
            self._datasets.FinishMultipartUploadDraft,
            ds.FinishMultipartUploadDraftRequest(
                dataset_id=dataset_id,
                uploaded_parts=[
                    ds.UploadedPartInfo(part_num=n, etag=task.result())
                    for n, task in enumerate(tasks, 1)
                ],
            ),
        )

    async def download(self, dataset_id: str) -> list[dict[str, object]]:
        """The records of a (result) dataset: its Parquet parts, downloaded and read."""
        answer = await self._call(
            self._datasets.GetDownloadUrls,
            self._stubs.ds.GetDownloadUrlsRequest(dataset_id=dataset_id),
            f"result dataset {dataset_id}",
        )
        records: list[dict[str, object]] = []
        for part in sorted(answer.download_urls, key=lambda p: str(p.key)):
            data = await self._transfer("GET", str(part.url))
            try:
                records.extend(await asyncio.to_thread(table.parquet_records, data))
            except Exception as exc:  # pyarrow raises many types for a damaged file
                raise ModelError(
                    f"{self.service.title} sent a result part ({part.key}) that is not "
                    f"readable Parquet ({exc})."
                ) from None
        return records

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset; one that is already gone counts as deleted."""
        with contextlib.suppress(NotFoundError):
            await self._call(
                self._datasets.Delete,
                self._stubs.ds.DeleteDatasetRequest(dataset_id=dataset_id),
                f"dataset {dataset_id}",
            )

    async def _transfer(self, method: str, url: str, data: bytes | None = None) -> bytes:
        """PUT or GET a presigned storage URL (no credentials: the URL is the permission)."""
        return (await self._send(method, url, data)).content

    async def _send(self, method: str, url: str, data: bytes | None = None) -> httpx.Response:
        try:
            response = await self._http.request(method, url, content=data)
        except httpx.HTTPError as exc:
            raise ModelUnavailableError(
                f"Could not reach Yandex Cloud storage for the dataset ({type(exc).__name__})."
            ) from None
        if response.status_code >= 300:
            raise ModelUnavailableError(
                f"Yandex Cloud storage answered HTTP {response.status_code} to the dataset "
                f"{'upload' if method == 'PUT' else 'download'}."
            )
        return response

    # --- tasks ---

    async def start(self, model_uri: str, options: GenerationOptions, dataset_id: str) -> TaskState:
        """Start a batch completion task over a validated dataset."""
        s = self._stubs
        completion = s.common.CompletionOptions()
        if options.temperature is not None:
            completion.temperature.value = options.temperature
        if options.max_tokens is not None:
            completion.max_tokens.value = options.max_tokens
        request = s.tg.BatchCompletionRequest(
            model_uri=model_uri, completion_options=completion, source_dataset_id=dataset_id
        )
        try:
            operation = await self._call(self._batch.Completion, request)
        except RateLimitError:
            raise RateLimitError(
                f"{self.service.title} refused to start the batch task: a quota or rate limit "
                "is exhausted (RESOURCE_EXHAUSTED). Check the folder's quotas for batch "
                "processing, or try again later; nothing was submitted."
            ) from None
        except ModelError as exc:
            if type(exc) is not ModelError:  # credentials, outage: already clear
                raise
            raise ModelError(
                f"{exc} Only some models support batch mode (the AI Studio docs, 'Batch "
                f"processing', list them); the model was {model_uri}."
            ) from None
        return self._state(operation)

    async def state(self, operation_id: str) -> TaskState:
        operation = await self._call(
            self._operations.Get,
            self._stubs.op_service.GetOperationRequest(operation_id=operation_id),
            f"operation {operation_id}",
        )
        return self._state(operation)

    def _state(self, operation: Any) -> TaskState:
        tg = self._stubs.tg
        meta = tg.BatchCompletionMetadata()
        if operation.HasField("metadata"):
            operation.metadata.Unpack(meta)
        result = tg.BatchCompletionResponse()
        if operation.HasField("response"):
            operation.response.Unpack(result)
        status_number = int(result.task_status or meta.task_status)
        status = TASK_STATUSES[status_number] if status_number < len(TASK_STATUSES) else "?"
        error = code = None
        if operation.HasField("error"):
            error, code = str(operation.error.message), int(operation.error.code)
        return TaskState(
            operation_id=str(operation.id),
            task_id=str(result.task_id or meta.task_id),
            status=status,
            completed_batches=int(meta.completed_batches),
            total_batches=int(meta.total_batches),
            done=bool(operation.done),
            result_dataset_id=str(result.result_dataset_id),
            error=error,
            error_code=code,
        )

    async def wait(
        self, operation_id: str, on_state: Callable[[TaskState], None] | None = None
    ) -> TaskState:
        """Poll the task's operation until done, with backoff; network trouble and 429s only
        slow the polling down (a task runs for hours; one failed poll must not lose it)."""
        delay = self.poll_initial
        while True:
            try:
                state = await self.state(operation_id)
            except (ModelUnavailableError, RateLimitError) as exc:
                log.warning("polling batch operation %s: %s", operation_id, exc)
            else:
                if on_state is not None:
                    on_state(state)
                if state.done:
                    return state
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max)

    async def _wait(self, operation: Any) -> Any:
        """Poll a (validation) operation until done; the final Operation."""
        delay = self.poll_initial
        while not operation.done:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max)
            operation = await self._call(
                self._operations.Get,
                self._stubs.op_service.GetOperationRequest(operation_id=operation.id),
            )
        return operation

    async def cancel(self, task_id: str) -> None:
        await self._call(
            self._tasks.Cancel,
            self._stubs.bi.CancelBatchInferenceRequest(task_id=task_id),
            f"batch task {task_id}",
        )

    async def describe(self, task_id: str) -> TaskDescription:
        """A task's status and errors, from the Batch Inference service."""
        answer = await self._call(
            self._tasks.Describe,
            self._stubs.bi.DescribeBatchInferenceRequest(task_id=task_id),
            f"batch task {task_id}",
        )
        task = answer.task
        by_line: dict[int, str] = {}
        errors = []
        for e in task.errors.line_errors:
            errors.append(f"line {e.line_number}: {e.message}")
            by_line.setdefault(int(e.line_number), str(e.message))
        for b in task.errors.batch_errors:
            errors.append(f"lines {b.first_line}-{b.last_line}: {b.message}")
            # A batch's error stands for each of its lines (a line's own error is more precise).
            for line in range(int(b.first_line), min(int(b.last_line), MAX_LINE) + 1):
                by_line.setdefault(line, str(b.message))
        return TaskDescription(task.Status.Name(task.status), errors, by_line)

"""A fake of Yandex batch mode: the Dataset, Batch Inference, batch completion and Operation gRPC
services (servicers generated from the ``yandexcloud`` stubs) on 127.0.0.1, plus a tiny HTTP
server for the presigned upload/download URLs.

It validates uploaded JSON lines like the service does (a ``request`` list of role/text
records per line; rejected lines are reported by 1-based line number), runs an echo "model"
over them (reply ``echo: <last user text>``), reports progress over several polls of the
operation, and writes the result dataset as Parquet (``request`` and ``response`` columns, in
reverse order so clients must match by request). Lines whose user text contains ``fail_marker``
get no result, like lines the service could not process.

A ``response`` is a completion result, as the synchronous API answers: ``alternatives`` (the
message and its status) and ``usage`` (``inputTextTokens``, ``completionTokens``,
``totalTokens``), as a nested record (int64 counts) or, with ``response_as_json``, as JSON text
(counts as strings, as protobuf's JSON mapping writes int64). ``plain_response`` sends the bare
reply text instead, the form the dataset docs show, which carries no usage.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from yandex.cloud.ai.batch_inference.v1 import (
    batch_inference_service_pb2 as bi,
)
from yandex.cloud.ai.batch_inference.v1 import (
    batch_inference_service_pb2_grpc as bi_grpc,
)
from yandex.cloud.ai.batch_inference.v1 import batch_inference_task_pb2 as bi_task
from yandex.cloud.ai.dataset.v1 import dataset_pb2, dataset_service_pb2_grpc
from yandex.cloud.ai.dataset.v1 import dataset_service_pb2 as ds
from yandex.cloud.ai.foundation_models.v1.text_generation import (
    text_generation_service_pb2 as tg,
)
from yandex.cloud.ai.foundation_models.v1.text_generation import (
    text_generation_service_pb2_grpc as tg_grpc,
)
from yandex.cloud.operation import operation_pb2, operation_service_pb2_grpc

STATUS = {"CREATED": 1, "PENDING": 2, "IN_PROGRESS": 3, "COMPLETED": 4, "FAILED": 5, "CANCELED": 6}


@dataclass
class Dataset:
    id: str
    task_type: str
    upload_format: str
    data: bytes | None = None
    parquet: bytes | None = None
    status: str = "DRAFT"
    #: The size the upload URL(s) were asked for (a presigned URL signs the content length).
    size: int = 0
    #: Parts of a multipart upload, by number.
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Task:
    id: str
    operation_id: str
    model_uri: str
    source: str
    lines: list[dict[str, Any]]
    status: str = "PENDING"
    polls: int = 0
    result_dataset_id: str = ""
    options: Any = None
    #: (1-based line, reason) of the lines the "model" could not process.
    line_errors: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class FakeYandexBatch:
    api_key: str = "test-key"
    #: Polls of a batch operation before it is done (progress advances one batch per poll).
    total_batches: int = 3
    #: Lines whose last user text contains this get no result, and a line error saying why.
    fail_marker: str = "FAIL"
    fail_reason: str = "generation failed: the model returned an empty response"
    #: Whether the task describes those lines (as line errors) or just leaves them out.
    report_line_errors: bool = True
    #: Lines whose text contains this are rejected by validation.
    invalid_marker: str = "INVALID"
    #: Result ``request`` column as JSON text instead of nested records.
    request_as_json: bool = False
    #: Result ``response`` column as JSON text instead of a nested completion result.
    response_as_json: bool = False
    #: Result ``response`` column as the bare reply text (no usage).
    plain_response: bool = False
    #: (input, completion) tokens reported, by the line's last user text.
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Models (URI substrings) that do not support batch mode.
    unsupported: tuple[str, ...] = ("yandexgpt-lite/rc",)
    #: Fail the next Completion call with RESOURCE_EXHAUSTED.
    quota_exceeded: bool = False
    #: Storage limits: GetUploadDraftUrl only up to this size; parts (but the last) at least
    #: this big. The service's are 5 GB and 5 MB; tests scale them down.
    max_single_put: int = 5 * 1024**3
    min_part_size: int = 5 * 1024**2
    #: Parts of each finished multipart upload.
    multipart_uploads: list[int] = field(default_factory=list)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    validations: set[str] = field(default_factory=set)
    #: Tasks end FAILED (operation error, line errors) instead of producing a result.
    fail_tasks: bool = False
    calls: list[str] = field(default_factory=list)
    #: Set when a batch task's operation is polled.
    polled: asyncio.Event = field(default_factory=asyncio.Event)
    grpc_url: str = ""
    _server: Any = None
    _runner: web.AppRunner | None = None
    _http_url: str = ""

    # --- lifecycle ---

    async def __aenter__(self) -> FakeYandexBatch:
        self._server = grpc.aio.server()
        dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(_Datasets(self), self._server)
        bi_grpc.add_BatchInferenceServiceServicer_to_server(_Tasks(self), self._server)
        tg_grpc.add_TextGenerationBatchServiceServicer_to_server(_Batch(self), self._server)
        operation_service_pb2_grpc.add_OperationServiceServicer_to_server(
            _Operations(self), self._server
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.grpc_url = f"grpc://127.0.0.1:{port}"
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/upload/{id}", self._upload)
        app.router.add_put("/upload/{id}/part/{number}", self._upload_part)
        app.router.add_get("/download/{id}", self._download)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self._http_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.stop(grace=0.2)

    def env(self) -> dict[str, str]:
        """Settings that point fmbot at this fake."""
        return {
            "YANDEX_API_KEY": self.api_key,
            "YANDEX_FOLDER_ID": "b1gfolder",
            "YANDEX_GRPC_URL": self.grpc_url,
            "YANDEX_OPERATIONS_GRPC_URL": self.grpc_url,
        }

    # --- storage ---

    async def _upload(self, request: web.Request) -> web.Response:
        dataset = self.datasets.get(request.match_info["id"])
        if dataset is None:
            return web.Response(status=404)
        data = await request.read()
        if len(data) != dataset.size:  # the URL was signed for size_bytes
            return web.Response(status=403, text="SignatureDoesNotMatch")
        dataset.data = data
        return web.Response(status=200)

    async def _upload_part(self, request: web.Request) -> web.Response:
        dataset = self.datasets.get(request.match_info["id"])
        if dataset is None:
            return web.Response(status=404)
        data = await request.read()
        dataset.parts[int(request.match_info["number"])] = data
        return web.Response(status=200, headers={"ETag": etag(data)})

    async def _download(self, request: web.Request) -> web.Response:
        dataset = self.datasets.get(request.match_info["id"])
        if dataset is None or dataset.parquet is None:
            return web.Response(status=404)
        return web.Response(body=dataset.parquet, content_type="application/octet-stream")

    # --- helpers ---

    def check(self, context: Any, name: str) -> None:
        self.calls.append(name)
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Api-Key {self.api_key}":
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "The token is invalid")

    def new_operation(self, description: str) -> Any:
        op = operation_pb2.Operation(id=f"op{uuid.uuid4().hex[:12]}", description=description)
        self.operations[op.id] = op
        return op

    def validate(self, dataset: Dataset) -> ds.ValidateDatasetResponse:
        problems: dict[str, list[int]] = {}
        text = (dataset.data or b"").decode("utf-8", "replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                request = record["request"]
                assert isinstance(request, list) and request
                for m in request:
                    assert m["role"] in ("system", "user", "assistant")
                    assert isinstance(m["text"], str) and m["text"]
                    assert self.invalid_marker not in m["text"]
            except (ValueError, KeyError, TypeError, AssertionError):
                problems.setdefault("invalid_row", []).append(lineno)
        errors = [
            dataset_pb2.ValidationError(
                error=name, error_description="the line is not a valid request", row_numbers=rows
            )
            for name, rows in problems.items()
        ]
        dataset.status = "INVALID" if errors else "READY"
        return ds.ValidateDatasetResponse(dataset_id=dataset.id, is_valid=not errors, errors=errors)

    def advance(self, task: Task) -> None:
        """One poll of a running task: one more batch done; the result when all are."""
        if task.status in ("COMPLETED", "FAILED", "CANCELED"):
            return
        task.polls += 1
        task.status = "IN_PROGRESS"
        if task.polls >= self.total_batches:
            if self.fail_tasks:
                task.status = "FAILED"
            else:
                self.finish(task)

    def completion(self, request: list[dict[str, str]], reply: str) -> dict[str, Any]:
        """A completion result for one line, with usage counted like a tokenizer would roughly
        (a few tokens per message for its role, one per word)."""
        prompt = sum(3 + len(m["text"].split()) for m in request)
        completion = 1 + len(reply.split())
        users = [m["text"] for m in request if m["role"] == "user"]
        self.usage[users[-1] if users else ""] = (prompt, completion)
        return {
            "alternatives": [
                {
                    "message": {"role": "assistant", "text": reply},
                    "status": "ALTERNATIVE_STATUS_FINAL",
                }
            ],
            "usage": {
                "inputTextTokens": prompt,
                "completionTokens": completion,
                "totalTokens": prompt + completion,
            },
            "modelVersion": "23.10.2024",
        }

    def finish(self, task: Task) -> None:
        requests, responses = [], []
        for number, record in reversed(list(enumerate(task.lines, 1))):
            request = record["request"]
            users = [m["text"] for m in request if m["role"] == "user"]
            last = users[-1] if users else ""
            if self.fail_marker in last:
                if self.report_line_errors:
                    task.line_errors.append((number, self.fail_reason))
                continue
            requests.append(
                json.dumps(request, ensure_ascii=False) if self.request_as_json else request
            )
            result = self.completion(request, f"echo: {last}")
            if self.plain_response:
                responses.append(result["alternatives"][0]["message"]["text"])
            elif self.response_as_json:
                usage = {k: str(v) for k, v in result["usage"].items()}
                responses.append(json.dumps(result | {"usage": usage}, ensure_ascii=False))
            else:
                responses.append(result)
        request_type = (
            pa.string()
            if self.request_as_json
            else pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))
        )
        message = pa.struct([("role", pa.string()), ("text", pa.string())])
        alternative = pa.struct([("message", message), ("status", pa.string())])
        counts = ("inputTextTokens", "completionTokens", "totalTokens")
        response_type = (
            pa.string()
            if self.plain_response or self.response_as_json
            else pa.struct(
                [
                    ("alternatives", pa.list_(alternative)),
                    ("usage", pa.struct([(n, pa.int64()) for n in counts])),
                    ("modelVersion", pa.string()),
                ]
            )
        )
        result = pa.table(
            {
                "request": pa.array(requests, type=request_type),
                "response": pa.array(responses, type=response_type),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(result, buffer)
        out = Dataset(f"ds{uuid.uuid4().hex[:12]}", "TextToTextGeneration", "parquet")
        out.parquet, out.status = buffer.getvalue(), "READY"
        self.datasets[out.id] = out
        task.result_dataset_id = out.id
        task.status = "COMPLETED"

    def operation_of(self, task: Task) -> Any:
        op = self.operations[task.operation_id]
        done = task.status in ("COMPLETED", "FAILED", "CANCELED")
        completed = self.total_batches if done else min(task.polls, self.total_batches)
        op.done = done
        op.metadata.Pack(
            tg.BatchCompletionMetadata(
                task_id=task.id,
                task_status=STATUS[task.status],
                completed_batches=completed,
                total_batches=self.total_batches,
            )
        )
        if task.status == "FAILED":
            op.error.code, op.error.message = 13, "batch task failed: internal error"
        elif done:
            op.response.Pack(
                tg.BatchCompletionResponse(
                    task_id=task.id,
                    task_status=STATUS[task.status],
                    result_dataset_id=task.result_dataset_id,
                )
            )
        return op


def etag(data: bytes) -> str:
    """An S3-style ETag: the part's MD5, quoted."""
    return f'"{hashlib.md5(data).hexdigest()}"'


class _Abort(Exception):
    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _rpc(name: str) -> Any:
    """Wrap a servicer method: check credentials, turn _Abort into a gRPC status."""

    def wrap(method: Any) -> Any:
        async def handler(self: Any, request: Any, context: Any) -> Any:
            try:
                self.fake.check(context, name)
                return method(self, request, context)
            except _Abort as exc:
                await context.abort(exc.code, exc.message)

        return handler

    return wrap


class _Datasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self, fake: FakeYandexBatch) -> None:
        self.fake = fake

    def _get(self, dataset_id: str) -> Dataset:
        dataset = self.fake.datasets.get(dataset_id)
        if dataset is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"dataset {dataset_id} not found")
        return dataset

    @_rpc("Dataset.Create")
    def Create(self, request: Any, context: Any) -> Any:
        if (
            request.task_type != "TextToTextGenerationRequest"
            or request.upload_format != "jsonlines"
        ):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported task type or format")
        dataset = Dataset(f"ds{uuid.uuid4().hex[:12]}", request.task_type, request.upload_format)
        self.fake.datasets[dataset.id] = dataset
        return ds.CreateDatasetResponse(dataset_id=dataset.id)

    @_rpc("Dataset.GetUploadDraftUrl")
    def GetUploadDraftUrl(self, request: Any, context: Any) -> Any:
        dataset = self._get(request.dataset_id)
        if request.size_bytes > self.fake.max_single_put:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the dataset is too big for a single upload: use a multipart upload",
            )
        dataset.size = request.size_bytes
        url = f"{self.fake._http_url}/upload/{dataset.id}"
        return ds.GetUploadDraftUrlResponse(dataset_id=dataset.id, upload_url=url)

    @_rpc("Dataset.StartMultipartUploadDraft")
    def StartMultipartUploadDraft(self, request: Any, context: Any) -> Any:
        dataset = self._get(request.dataset_id)
        parts = request.parts or max(1, request.size_bytes // (100 * 1024**2))
        dataset.size, dataset.parts = request.size_bytes, {}
        base = f"{self.fake._http_url}/upload/{dataset.id}/part"
        urls = [f"{base}/{n}" for n in range(1, parts + 1)]
        return ds.StartMultipartUploadDraftResponse(
            dataset_id=dataset.id, multipart_upload_urls=urls
        )

    @_rpc("Dataset.FinishMultipartUploadDraft")
    def FinishMultipartUploadDraft(self, request: Any, context: Any) -> Any:
        """Assemble the parts as S3's CompleteMultipartUpload does: every part named once, in
        order, with the ETag its upload answered; all but the last at least min_part_size."""
        dataset = self._get(request.dataset_id)
        named = [(p.part_num, p.etag) for p in request.uploaded_parts]
        if [n for n, _ in named] != list(range(1, len(dataset.parts) + 1)):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "InvalidPartOrder")
        if any(etag(dataset.parts[n]) != tag for n, tag in named):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "InvalidPart: ETag mismatch")
        sizes = [len(dataset.parts[n]) for n, _ in named]
        if any(size < self.fake.min_part_size for size in sizes[:-1]):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "EntityTooSmall")
        data = b"".join(dataset.parts[n] for n, _ in named)
        if len(data) != dataset.size:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "uploaded size differs from size_bytes")
        dataset.data = data
        self.fake.multipart_uploads.append(len(named))
        return ds.FinishMultipartUploadDraftResponse(dataset_id=dataset.id)

    @_rpc("Dataset.Validate")
    def Validate(self, request: Any, context: Any) -> Any:
        dataset = self._get(request.dataset_id)
        # Done on the first poll, as a real (asynchronous) validation is.
        op = self.fake.new_operation("Validate dataset")
        op.response.Pack(self.fake.validate(dataset))
        self.fake.validations.add(op.id)
        return operation_pb2.Operation(id=op.id, description=op.description, done=False)

    @_rpc("Dataset.Describe")
    def Describe(self, request: Any, context: Any) -> Any:
        dataset = self._get(request.dataset_id)
        status = dataset_pb2.DatasetInfo.Status.Value(dataset.status)
        info = dataset_pb2.DatasetInfo(dataset_id=dataset.id, status=status)
        return ds.DescribeDatasetResponse(dataset=info)

    @_rpc("Dataset.GetDownloadUrls")
    def GetDownloadUrls(self, request: Any, context: Any) -> Any:
        dataset = self._get(request.dataset_id)
        urls = [
            dataset_pb2.DatasetFileDownloadUrl(
                key="part-0.parquet", url=f"{self.fake._http_url}/download/{dataset.id}"
            )
        ]
        return ds.GetDownloadUrlsResponse(dataset_id=dataset.id, download_urls=urls)

    @_rpc("Dataset.Delete")
    def Delete(self, request: Any, context: Any) -> Any:
        self._get(request.dataset_id)
        del self.fake.datasets[request.dataset_id]
        self.fake.deleted.append(request.dataset_id)
        return ds.DeleteDatasetResponse()


class _Batch(tg_grpc.TextGenerationBatchServiceServicer):
    def __init__(self, fake: FakeYandexBatch) -> None:
        self.fake = fake

    @_rpc("TextGenerationBatch.Completion")
    def Completion(self, request: Any, context: Any) -> Any:
        fake = self.fake
        if any(m in request.model_uri for m in fake.unsupported):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {request.model_uri} is not supported in batch mode",
            )
        if fake.quota_exceeded:
            fake.quota_exceeded = False
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded: batch tasks")
        source = fake.datasets.get(request.source_dataset_id)
        if source is None or source.status != "READY":
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "the source dataset is not ready")
        lines = [json.loads(line) for line in (source.data or b"").decode().splitlines() if line]
        op = fake.new_operation("Batch completion")
        task = Task(
            f"bt{uuid.uuid4().hex[:12]}",
            op.id,
            request.model_uri,
            source.id,
            lines,
            options=request.completion_options,
        )
        fake.tasks[task.id] = task
        return fake.operation_of(task)


class _Operations(operation_service_pb2_grpc.OperationServiceServicer):
    def __init__(self, fake: FakeYandexBatch) -> None:
        self.fake = fake

    @_rpc("Operation.Get")
    def Get(self, request: Any, context: Any) -> Any:
        op = self.fake.operations.get(request.operation_id)
        if op is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"operation {request.operation_id} not found")
        if op.id in self.fake.validations:
            op.done = True
            return op
        for task in self.fake.tasks.values():
            if task.operation_id == op.id:
                self.fake.polled.set()
                self.fake.advance(task)
                return self.fake.operation_of(task)
        return op


class _Tasks(bi_grpc.BatchInferenceServiceServicer):
    def __init__(self, fake: FakeYandexBatch) -> None:
        self.fake = fake

    def _get(self, task_id: str) -> Task:
        task = self.fake.tasks.get(task_id)
        if task is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        return task

    @_rpc("BatchInference.Describe")
    def Describe(self, request: Any, context: Any) -> Any:
        task = self._get(request.task_id)
        info = bi_task.BatchInferenceTask(
            task_id=task.id,
            operation_id=task.operation_id,
            model_uri=task.model_uri,
            source_dataset_id=task.source,
            status=STATUS[task.status],
            result_dataset_id=task.result_dataset_id,
        )
        if task.status == "FAILED":
            info.errors.line_errors.add(line_number=1, message="model timed out")
        for number, reason in sorted(task.line_errors):
            info.errors.line_errors.add(line_number=number, message=reason)
        return bi.DescribeBatchInferenceResponse(task=info)

    @_rpc("BatchInference.Cancel")
    def Cancel(self, request: Any, context: Any) -> Any:
        task = self._get(request.task_id)
        if task.status not in ("COMPLETED", "FAILED"):
            task.status = "CANCELED"
        return bi.CancelBatchInferenceResponse(task_id=task.id)

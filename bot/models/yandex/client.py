"""The connection to Yandex Cloud Foundation Models: credentials, headers, model URIs, operations.

One :class:`YandexClient` is shared by every Yandex backend of a process. It knows the two hosts
(``YANDEX_FM_URL`` for models, ``YANDEX_OPERATIONS_URL`` for long-running operations), sends the
headers the service documents, and polls operations with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from bot.errors import ModelError, ModelUnavailableError
from bot.model_spec import check_yandex_credentials
from bot.models.http import (
    REQUEST_ID_HEADER,
    RequestKind,
    RetryPolicy,
    Service,
    Timeouts,
    create_client,
    error_for_status,
    json_request,
    new_request_id,
    send,
    send_json,
)

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)


# gRPC status code -> the HTTP status the REST gateway uses for it (see the API summary).
_GRPC_TO_HTTP = {1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503, 16: 401}


@dataclass(frozen=True, slots=True)
class YandexCredentials:
    """An API key (preferred: it does not expire) or an IAM token, and the folder."""

    folder_id: str
    api_key: SecretStr | None = field(default=None, repr=False)
    iam_token: SecretStr | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_yandex_credentials(
            self.folder_id,
            has_key=bool(self.api_key and self.api_key.get_secret_value()),
            has_token=bool(self.iam_token and self.iam_token.get_secret_value()),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> YandexCredentials:
        return cls(
            folder_id=(settings.yandex_folder_id or "").strip(),
            api_key=settings.yandex_api_key,
            iam_token=settings.yandex_iam_token,
        )

    @property
    def uses_api_key(self) -> bool:
        return bool(self.api_key and self.api_key.get_secret_value())

    def authorization(self) -> str:
        if self.uses_api_key:
            assert self.api_key is not None
            return f"Api-Key {self.api_key.get_secret_value()}"
        assert self.iam_token is not None
        return f"Bearer {self.iam_token.get_secret_value()}"

    def service(self) -> Service:
        if self.uses_api_key:
            auth = (
                "Yandex Cloud rejected the API key: check YANDEX_API_KEY (it must be an API key "
                f"of a service account in folder {self.folder_id})."
            )
        else:
            auth = (
                "Yandex Cloud rejected the IAM token: it may have expired (they last about 12 "
                "hours). Get a new one with `yc iam create-token` and set YANDEX_IAM_TOKEN, or "
                "use an API key in YANDEX_API_KEY."
            )
        permission = (
            f"Yandex Cloud denied access to folder {self.folder_id} or to the model (403): give "
            "the service account the ai.languageModels.user role (ai.imageGeneration.user for "
            "images) in that folder, check YANDEX_FOLDER_ID, and check the folder's quotas."
        )
        return Service(
            name="Yandex Cloud",
            auth_message=auth,
            permission_message=permission,
            model_message=(
                "Yandex Cloud does not know this model (404): check the model name in "
                "FMBOT_TEXT_MODEL / FMBOT_IMAGE_MODEL / FMBOT_VISION_MODEL, e.g. "
                "yandex:yandexgpt-lite/latest."
            ),
            secrets=tuple(s for s in (self.api_key, self.iam_token) if s is not None),
        )


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """Operation polling: start quick (images take seconds), back off to spare the quota."""

    initial: float = 0.5
    factor: float = 1.5
    max_interval: float = 5.0


class YandexClient:
    """HTTP access to Foundation Models with our headers, retries and operation polling."""

    def __init__(
        self,
        credentials: YandexCredentials,
        *,
        fm_url: str = "https://llm.api.cloud.yandex.net",
        operations_url: str = "https://operation.api.cloud.yandex.net",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        data_logging: bool = False,
    ) -> None:
        self.credentials = credentials
        self.service = credentials.service()
        self._fm_url = fm_url.rstrip("/")
        self._operations_url = operations_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self._data_logging = data_logging
        self._http = create_client(timeouts=timeouts)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> YandexClient:
        return cls(
            YandexCredentials.from_settings(settings),
            fm_url=settings.yandex_fm_url,
            operations_url=settings.yandex_operations_url,
            **kwargs,
        )

    @property
    def folder_id(self) -> str:
        return self.credentials.folder_id

    def headers(self) -> dict[str, str]:
        """Fresh headers per request: a new request id lets support find exactly this call."""
        return {
            "Authorization": self.credentials.authorization(),
            "x-folder-id": self.credentials.folder_id,
            REQUEST_ID_HEADER: new_request_id(),
            # Ask the service not to keep our users' messages.
            "x-data-logging-enabled": "true" if self._data_logging else "false",
        }

    def _request(self, method: str, url: str, body: Any | None = None) -> httpx.Request:
        return json_request(self._http, method, url, headers=self.headers(), body=body)

    async def post(self, path: str, body: Any, *, kind: RequestKind = "read") -> Any:
        """POST to the models host and return the decoded JSON. ``kind`` is ``generate`` for a
        billed generation and ``submit`` for one that creates an operation: what may be retried
        (bot.models.http.RequestKind)."""
        request = self._request("POST", f"{self._fm_url}{path}", body)
        return await send_json(self._http, request, self.service, policy=self._retry, kind=kind)

    async def open_stream(self, path: str, body: Any) -> httpx.Response:
        """POST a generation and return the response unread; the caller must ``aclose()`` it."""
        request = self._request("POST", f"{self._fm_url}{path}", body)
        return await send(
            self._http, request, self.service, policy=self._retry, stream=True, kind="generate"
        )

    async def get_operation(self, operation_id: str) -> Any:
        request = self._request("GET", f"{self._operations_url}/operations/{operation_id}")
        return await send_json(self._http, request, self.service, policy=self._retry)

    async def cancel_operation(self, operation_id: str) -> None:
        """Best effort: a generation nobody waits for should not run (and bill) to the end."""
        request = self._request("POST", f"{self._operations_url}/operations/{operation_id}:cancel")
        try:
            async with asyncio.timeout(5):
                response = await self._http.send(request)
            log.debug("cancel operation %s: HTTP %d", operation_id, response.status_code)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("cancel operation %s failed: %s", operation_id, exc)

    async def wait_operation(
        self, operation: Any, *, give_up_after: float, what: str
    ) -> Mapping[str, Any]:
        """Poll ``operation`` until done; return its ``response`` or raise its mapped error.

        If we give up (``give_up_after`` seconds passed, or the caller was cancelled), the
        operation is cancelled on the server.
        """
        op = _as_operation(operation, self.service.name)
        op_id = str(op.get("id", ""))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        delay = self.poll.initial
        try:
            while not op.get("done"):
                if loop.time() + delay > deadline:
                    raise ModelUnavailableError(
                        f"{what} was still not ready after {give_up_after:.0f} s, so fmbot "
                        "gave up. Please try again later."
                    )
                await asyncio.sleep(delay)
                delay = min(delay * self.poll.factor, self.poll.max_interval)
                op = _as_operation(await self.get_operation(op_id), self.service.name)
        except BaseException:
            if op_id and not op.get("done"):
                await self.cancel_operation(op_id)
            raise
        error = op.get("error")
        if isinstance(error, Mapping):
            code = int(error.get("code", 2) or 2)
            message = str(error.get("message") or "")
            log.error("operation %s failed: gRPC code %d: %s", op_id, code, message)
            raise grpc_error(code, message, self.service)
        response = op.get("response")
        if not isinstance(response, Mapping):
            raise ModelError(f"{self.service.title} finished {what} without a result.")
        return response

    async def aclose(self) -> None:
        await self._http.aclose()


def _as_operation(value: Any, service: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value.get("id"):
        raise ModelError(f"{service} sent an operation fmbot cannot read.")
    return value


def grpc_error(code: int, message: str, service: Service) -> ModelError:
    """The ModelError for a gRPC status (operation errors, errors inside a stream)."""
    if code == 1:
        return ModelError(f"{service.title} cancelled the request.")
    return error_for_status(_GRPC_TO_HTTP.get(code, 400), message, str(code), service)

"""YandexART as an :class:`~bot.models.base.ImageModel`: an async operation returning a JPEG."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from bot.errors import ModelError
from bot.models.base import GeneratedImage, ImageModel
from bot.models.yandex.client import YandexClient

IMAGE_GENERATION = "/foundationModels/v1/imageGenerationAsync"
MIME_TYPE = "image/jpeg"  # the only type YandexART accepts
MAX_PROMPT_CHARS = 500


class YandexImageModel(ImageModel):
    """``art://FOLDER/yandex-art/latest``. ``seed`` makes results repeatable."""

    def __init__(
        self,
        client: YandexClient,
        model_uri: str,
        *,
        name: str | None = None,
        seed: int | None = None,
        aspect_ratio: tuple[int, int] | None = None,
        operation_timeout: float = 180.0,
        owns_client: bool = False,
    ) -> None:
        if aspect_ratio is not None and min(aspect_ratio) <= 0:
            raise ValueError(f"aspect_ratio must be two positive integers, not {aspect_ratio}")
        self.name = name or f"yandex:{model_uri}"
        self.model_uri = model_uri
        self.seed = seed
        self.aspect_ratio = aspect_ratio
        self._client = client
        self._operation_timeout = operation_timeout
        self._owns_client = owns_client

    def _body(self, prompt: str) -> dict[str, Any]:
        options: dict[str, Any] = {"mimeType": MIME_TYPE}
        if self.seed is not None:
            options["seed"] = str(self.seed)  # int64 as a string, as the API documents
        if self.aspect_ratio is not None:
            width, height = self.aspect_ratio
            options["aspectRatio"] = {"widthRatio": str(width), "heightRatio": str(height)}
        return {
            "modelUri": self.model_uri,
            "generationOptions": options,
            "messages": [{"weight": "1", "text": prompt}],
        }

    async def generate_image(self, prompt: str) -> GeneratedImage:
        prompt = prompt.strip()
        if not prompt:
            raise ModelError("Describe the picture you want: the description is empty.")
        if len(prompt) > MAX_PROMPT_CHARS:
            # The service would reject it anyway; say why in words the user can act on.
            raise ModelError(
                f"The picture description is {len(prompt)} characters long; YandexART takes at "
                f"most {MAX_PROMPT_CHARS}. Please shorten it."
            )
        operation = await self._client.post(IMAGE_GENERATION, self._body(prompt), kind="submit")
        response = await self._client.wait_operation(
            operation, give_up_after=self._operation_timeout, what="The picture"
        )
        try:
            data = base64.b64decode(str(response["image"]), validate=True)
        except (KeyError, binascii.Error, ValueError) as exc:
            raise ModelError(
                f"{self._client.service.title} sent a picture fmbot cannot read."
            ) from exc
        if not data:
            raise ModelError(f"{self._client.service.title} sent an empty picture.")
        return GeneratedImage(data=data, mime_type=MIME_TYPE)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

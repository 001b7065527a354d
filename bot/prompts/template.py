"""A prompt template: instruction (system part) + task (the per-turn part around the message)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from bot.models.base import GenerationOptions


class Example(BaseModel):
    """A few-shot example: a user message and the reply the model should imitate."""

    model_config = ConfigDict(extra="forbid")

    user: str
    assistant: str


class PromptTemplate(BaseModel):
    """One template file. Unknown fields are errors so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    instruction: str
    task: str = "{{ message }}"
    model: str | None = None
    options: GenerationOptions = GenerationOptions()
    variables: dict[str, str | int | float | bool] = Field(default_factory=dict)
    examples: list[Example] = Field(default_factory=list)
    allow_images: bool = True
    #: The question a picture sent without a caption asks (pictures: FMBOT_VISION_MODEL).
    picture_request: str = "Describe this picture."
    #: Offered by /mode. False for templates fmbot runs itself (image-prompt): not a chat mode.
    chat_mode: bool = True
    #: Where the template came from; set by the loader, not read from the file.
    source: Path | None = Field(default=None, exclude=True)

"""A prompt template: instruction (system part) + task (the per-turn part around the message)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.models.base import GenerationOptions

#: As bot.kb.index names them (the layers keep prompts from importing it).
KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    #: Knowledge bases (``fmbot kb add``) each turn retrieves passages from: ``{{ knowledge }}``.
    knowledge: list[str] = Field(default_factory=list)
    knowledge_top_k: int = Field(default=4, ge=1, le=20)
    #: Passages scoring below this cosine similarity are left out (none: keep the top k).
    knowledge_min_score: float | None = Field(default=None, ge=-1, le=1)
    #: Where the template came from; set by the loader, not read from the file.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("knowledge", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        """``knowledge: shop`` or a list; each a knowledge base name."""
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list):
            for name in names:
                if not isinstance(name, str) or not KB_NAME.match(name):
                    raise ValueError(
                        f"{name!r} is not a knowledge base name: letters, digits, '_', '.', '-' "
                        "(see fmbot kb list)"
                    )
        return names

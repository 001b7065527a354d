"""One exception hierarchy for everything fmbot raises on purpose.

    FmbotError
    ├── ConfigError          a setting is missing or has a bad value (names the setting and the fix)
    ├── PromptError          a template file is invalid or fails to render (names path:line:col)
    ├── PictureError         a picture a user sent cannot be read, fetched or used (says why)
    ├── StoreError           the dialog store cannot be reached or answered badly
    │   ├── GivenUpError     a queue worker gave the message up; another worker answers it
    │   └── NotSavedError    a reply was given but its turn could not be stored
    └── ModelError           a model backend failed; the message is safe to show to a user
        ├── ContextOverflowError   the input alone does not fit the model's context window
        ├── ModelUnavailableError  the model cannot be loaded or reached right now
        ├── AuthenticationError    credentials were rejected (401)
        ├── PermissionDeniedError  no access to the folder/model, or quota (403)
        ├── RateLimitError         throttled (429) after retries
        ├── QuotaExceededError     the account's credit or spend limit is used up: not retried
        ├── ContentFilterError     the service refused the content
        └── StreamInterruptedError the reply stopped before it was complete

Lower-layer exceptions (httpx, redis, sqlite, llama.cpp) are mapped to these at the boundary with
``raise X(...) from exc`` so callers only ever catch ``FmbotError`` subclasses.
Messages never contain secrets.
"""

from __future__ import annotations


class FmbotError(Exception):
    """Base class of every error fmbot raises on purpose."""


class ConfigError(FmbotError):
    """A setting is missing or invalid.

    ``str(error)`` is one line naming the setting, the bad value and what is accepted.
    """

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        shown = "(not set)" if value in (None, "") else repr(value)
        super().__init__(f"{setting}={shown} is not valid: {accepted}")


class PromptError(FmbotError):
    """A template is invalid. ``location`` is ``path:line:column`` when known."""

    def __init__(self, message: str, location: str | None = None) -> None:
        self.location = location
        self.detail = message
        super().__init__(f"{location}: {message}" if location else message)


class PictureError(FmbotError):
    """A picture cannot be used: not an image, corrupt, too large, or its file is gone. The
    message is written for the person chatting."""


class KnowledgeError(FmbotError):
    """A knowledge base cannot be used: unknown, built with another embedder, unreadable. The
    message is one line that says what to do."""


class StoreError(FmbotError):
    """The dialog store failed (unreachable server, locked database, corrupt row)."""


class NotSavedError(StoreError):
    """The reply was given (and the user told it was not saved) but the turn could not be
    stored, e.g. Redis refused the write (OOM, MISCONF). Raised to a caller that runs messages
    again on store errors (a queue worker): running this one again would answer it twice, so the
    queue sets it aside (its dead stream) instead."""


class GivenUpError(StoreError):
    """The queue worker running this message gave it up (its lease lapsed during an outage) and
    the worker that takes the partition over answers it: nothing is to be said to the user."""


class ModelError(FmbotError):
    """A model backend failed. The message is written for the person chatting."""


class ContextOverflowError(ModelError):
    """The input does not fit the model's context window. ``needed`` and ``available`` are
    tokens, None when the server did not say (llama-server's older message)."""

    def __init__(self, needed: int | None, available: int | None, pictures: int = 0) -> None:
        self.needed = needed
        self.available = available
        if pictures:
            what = "this picture" if pictures == 1 else f"these {pictures} pictures"
            message = (
                f"{what[0].upper()}{what[1:]} and your message need about {needed} tokens, but "
                f"this model can take only {available} tokens of input. Please send fewer "
                "pictures at once."
            )
        elif needed is None or available is None:
            message = (
                "Your message is too long for this model's context window. Please shorten it "
                "or split it into parts."
            )
        else:
            message = (
                f"Your message is about {needed} tokens, but this model can take only "
                f"{available} tokens of input. Please shorten it or split it into parts."
            )
        super().__init__(message)


class ModelUnavailableError(ModelError):
    pass


class AuthenticationError(ModelError):
    pass


class PermissionDeniedError(ModelError):
    pass


class RateLimitError(ModelError):
    pass


class QuotaExceededError(ModelError):
    """The account behind the key is out of credit or over a spend/usage limit (OpenAI's 429
    ``insufficient_quota`` and billing codes). Not a RateLimitError on purpose: waiting or
    retrying never helps, someone has to fix the billing."""


class ContentFilterError(ModelError):
    pass


class StreamInterruptedError(ModelError):
    """The stream ended early; ``partial`` holds the text received so far."""

    def __init__(self, message: str, partial: str = "") -> None:
        self.partial = partial
        super().__init__(message)

"""Protocol-faithful fake servers for the remote model backends (real HTTP on 127.0.0.1)."""

from tests.fakes.base import FakeServer, Fault, Recorded
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.yandex_server import FakeYandex

__all__ = ["FakeOpenAI", "FakeServer", "FakeYandex", "Fault", "Recorded"]

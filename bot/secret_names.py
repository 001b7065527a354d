"""What makes a name a secret's: the words that mark URL query parameters whose values are never
shown, in URLs fmbot prints (bot.urls) nor in log lines (bot.observe.logs): ``password``,
``sentinel_password``, ``api_key``, ``access_token``..."""

from __future__ import annotations

import re

#: Any name containing one of these words, in any case.
WORDS = "pass|token|secret|key|auth|credential"
SECRET_NAME = re.compile(WORDS, re.IGNORECASE)

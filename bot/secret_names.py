"""What makes a name a secret's: the words that mark settings, query parameters and headers whose
values are never shown (``sentinel_password``, ``api_key``, ``access_token``...)."""

from __future__ import annotations

import re

#: Any name containing one of these words, in any case.
WORDS = "pass|token|secret|key|auth|credential"
SECRET_NAME = re.compile(WORDS, re.IGNORECASE)

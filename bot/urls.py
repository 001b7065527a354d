"""URLs as fmbot shows them: in errors, logs and ``fmbot config``, with their secrets hidden."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: Query parameters that hold secrets: any name containing one of these words, so that
#: ``sentinel_password=``, ``api_key=`` and ``access_token=`` are hidden too.
_SECRET_PARAMS = re.compile(
    r"(^|&)([^=&]*(?:pass|token|secret|key|auth|credential)[^=&]*=)[^&]*", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """Hide passwords in URLs: ``user:password@host`` and ``?password=...`` query parameters."""
    parts = urlsplit(url)
    query = _SECRET_PARAMS.sub(r"\1\2****", parts.query)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:****@{host}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide: show it exactly as given (urlunsplit drops an empty "//")
    return urlunsplit(parts._replace(netloc=netloc, query=query))

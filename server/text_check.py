"""Every text field of a JSON body is valid Unicode, or the request gets a 400 naming the field.

JSON may spell a lone UTF-16 surrogate (`"a\\ud800b"`); Python decodes it into a str that cannot be encoded
again, so it would fail deep inside tokenization, a metrics label or an error message that echoes it (a 500,
and a dropped keep-alive connection). Such escapes are rare, so bodies are scanned for one first and parsed
only when one is there; a surrogate pair is valid and becomes one character.
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.errors import INVALID_REQUEST
from server.protocol import ErrorDetail

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate(body: bytes) -> ErrorDetail | None:
    """A RequestBodyLimits check: a 400 naming the first field (or key) that holds a lone surrogate."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None  # the app reports the JSON error itself
    path = _find(value, [])
    if path is None:
        return None
    param = ".".join(path)
    return ErrorDetail(
        message=f"Invalid value for '{param}': the text holds an unpaired UTF-16 surrogate, which is not valid "
        "Unicode.",
        type=INVALID_REQUEST,
        param=param or None,
        code="invalid_unicode",
    )


def _find(value: Any, path: list[str]) -> list[str] | None:
    if isinstance(value, str):
        return path if not _valid(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if not _valid(key):
                return [*path, key.encode("utf-8", "backslashreplace").decode()]
            found = _find(item, [*path, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find(item, [*path, str(i)])
            if found is not None:
                return found
    return None


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

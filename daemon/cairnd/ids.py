"""Identifiers: session ids (minted, time-ordered) and request ids (chosen by writers)."""

from __future__ import annotations

import os
import re
import time

SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Crockford's base32: sortable as text, no ambiguous letters.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID_RE.fullmatch(value) is not None


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) is not None


def _base32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_session_id(now_ns: int | None = None) -> str:
    """A ULID-shaped id: 10 characters of milliseconds then 16 random ones, so ids sort
    by creation time (ls, directory listings) and never collide across restarts."""
    millis = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    return _base32(millis, 10) + _base32(random_bits, 16)

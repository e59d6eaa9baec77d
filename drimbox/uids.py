"""UID validation (PS3.5 §9.1): the only way a UID from outside becomes a path or a query key."""

from __future__ import annotations

import re

from drimbox.errors import InvalidUID

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: str) -> bool:
    """True when `value` is a syntactically valid DICOM UID."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def checked_uid(value: object, what: str = "UID") -> str:
    """Return `value` as a UID string, or raise InvalidUID naming what it was meant to be."""
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is missing")
    text = value.strip("\x00 ")
    if not is_valid_uid(text):
        raise InvalidUID(f"{what} {text[:80]!r} is not a valid DICOM UID")
    return text

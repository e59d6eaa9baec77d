"""Double-encoded UTF-8 in report text: spot it, repair it when that is unambiguous.

A RIS that decodes UTF-8 bytes as Latin-1 (or Windows-1252) and encodes the result again as
UTF-8 turns `médicale` into `mÃ©dicale`. The CDA is still well-formed, so refusing it would stop
publication for a cosmetic fault; publishing the mangled names silently would put them in the
DMP. We repair what round-trips cleanly and always say so (`Report.warnings`).
"""

from __future__ import annotations

import re

_LEGACY = ("latin-1", "cp1252")

#: Characters a UTF-8 continuation byte (0x80-0xBF) becomes when read as Latin-1 or Windows-1252.
_CONTINUATION = "".join(
    sorted({bytes([b]).decode(enc, errors="ignore") for b in range(0x80, 0xC0) for enc in _LEGACY} - {""})
)
#: A UTF-8 lead byte (0xC2-0xF4, identical in both code pages) followed by a continuation character.
_MOJIBAKE = re.compile(f"[\u00c2-\u00f4][{re.escape(_CONTINUATION)}]")


def looks_double_encoded(text: str) -> bool:
    """True when `text` holds a lead/continuation pair that UTF-8 read as Latin-1 leaves behind."""
    return _MOJIBAKE.search(text) is not None


def repaired(text: str) -> str | None:
    """`text` decoded once more as UTF-8, or None when it does not round-trip cleanly."""
    for encoding in _LEGACY:
        try:
            candidate = text.encode(encoding).decode("utf-8")
        except UnicodeError:
            continue
        if candidate != text:
            return candidate
    return None

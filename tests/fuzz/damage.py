"""Hypothesis strategies that damage real samples the way a faulty or hostile peer would.

Random bytes rarely get past the first check of a parser; damaging a real sample keeps most of
it valid, so the edits reach the code behind that check. Edits land mostly in the "hot" prefix
(a DICOM header, an HL7 header without its base64 document) where the parsers make decisions.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

#: Values that break length fields, delimiters and sign bits (DICOM undefined length, item tags).
INTERESTING = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\xfe\xff\xff\x7f",
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\x0d\xe0",
    b"\xfe\xff\xdd\xe0",
    b"\xe0\x7f\x10\x00",
    b"SQ\x00\x00\xff\xff\xff\xff",
    b"UN\x00\x00",
    b"OB\x00\x00",
    b"\r",
    b"\n",
    b"\x0b",
    b"\x1c\r",
    b"\xc3",
    b"\xef\xbb\xbf",
)
EDITS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "token")


@st.composite
def damaged(
    draw: st.DrawFn, seed: bytes, hot: int = 0, tokens: tuple[bytes, ...] = (), max_edits: int = 6, keep: int = 0
) -> bytes:
    """`seed` after 1 to `max_edits` byte-level edits; 4 in 5 land within the first `hot` bytes.

    The first `keep` bytes are left alone (a signature the parser checks first, which random edits
    would otherwise break in most cases: Hypothesis favours small positions).
    """
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        if len(data) <= keep:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        top = len(data) - 1
        if hot and draw(st.integers(0, 4)):
            top = max(min(top, hot - 1), keep)
        at = draw(st.integers(keep, top))
        edit = draw(st.sampled_from(EDITS))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            value = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=8))
            data[at : at + len(value)] = value
        elif edit == "insert":
            data[at:at] = draw(st.sampled_from(INTERESTING) | st.binary(max_size=32))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "truncate":
            del data[at:]
        elif edit == "duplicate":
            chunk = bytes(data[at : at + draw(st.integers(1, 256))])
            where = draw(st.integers(0, len(data)))
            data[where:where] = chunk
        elif tokens:
            token = draw(st.sampled_from(tokens))
            data[at : at + len(token)] = token
    return bytes(data)


def without_long_base64(raw: bytes, replacement: bytes) -> bytes:
    """`raw` with every base64 run of 1000+ characters replaced: mutations then reach the rest."""
    return re.sub(rb"[A-Za-z0-9+/]{1000,}={0,2}", replacement, raw)


def budget(examples: int) -> settings:
    """The settings of a fuzz test: `examples` cases, no deadline (2 shared cores), no example database.

    The database is off so that a run explores afresh instead of replaying last run's corpus, and a
    finding is reported with its reproduction (`@reproduce_failure`) rather than kept in a folder.
    The explain phase is off: on a failure it reruns the test hundreds of times to annotate lines.
    """
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                    phases=[phase for phase in Phase if phase is not Phase.explain])  # fmt: skip

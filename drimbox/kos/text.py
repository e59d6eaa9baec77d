"""The Key Object Description text of a DRIM-M KOS (DRIM-M §4.3).

The PoC writes one line for the study, one for the reported act and one per series, and its
consumer parses the series lines back to list modalities: the KOS has no other place for a
series' modality or description. We write the same bytes (two spaces included) and read them
the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from drimbox.kos.model import ManifestSeries

_SERIES_LINE = re.compile(r"^Série-(?P<uid>\S+) : (?P<modality>.*?) @  : (?P<description>.*)$", re.MULTILINE)


def describe(study_description: str, act: str, series: Iterable[ManifestSeries]) -> str:
    """`Examen : …\\nActe =  : …\\n` then `Série-<uid> : <modality> @  : <description>\\n` per series."""
    lines = [f"Examen : {_one_line(study_description)}", f"Acte =  : {_one_line(act)}"]
    lines += [f"Série-{s.series_uid} : {_one_line(s.modality)} @  : {_one_line(s.description)}" for s in series]
    return "".join(f"{line}\n" for line in lines)


def series_lines(text: str) -> dict[str, tuple[str, str]]:
    """Series UID → (modality, description) from a text `describe` wrote; other lines are ignored."""
    return {m["uid"]: (m["modality"], m["description"]) for m in _SERIES_LINE.finditer(text)}


def _one_line(value: str) -> str:
    """A value on one line: a newline in a series description would cut its line in two."""
    return " ".join(value.splitlines())

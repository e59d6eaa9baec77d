"""The professional behind a token, as Pro Santé Connect describes them (`SubjectRefPro`).

The audit trail must say not only who looked at images (the national id) but as what and for
which structure: PSC gives the RPPS "exercice" (profession code, savoir-faire) and its activities
(the places of practice), in the shape its userinfo endpoint returns (DRIM-M §4.11):
`SubjectRefPro.exercices[0].{codeProfession, codeSavoirFaire, activities[].{ancienIdentifiantDeLaStructure, …}}`.
"""

from __future__ import annotations

from collections.abc import Mapping

# The structure id the PoC reads, then the identifiers RPPS activities may carry instead.
STRUCTURE_KEYS = ("ancienIdentifiantDeLaStructure", "siretSite", "finessSite", "identifiantTechniqueDeLaStructure")


def professional_identity(claims: Mapping[str, object]) -> tuple[str, str]:
    """(profession, structure) from `SubjectRefPro`, e.g. ("10/SM44", "1130012345").

    The profession is the code of the first exercice, with its savoir-faire after a slash when it
    has one; the structure is that of its first activity. A professional with several activities
    picks one in the PSC-facing application (the "situation d'exercice"), which a bearer token does
    not tell: the first is the one PSC lists first, and the whole `SubjectRefPro` stays in the
    claims. Anything not shaped as PSC's gives empty strings: the profile describes, it does not
    decide whether the token is valid.
    """
    practice = _first(_field(claims.get("SubjectRefPro"), "exercices"))
    if practice is None:
        return "", ""
    profession = _text(practice.get("codeProfession"))
    specialty = _text(practice.get("codeSavoirFaire"))
    if profession and specialty:
        profession = f"{profession}/{specialty}"
    activity = _first(practice.get("activities"))
    structure = ""
    if activity is not None:
        structure = next((text for key in STRUCTURE_KEYS if (text := _text(activity.get(key)))), "")
    return profession, structure


def _field(value: object, name: str) -> object:
    return value.get(name) if isinstance(value, Mapping) else None


def _first(value: object) -> Mapping[str, object] | None:
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return value[0]
    return None


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""

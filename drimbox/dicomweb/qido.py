"""QIDO-RS, the Search Transaction (PS3.18 §10.6), answered from the index: never by C-FIND.

Parameters (PS3.18 §8.3.4): attributes by keyword (`PatientName=`) or tag (`00100010=`), an empty
value asking for the attribute without matching on it; `includefield` (repeated, comma-separated,
or `all`); `fuzzymatching`; `limit` (default and cap given by the daemon) and `offset`. A limit
over the cap is lowered to it, and a page cut by the server's limit (the cap or the default, not
one the client chose) carries the standard `Warning: 299` header.

Choices where the standard leaves room:

- no match is `200 []` at every level (PS3.18 allows 204): one code path for clients; a study (or
  series) named in the path that does not exist, or lies outside the caller's scope, is 404;
- `includefield` naming a valid DICOM attribute we do not hold is ignored with a `Warning: 299`;
  a parameter that is no DICOM attribute at all, or a matching key we cannot match on, is 400;
- results always carry SpecificCharacterSet `ISO_IR 192` (JSON is UTF-8), the UIDs of their
  parents, and a RetrieveURL under this service;
- person-name matching is described in `drimbox.index.queries`.

No `from __future__ import annotations` here: FastAPI resolves the routes' annotations at run time,
and they name the `authorize` dependency of the enclosing `qido_router` call.
"""

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from drimbox.dicomweb.access import AccessScope
from drimbox.errors import DrimboxError
from drimbox.index.db import DatabaseError
from drimbox.index.queries import (
    MATCHABLE,
    InstanceRow,
    InvalidQuery,
    Level,
    Match,
    Row,
    SearchQuery,
    SeriesRow,
    StudyRow,
    contains,
    search,
)
from drimbox.index.repository import IndexRepository

DICOM_JSON = "application/dicom+json"
PROBLEM_JSON = "application/problem+json"
TOO_MANY = "The number of results exceeded the maximum supported by the server. Additional results can be requested."
_LEVELS: tuple[Level, ...] = ("study", "series", "instance")
_MAX_OFFSET = 2**31 - 1

Authorize = Callable[..., AccessScope] | Callable[..., Awaitable[AccessScope]]
Value = str | int | tuple[str, ...] | None


class QueryError(DrimboxError, ValueError):
    """A QIDO-RS request we cannot answer as asked (HTTP 400 with a problem body)."""


# --- what a result can hold ------------------------------------------------------------------

_STUDY: dict[str, Callable[[StudyRow], Value]] = {
    "StudyDate": lambda s: s.study_date,
    "StudyTime": lambda s: s.study_time,
    "AccessionNumber": lambda s: s.accession_number,
    "ModalitiesInStudy": lambda s: s.modalities,
    "ReferringPhysicianName": lambda s: s.referring_physician,
    "StudyDescription": lambda s: s.description,
    "PatientName": lambda s: s.patient_name,
    "PatientID": lambda s: s.patient_id,
    "IssuerOfPatientID": lambda s: s.issuer,
    "PatientBirthDate": lambda s: s.birth_date,
    "PatientSex": lambda s: s.sex,
    "StudyInstanceUID": lambda s: s.study_uid,
    "StudyID": lambda s: s.study_id,
    "NumberOfStudyRelatedSeries": lambda s: s.series_count,
    "NumberOfStudyRelatedInstances": lambda s: s.instance_count,
}
_SERIES: dict[str, Callable[[SeriesRow], Value]] = {
    "Modality": lambda s: s.modality,
    "SeriesDescription": lambda s: s.description,
    "SeriesInstanceUID": lambda s: s.series_uid,
    "SeriesNumber": lambda s: s.series_number,
    "BodyPartExamined": lambda s: s.body_part,
    "NumberOfSeriesRelatedInstances": lambda s: s.instance_count,
}
_INSTANCE: dict[str, Callable[[InstanceRow], Value]] = {
    "SOPClassUID": lambda i: i.sop_class_uid,
    "SOPInstanceUID": lambda i: i.sop_uid,
    "InstanceAvailability": lambda i: "ONLINE" if i.held else "NEARLINE",
    "InstanceNumber": lambda i: i.instance_number,
    "Rows": lambda i: i.rows,
    "Columns": lambda i: i.columns,
    "NumberOfFrames": lambda i: i.number_of_frames,
    "AvailableTransferSyntaxUID": lambda i: i.transfer_syntax_uid,
}
_LEVEL_OF: dict[str, Level] = {
    **dict.fromkeys(_STUDY, "study"),
    **dict.fromkeys(_SERIES, "series"),
    **dict.fromkeys(_INSTANCE, "instance"),
}
# PS3.18 Tables 10.6.3-3..5: present in every result, without a value when we have none
_REQUIRED: dict[Level, tuple[str, ...]] = {
    "study": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "series": ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    "instance": ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber"),
}  # fmt: skip
# present when we know them
_OPTIONAL: dict[Level, tuple[str, ...]] = {
    "study": ("StudyDescription", "IssuerOfPatientID"),
    "series": ("BodyPartExamined",),
    "instance": ("Rows", "Columns", "NumberOfFrames", "AvailableTransferSyntaxUID"),
}


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the tables above: fail at import, not at the first request
        raise LookupError(f"{keyword} is not in pydicom's data dictionary")
    return tag


_TAG = {kw: _tag(kw) for kw in [*_LEVEL_OF, "SpecificCharacterSet", "RetrieveURL"]}
_VR = {kw: dictionary_VR(tag) for kw, tag in _TAG.items()}
_NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})


@dataclass(frozen=True)
class QidoSearch:
    """A parsed QIDO-RS request: the index query (the page's `limit`) and what to put in each result."""

    query: SearchQuery
    fields: frozenset[str] = frozenset()
    all_fields: bool = False
    warn_if_more: bool = False
    warnings: tuple[str, ...] = ()


# --- parameters -------------------------------------------------------------------------------


def parse_search(
    params: Iterable[tuple[str, str]],
    *,
    level: Level,
    default_limit: int,
    max_limit: int,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoSearch:
    """The search a QIDO-RS request's query parameters ask for; QueryError when they make no sense."""
    matches: dict[str, Match | None] = {}
    fields: set[str] = set()
    unsupported: list[str] = []
    options: dict[str, str] = {}
    for name, value in params:
        if name == "includefield":
            for item in filter(None, (part.strip() for part in value.split(","))):
                if item == "all":
                    fields.add(item)
                else:
                    _include(_keyword(item), level, fields, unsupported)
        elif name in ("fuzzymatching", "limit", "offset"):
            options[name] = value
        elif name not in ("accept", "charset"):  # PS3.18 §8.3.3: the media type and charset overrides
            _add_key(_keyword(name), value, level, matches, fields, unsupported)
    limit, warn_if_more, capped = _limit(options.get("limit"), default_limit, max_limit)
    try:
        query = SearchQuery(
            level=level,
            study_uid=study_uid,
            series_uid=series_uid,
            matches=tuple(m for m in matches.values() if m is not None),
            fuzzy=_boolean("fuzzymatching", options.get("fuzzymatching", "false")),
            limit=limit,
            offset=_count("offset", options.get("offset", "0")),
        )
    except InvalidQuery as exc:
        raise QueryError(str(exc)) from exc
    warnings = [TOO_MANY] if capped else []
    if unsupported:
        warnings.append("The following attributes are not supported and were ignored: " + ", ".join(unsupported))
    return QidoSearch(query, frozenset(fields - {"all"}), "all" in fields, warn_if_more or capped, tuple(warnings))


def _keyword(name: str) -> str:
    """The DICOM keyword a parameter names, by keyword or by tag (`00100010`)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QueryError(f"{name} is not a known DICOM attribute tag")
        return str(keyword)
    if "." in name:
        raise QueryError(f"{name[:64]!r}: attributes inside sequences cannot be searched")
    if tag_for_keyword(name) is None:
        raise QueryError(f"{name[:64]!r} is neither a query parameter nor a DICOM attribute keyword")
    return name


def _include(keyword: str, level: Level, fields: set[str], unsupported: list[str]) -> None:
    known = _LEVEL_OF.get(keyword)
    if known is not None and _LEVELS.index(known) <= _LEVELS.index(level):
        fields.add(keyword)
    elif keyword not in unsupported:
        unsupported.append(keyword)


def _add_key(
    keyword: str,
    value: str,
    level: Level,
    matches: dict[str, Match | None],
    fields: set[str],
    unsupported: list[str],
) -> None:
    """A key given as a parameter: matched on when it has a value, returned in each result in any case."""
    if keyword in matches:
        raise QueryError(f"{keyword} is given more than once")
    if keyword in MATCHABLE:
        try:
            matches[keyword] = Match.parse(keyword, value)
        except InvalidQuery as exc:
            raise QueryError(str(exc)) from exc
    elif value:
        raise QueryError(f"matching on {keyword} is not supported")
    else:
        matches[keyword] = None
    _include(keyword, level, fields, unsupported)


def _limit(raw: str | None, default_limit: int, max_limit: int) -> tuple[int, bool, bool]:
    """(limit, warn when more results exist, the client's limit was capped)."""
    if raw is None:
        return min(default_limit, max_limit), True, False
    limit = _count("limit", raw)
    if limit == 0:
        raise QueryError("limit must be a positive integer")
    return min(limit, max_limit), False, limit > max_limit


def _count(name: str, raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", raw) or int(raw) > _MAX_OFFSET:
        raise QueryError(f"{name} must be a non-negative integer, not {raw[:32]!r}")
    return int(raw)


def _boolean(name: str, raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise QueryError(f"{name} must be true or false, not {raw[:32]!r}")
    return raw.lower() == "true"


# --- DICOM JSON (PS3.18 F.2) -------------------------------------------------------------------


def render(rows: Iterable[Row], search: QidoSearch, base_url: str) -> list[dict[str, Any]]:
    """Each row as a DICOM JSON object holding the attributes its level requires plus those asked for."""
    keywords = _keywords(search.query, search)
    return [_object(row, keywords, base_url) for row in rows]


def _keywords(query: SearchQuery, search: QidoSearch) -> dict[str, bool]:
    """Keyword → whether it appears without a value (required or asked for) rather than being left out."""
    own = _LEVELS.index(query.level)
    fixed = {"study": query.study_uid is not None, "series": query.series_uid is not None}
    chosen: dict[str, bool] = {}
    for index, level in enumerate(_LEVELS[: own + 1]):
        if index == own or not fixed.get(level, False):
            chosen.update(dict.fromkeys(_OPTIONAL[level], False))
            chosen.update(dict.fromkeys(_REQUIRED[level], True))
        if search.all_fields:
            chosen.update({kw: True for kw, at in _LEVEL_OF.items() if at == level})
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID")[:own]:
        chosen[keyword] = True
    chosen.update(dict.fromkeys(search.fields, True))
    return chosen


def _lineage(row: Row) -> tuple[StudyRow, SeriesRow | None, InstanceRow | None]:
    if isinstance(row, InstanceRow):
        return row.series.study, row.series, row
    if isinstance(row, SeriesRow):
        return row.study, row, None
    return row, None, None


def _object(row: Row, keywords: Mapping[str, bool], base_url: str) -> dict[str, Any]:
    study, series, instance = _lineage(row)
    url = f"{base_url}/studies/{study.study_uid}"
    values: dict[str, Value] = {"SpecificCharacterSet": "ISO_IR 192"}
    for keyword, always in keywords.items():
        level = _LEVEL_OF[keyword]
        value: Value = None
        if level == "study":
            value = _STUDY[keyword](study)
        elif level == "series" and series is not None:
            value = _SERIES[keyword](series)
        elif level == "instance" and instance is not None:
            value = _INSTANCE[keyword](instance)
        if always or value not in (None, "", ()):
            values[keyword] = value
    if series is not None:
        url += f"/series/{series.series_uid}"
    if instance is not None:
        url += f"/instances/{instance.sop_uid}"
    values["RetrieveURL"] = url
    ordered = sorted(values.items(), key=lambda item: _TAG[item[0]])
    return {f"{_TAG[kw]:08X}": _element(_VR[kw], value) for kw, value in ordered}


def _element(vr: str, value: Value) -> dict[str, Any]:
    if value is None or value == "" or value == ():
        return {"vr": vr}
    items: list[Any] = list(value) if isinstance(value, tuple) else [value]
    if vr == "PN":
        items = [_person_name(str(v)) for v in items]
    elif vr in _NUMBER_VRS:
        items = [int(v) for v in items]
    return {"vr": vr, "Value": items}


def _person_name(name: str) -> dict[str, str]:
    """`Alphabetic=Ideographic=Phonetic` component groups (PS3.18 F.2.2), empty groups left out."""
    groups = zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("="), strict=False)
    return {group: text for group, text in groups if text}


# --- HTTP -------------------------------------------------------------------------------------


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An RFC 9457 problem answer."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def negotiate(accept: str) -> str | None:
    """The media type to answer with, or None when the client accepts none we produce (406)."""
    if not accept.strip():
        return DICOM_JSON
    acceptable: set[str] = set()
    for part in accept.split(","):
        media, *params = (piece.strip().lower() for piece in part.split(";"))
        weights = [p.partition("=")[2] for p in params if p.startswith("q=")]
        if weights and not re.fullmatch(r"0(\.0*)?|1(\.0*)?|0\.[0-9]{1,3}", weights[0]):
            continue  # a malformed weight: the range is ignored
        if not weights or float(weights[0]) > 0:
            acceptable.add(media)
    if acceptable & {DICOM_JSON, "application/*", "*/*"}:
        return DICOM_JSON
    return "application/json" if "application/json" in acceptable else None


def qido_router(
    repository_provider: Callable[[], IndexRepository],
    *,
    default_limit: int,
    max_limit: int,
    authorize: Authorize,
    public_prefix: str,
    limiter: anyio.CapacityLimiter | None = None,
) -> APIRouter:
    """The six QIDO-RS routes; `authorize` (a FastAPI dependency) gives each request its AccessScope.

    RetrieveURLs are built from `public_prefix` (configuration), never from the request's Host.

    Searches run in worker threads under `limiter` (default: 8 threads of our own), so a slow
    query never takes anyio's shared thread pool.
    """
    router = APIRouter(tags=["QIDO-RS"])
    threads = limiter or anyio.CapacityLimiter(8)

    async def answer(
        request: Request, scope: AccessScope, level: Level, study: str | None = None, series: str | None = None
    ) -> Response:
        accept = ",".join(request.query_params.getlist("accept")) or request.headers.get("accept", "")
        media_type = negotiate(accept)
        if media_type is None:
            return problem(406, f"QIDO-RS answers {DICOM_JSON} (or application/json), not {accept[:100]!r}")
        try:
            parsed = parse_search(request.query_params.multi_items(), level=level, study_uid=study,
                                  series_uid=series, default_limit=default_limit, max_limit=max_limit)  # fmt: skip
        except QueryError as exc:
            return problem(400, str(exc))
        if study is not None and not scope.allows(study):
            return problem(404, f"study {study} not found")
        page = parsed.query.limit or default_limit
        query = replace(parsed.query, allowed_study_uids=scope.study_uids, limit=page + 1)
        try:
            rows, known = await anyio.to_thread.run_sync(_run, repository_provider, query, limiter=threads)
        except DatabaseError as exc:
            return problem(503, str(exc), {"Retry-After": "5"})
        if not known:
            return problem(404, f"series {series} not found" if series else f"study {study} not found")
        warnings = list(parsed.warnings)
        if len(rows) > page and parsed.warn_if_more and TOO_MANY not in warnings:
            warnings.insert(0, TOO_MANY)
        body = json.dumps(render(rows[:page], parsed, public_prefix), ensure_ascii=False, separators=(",", ":"))
        headers = {"Warning": ", ".join(f'299 drimbox: "{w}"' for w in warnings)} if warnings else None
        return Response(body.encode(), media_type=media_type, headers=headers)

    @router.get("/studies", name="qido_search_studies", summary="Search for studies")
    async def search_studies(request: Request, scope: Annotated[AccessScope, Depends(authorize)]) -> Response:
        return await answer(request, scope, "study")

    @router.get("/series", name="qido_search_series", summary="Search for series")
    async def search_series(request: Request, scope: Annotated[AccessScope, Depends(authorize)]) -> Response:
        return await answer(request, scope, "series")

    @router.get("/instances", name="qido_search_instances", summary="Search for instances")
    async def search_instances(request: Request, scope: Annotated[AccessScope, Depends(authorize)]) -> Response:
        return await answer(request, scope, "instance")

    @router.get("/studies/{study}/series", name="qido_search_study_series", summary="Search for a study's series")
    async def search_study_series(
        request: Request, study: str, scope: Annotated[AccessScope, Depends(authorize)]
    ) -> Response:
        return await answer(request, scope, "series", study)

    @router.get("/studies/{study}/instances", name="qido_search_study_instances", summary="Search a study's instances")
    async def search_study_instances(
        request: Request, study: str, scope: Annotated[AccessScope, Depends(authorize)]
    ) -> Response:
        return await answer(request, scope, "instance", study)

    @router.get(
        "/studies/{study}/series/{series}/instances",
        name="qido_search_series_instances",
        summary="Search a series' instances",
    )
    async def search_series_instances(
        request: Request, study: str, series: str, scope: Annotated[AccessScope, Depends(authorize)]
    ) -> Response:
        return await answer(request, scope, "instance", study, series)

    return router


def _run(repository_provider: Callable[[], IndexRepository], query: SearchQuery) -> tuple[list[Row], bool]:
    """The search in one session, and whether the study (series) in the path exists when nothing matched."""
    with repository_provider().session() as session:
        rows = search(session, query)
        if rows or query.study_uid is None:
            return rows, True
        return rows, contains(session, query.study_uid, query.series_uid)

"""Searches of the index as QIDO-RS asks them (PS3.18 §10.6), answered in SQL and never by C-FIND.

Matching follows PS3.4 C.2.2.2 as PS3.18 §8.3.4 narrows it:

- single value: exact and case-sensitive, except person names (below);
- wildcard (`*`, `?`): SQL LIKE with `%`, `_` and the escape character `!` escaped; on text other
  than names it ignores case (friendlier for accession numbers typed by hand; SQLite folds ASCII
  letters only, PostgreSQL all letters), where exact matching does not;
- range on dates and times (`A-B`, `-B`, `A-`); an empty stored value never matches a range;
- UID list (backslash- or comma-separated); Modality and ModalitiesInStudy take a list too
  (any value matches);
- person names (PatientName, ReferringPhysicianName) always compare in the normalised form the
  index keeps beside the name as received (upper case, accents removed, `normalize_name`): PS3.4
  C.2.2.2.1 lets PN matching ignore case and accents, and the same answer then comes from SQLite
  and PostgreSQL (whose case folding of accented letters differs) and exact names use
  `ix_patient_name_normalized`. Without fuzzy matching the whole name must match (`lefevre^helene`,
  `LEF*`); with fuzzy matching each component or word may be given by a prefix: `lefevre`, `HEL`
  and `lef^hel` all match `LEFÈVRE^Hélène`, `fontaine` matches `DE LA FONTAINE^Éloïse`.

A search is one SELECT for the page plus one grouped SELECT for the counts of the studies on
that page, whatever the number of rows: no ORM objects are loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, RowMapping, Select, and_, exists, func, literal, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, SQLORMExpression, aliased

from drimbox.errors import DrimboxError
from drimbox.index.db import DatabaseError
from drimbox.index.models import Instance, Patient, Series, Study
from drimbox.index.records import normalize_name
from drimbox.index.repository import IndexRepository
from drimbox.uids import is_valid_uid

Level = Literal["study", "series", "instance"]
MatchKind = Literal["exact", "wildcard", "range", "uid_list", "value_list"]
_LEVELS: tuple[Level, ...] = get_args(Level)
_ESCAPE = "!"
_MAX_VALUE = 324  # the longest value of a PN; longer keys can only be mistakes or abuse
_TIME = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?")


class InvalidQuery(DrimboxError, ValueError):
    """A search the index cannot answer as asked: unknown attribute, malformed value, wrong level."""


@dataclass(frozen=True)
class _Attribute:
    level: Level
    kind: Literal["text", "name", "date", "time", "uid", "number", "codes"]
    column: SQLORMExpression[Any]
    normalized: SQLORMExpression[str] | None = None


_ATTRIBUTES: dict[str, _Attribute] = {
    "StudyDate": _Attribute("study", "date", Study.study_date),
    "StudyTime": _Attribute("study", "time", Study.study_time),
    "AccessionNumber": _Attribute("study", "text", Study.accession_number),
    "ModalitiesInStudy": _Attribute("study", "codes", Study.modalities),
    "ReferringPhysicianName": _Attribute(
        "study", "name", Study.referring_physician, Study.referring_physician_normalized
    ),
    "StudyDescription": _Attribute("study", "text", Study.description),
    "PatientName": _Attribute("study", "name", Patient.name, Patient.name_normalized),
    "PatientID": _Attribute("study", "text", Patient.patient_id),
    "IssuerOfPatientID": _Attribute("study", "text", Patient.issuer),
    "PatientBirthDate": _Attribute("study", "date", Patient.birth_date),
    "PatientSex": _Attribute("study", "text", Patient.sex),
    "StudyInstanceUID": _Attribute("study", "uid", Study.study_uid),
    "StudyID": _Attribute("study", "text", Study.study_id),
    "Modality": _Attribute("series", "codes", Series.modality),
    "SeriesInstanceUID": _Attribute("series", "uid", Series.series_uid),
    "SeriesNumber": _Attribute("series", "number", Series.series_number),
    "SeriesDescription": _Attribute("series", "text", Series.description),
    "BodyPartExamined": _Attribute("series", "text", Series.body_part),
    "SOPClassUID": _Attribute("instance", "uid", Instance.sop_class_uid),
    "SOPInstanceUID": _Attribute("instance", "uid", Instance.sop_uid),
    "InstanceNumber": _Attribute("instance", "number", Instance.instance_number),
}

MATCHABLE: Mapping[str, Level] = {keyword: a.level for keyword, a in _ATTRIBUTES.items()}
"""Keyword → the level it belongs to, for every attribute a search can match on."""

_KINDS: dict[str, frozenset[str]] = {
    "text": frozenset({"exact", "wildcard"}),
    "name": frozenset({"exact", "wildcard"}),
    "date": frozenset({"exact", "range"}),
    "time": frozenset({"exact", "range"}),
    "uid": frozenset({"exact", "uid_list"}),
    "number": frozenset({"exact"}),
    "codes": frozenset({"exact", "wildcard", "value_list"}),
}


@dataclass(frozen=True)
class Match:
    """One matching key: `values` holds one value, or (low, high) for a range ('' = open), or a list."""

    keyword: str
    kind: MatchKind
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        attribute = _ATTRIBUTES.get(self.keyword)
        if attribute is None:
            raise InvalidQuery(f"matching on {self.keyword} is not supported")
        if self.kind not in _KINDS[attribute.kind]:
            raise InvalidQuery(f"{self.keyword} does not support {self.kind.replace('_', ' ')} matching")
        _check_values(self.keyword, attribute.kind, self.kind, self.values)

    @classmethod
    def parse(cls, keyword: str, raw: str) -> Match | None:
        """The match a DICOM query value asks for (PS3.4 C.2.2.2), or None for universal matching."""
        attribute = _ATTRIBUTES.get(keyword)
        if attribute is None:
            raise InvalidQuery(f"matching on {keyword} is not supported")
        if raw in ("", "*"):
            return None
        if attribute.kind in ("date", "time") and "-" in raw:
            low, _, high = raw.partition("-")
            return cls(keyword, "range", (low, high))
        if attribute.kind in ("uid", "codes"):
            values = tuple(v.strip() for v in re.split(r"[\\,]", raw))
            if len(values) > 1:
                return cls(keyword, "uid_list" if attribute.kind == "uid" else "value_list", values)
        if attribute.kind in ("text", "name", "codes") and ("*" in raw or "?" in raw):
            return cls(keyword, "wildcard", (raw,))
        return cls(keyword, "exact", (raw.strip() if attribute.kind != "text" else raw,))


@dataclass(frozen=True)
class SearchQuery:
    """A search at one level, possibly within a study (and series), restricted to allowed studies.

    `allowed_study_uids` None means unrestricted; an empty set matches nothing. `limit` None means
    no limit (callers answering the network always set one).
    """

    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    matches: tuple[Match, ...] = ()
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    allowed_study_uids: frozenset[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise InvalidQuery(f"unknown search level {self.level!r}")
        for uid, what in ((self.study_uid, "study"), (self.series_uid, "series")):
            if uid is not None and not is_valid_uid(uid):
                raise InvalidQuery(f"{what} UID {uid[:80]!r} is not a valid DICOM UID")
        if self.series_uid is not None and self.level != "instance":
            raise InvalidQuery("a series scope only applies to an instance search")
        if (self.limit is not None and self.limit < 0) or self.offset < 0:
            raise InvalidQuery("limit and offset must not be negative")
        seen: set[str] = set()
        for match in self.matches:
            level = _ATTRIBUTES[match.keyword].level
            if _LEVELS.index(level) > _LEVELS.index(self.level):
                raise InvalidQuery(
                    f"{match.keyword} is a {level} attribute: it cannot be matched in a {self.level} search"
                )
            if match.keyword in seen:
                raise InvalidQuery(f"{match.keyword} is given more than once")
            seen.add(match.keyword)


@dataclass(frozen=True)
class StudyRow:
    """A study as a search answers it; counts are None when neither the index nor the PACS knows them."""

    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    description: str
    referring_physician: str
    modalities: tuple[str, ...]
    patient_name: str
    patient_id: str
    issuer: str
    birth_date: str
    sex: str
    series_count: int | None
    instance_count: int | None


@dataclass(frozen=True)
class SeriesRow:
    study: StudyRow
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    body_part: str
    instance_count: int | None


@dataclass(frozen=True)
class InstanceRow:
    """An instance; `held` says whether its file is in our store (ONLINE) or only in the PACS."""

    series: SeriesRow
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    transfer_syntax_uid: str
    held: bool


Row = StudyRow | SeriesRow | InstanceRow
Source = IndexRepository | Session


def search(source: Source, query: SearchQuery) -> list[Row]:
    """Rows matching `query`, newest study first, at most two SQL statements."""
    if query.allowed_study_uids is not None and not query.allowed_study_uids:
        return []
    try:
        with _opened(source) as session:
            found = session.execute(statement(query)).mappings().all()
            if not found:
                return []
            tallies = _tallies(session, {row["study_pk"] for row in found})
    except OperationalError as exc:  # database down, locked past busy_timeout: retry later
        raise DatabaseError(f"the index cannot be read: {exc.__class__.__name__}") from exc
    studies: dict[int, StudyRow] = {}
    return [_row(query.level, row, tallies, studies) for row in found]


def contains(source: Source, study_uid: str, series_uid: str | None = None) -> bool:
    """Whether the index knows the study (and that series within it): tells an empty answer from a 404."""
    condition = Study.study_uid == study_uid
    if series_uid is not None:
        condition = and_(condition, exists().where(Series.study_pk == Study.id, Series.series_uid == series_uid))
    with _opened(source) as session:
        return session.scalar(select(Study.id).where(condition)) is not None


def statement(query: SearchQuery) -> Select[Any]:
    """The one SELECT of a search's page (exposed so tests can EXPLAIN it)."""
    columns: list[Any] = [Study.id.label("study_pk"), *_STUDY_COLUMNS]
    order: list[Any] = [Study.study_date.desc(), Study.study_time.desc(), Study.study_uid]
    if query.level != "study":
        columns += [Series.id.label("series_pk"), *_SERIES_COLUMNS]
        order += [Series.series_number.asc().nulls_last(), Series.series_uid]
    if query.level == "instance":
        columns += _INSTANCE_COLUMNS
        order += [Instance.instance_number.asc().nulls_last(), Instance.sop_uid]
    stmt = select(*columns).select_from(Study).join(Patient, Patient.id == Study.patient_pk)
    if query.level != "study":
        stmt = stmt.join(Series, Series.study_pk == Study.id)
    if query.level == "instance":
        stmt = stmt.join(Instance, Instance.series_pk == Series.id)
    stmt = stmt.where(*_conditions(query)).order_by(*order)
    if query.offset:
        stmt = stmt.offset(query.offset)
    return stmt if query.limit is None else stmt.limit(query.limit)


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern (escape `!`): `*` → `%`, `?` → `_`, `%`, `_`, `!` literal."""
    out = []
    for char in value:
        if char in "%_" + _ESCAPE:
            out.append(_ESCAPE + char)
        else:
            out.append({"*": "%", "?": "_"}.get(char, char))
    return "".join(out)


# --- conditions -------------------------------------------------------------------------


def _conditions(query: SearchQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.study_uid is not None:
        where.append(Study.study_uid == query.study_uid)
    if query.series_uid is not None:
        where.append(Series.series_uid == query.series_uid)
    if query.allowed_study_uids is not None:
        where.append(Study.study_uid.in_(sorted(query.allowed_study_uids)))
    where += [_condition(match, query.fuzzy) for match in query.matches]
    return where


def _condition(match: Match, fuzzy: bool) -> ColumnElement[bool]:
    attribute = _ATTRIBUTES[match.keyword]
    column = attribute.column
    if match.keyword == "ModalitiesInStudy":
        return _modalities_in_study(match)
    if match.kind in ("uid_list", "value_list"):
        return column.in_(match.values)
    if match.kind == "range":
        return _range(column, attribute.kind, *match.values)
    [value] = match.values
    if attribute.kind == "name":
        return _name(attribute, value, match.kind == "wildcard", fuzzy)
    if match.kind == "wildcard":
        return column.ilike(like_pattern(value), escape=_ESCAPE)
    if attribute.kind == "number":
        return column == int(value)
    return column == value


def _range(column: SQLORMExpression[Any], kind: str, low: str, high: str) -> ColumnElement[bool]:
    """`low <= column <= high` on the text form; times get their upper bound padded (`12` → `125959.999999`)."""
    bounds: list[ColumnElement[bool]] = [column != ""]
    if low:
        bounds.append(column >= low)
    if high:
        bounds.append(column <= (high + "xx5959.999999"[len(high) :] if kind == "time" else high))
    return and_(*bounds)


def _name(attribute: _Attribute, value: str, wildcard: bool, fuzzy: bool) -> ColumnElement[bool]:
    """Person names compare in their normalised form; fuzzy matching also takes a prefix of each word."""
    column = attribute.normalized
    assert column is not None  # every "name" attribute has its normalised column
    normalized = normalize_name(value)
    if not fuzzy:
        return column.like(like_pattern(normalized), escape=_ESCAPE) if wildcard else column == normalized
    components = [like_pattern(part) for part in normalized.split("^")]
    if len(components) > 1:  # family^given...: each component by a prefix
        return column.like("%^".join(components) + "%", escape=_ESCAPE)
    [word] = components
    starts = [word + "%", "%^" + word + "%", "% " + word + "%", "%-" + word + "%"]
    return or_(*(column.like(pattern, escape=_ESCAPE) for pattern in starts))


def _modalities_in_study(match: Match) -> ColumnElement[bool]:
    """A study matches when the PACS's ModalitiesInStudy or one of its indexed series has the modality.

    The series are an alias, so the subquery stays its own when a series search already joins them.
    """
    stored = literal("\\") + Study.modalities + literal("\\")  # `\\CT\\MR\\`: each value between separators
    series = aliased(Series, name="study_series")
    in_stored: ColumnElement[bool]
    in_series: ColumnElement[bool]
    if match.kind == "wildcard":
        pattern = like_pattern(match.values[0])
        in_stored = stored.ilike(f"%\\{pattern}\\%", escape=_ESCAPE)
        in_series = series.modality.ilike(pattern, escape=_ESCAPE)
    else:
        in_stored = or_(*(stored.like(f"%\\{_escaped(v)}\\%", escape=_ESCAPE) for v in match.values))
        in_series = series.modality.in_(match.values)
    return or_(in_stored, exists().where(series.study_pk == Study.id, in_series).correlate(Study))


def _escaped(value: str) -> str:
    return "".join(_ESCAPE + c if c in "%_" + _ESCAPE else c for c in value)


def _check_values(keyword: str, attribute_kind: str, kind: str, values: tuple[str, ...]) -> None:
    expected = 2 if kind == "range" else None if kind.endswith("list") else 1
    if (expected and len(values) != expected) or not values:
        raise InvalidQuery(f"{keyword}: {kind} matching takes {expected or 'at least one'} value(s)")
    if any(len(v) > _MAX_VALUE for v in values):
        raise InvalidQuery(f"{keyword}: value longer than {_MAX_VALUE} characters")
    if kind == "range" and not any(values):
        raise InvalidQuery(f"{keyword}: a range needs at least one bound")
    for value in values:
        if value or kind != "range":
            _check_value(keyword, attribute_kind, value)
    if kind == "range" and all(values) and _sortable(attribute_kind, values[0]) > _sortable(attribute_kind, values[1]):
        raise InvalidQuery(f"{keyword}: range {values[0]}-{values[1]} ends before it starts")


def _check_value(keyword: str, attribute_kind: str, value: str) -> None:
    problem = ""
    if attribute_kind == "date":
        problem = "" if _is_date(value) else "is not a date (YYYYMMDD)"
    elif attribute_kind == "time":
        problem = "" if _TIME.fullmatch(value) else "is not a time (HH[MM[SS[.FFFFFF]]])"
    elif attribute_kind == "uid":
        problem = "" if is_valid_uid(value) else "is not a valid DICOM UID"
    elif attribute_kind == "number":
        problem = "" if re.fullmatch(r"[+-]?[0-9]{1,10}", value) and abs(int(value)) < 2**31 else "is not an integer"
    elif not value or any(ord(c) < 32 for c in value):
        problem = "is empty or holds control characters"
    if problem:
        raise InvalidQuery(f"{keyword}: {value[:80]!r} {problem}")


def _is_date(value: str) -> bool:
    if not re.fullmatch(r"[0-9]{8}", value):
        return False
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _sortable(attribute_kind: str, value: str) -> str:
    return value + "000000.000000"[len(value) :] if attribute_kind == "time" else value


# --- rows -------------------------------------------------------------------------------

_STUDY_COLUMNS = (
    Study.study_uid,
    Study.study_date,
    Study.study_time,
    Study.accession_number,
    Study.study_id,
    Study.description.label("study_description"),
    Study.referring_physician,
    Study.modalities,
    Study.pacs_series_count,
    Study.pacs_instance_count.label("study_pacs_instance_count"),
    Patient.name.label("patient_name"),
    Patient.patient_id,
    Patient.issuer,
    Patient.birth_date,
    Patient.sex,
)
_SERIES_COLUMNS = (
    Series.series_uid,
    Series.modality,
    Series.series_number,
    Series.description.label("series_description"),
    Series.body_part,
)
_INSTANCE_COLUMNS = (
    Instance.sop_uid,
    Instance.sop_class_uid,
    Instance.instance_number,
    Instance.rows,
    Instance.columns,
    Instance.number_of_frames,
    Instance.transfer_syntax_uid,
    Instance.file_path.is_not(None).label("held"),
)


@dataclass
class _Tally:
    """What the index rows say of one study: its series, their modalities and instance counts."""

    series_instances: dict[int, int] = field(default_factory=dict)
    modalities: set[str] = field(default_factory=set)


def _tallies(session: Session, study_pks: Iterable[int]) -> dict[int, _Tally]:
    """Per study on the page: instances per series (counted, or the PACS's count when none indexed)."""
    counted = session.execute(
        select(Series.study_pk, Series.id, Series.modality, Series.pacs_instance_count, func.count(Instance.id))
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(sorted(study_pks)))
        .group_by(Series.study_pk, Series.id, Series.modality, Series.pacs_instance_count)
    )
    tallies: dict[int, _Tally] = {}
    for study_pk, series_pk, modality, pacs_count, count in counted:
        tally = tallies.setdefault(study_pk, _Tally())
        tally.series_instances[series_pk] = count or pacs_count or 0
        if modality:
            tally.modalities.add(modality)
    return tallies


def _row(level: Level, row: RowMapping, tallies: dict[int, _Tally], studies: dict[int, StudyRow]) -> Row:
    tally = tallies.get(row["study_pk"], _Tally())
    study = studies.get(row["study_pk"])
    if study is None:
        study = studies[row["study_pk"]] = _study_row(row, tally)
    if level == "study":
        return study
    series = SeriesRow(
        study=study,
        series_uid=row["series_uid"],
        modality=row["modality"],
        series_number=row["series_number"],
        description=row["series_description"],
        body_part=row["body_part"],
        instance_count=tally.series_instances.get(row["series_pk"]),
    )
    if level == "series":
        return series
    return InstanceRow(
        series=series,
        sop_uid=row["sop_uid"],
        sop_class_uid=row["sop_class_uid"],
        instance_number=row["instance_number"],
        rows=row["rows"],
        columns=row["columns"],
        number_of_frames=row["number_of_frames"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        held=bool(row["held"]),
    )


def _study_row(row: RowMapping, tally: _Tally) -> StudyRow:
    """Counts from the index rows; the PACS's counts when the index holds no series (or no instances)."""
    instances = sum(tally.series_instances.values())
    stored = {m for m in row["modalities"].split("\\") if m}
    return StudyRow(
        study_uid=row["study_uid"],
        study_date=row["study_date"],
        study_time=row["study_time"],
        accession_number=row["accession_number"],
        study_id=row["study_id"],
        description=row["study_description"],
        referring_physician=row["referring_physician"],
        modalities=tuple(sorted(stored | tally.modalities)),
        patient_name=row["patient_name"],
        patient_id=row["patient_id"],
        issuer=row["issuer"],
        birth_date=row["birth_date"],
        sex=row["sex"],
        series_count=len(tally.series_instances) or row["pacs_series_count"],
        instance_count=instances or row["study_pacs_instance_count"],
    )


def _opened(source: Source) -> AbstractContextManager[Session]:
    return source.session() if isinstance(source, IndexRepository) else nullcontext(source)

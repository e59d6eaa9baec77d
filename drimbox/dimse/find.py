"""C-FIND against a PACS (Study Root), resilient to match limits and dropped associations.

A PACS may cap the matches it returns (Orthanc's LimitFindResults, most vendor PACS) or drop an
association in the middle of a long answer. A study query over a date range is therefore split
in two whenever it comes back capped (as many matches as the PACS allows, or a capped status),
down to one day and then to ever narrower StudyTime ranges of that day; each query is retried
on a fresh association before giving up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.dataset import Dataset
from pynetdicom import build_context

from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.contexts import FIND_MODEL
from drimbox.errors import PeerUnreachable, QueryFailed

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
OUT_OF_RESOURCES = (0xA700, 0xA701, 0xA702)
# Orthanc ends a capped answer with "Matching terminated due to Cancel" after sending the matches.
CANCELLED = 0xFE00

STUDY_KEYS = (
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_KEYS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)  # fmt: skip
IMAGE_KEYS = (
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    "AvailableTransferSyntaxUID",
)  # fmt: skip


class TooManyMatches(QueryFailed):
    """The PACS answered with as many matches as it allows: the answer may be truncated."""

    def __init__(self, message: str, matches: list[Dataset] | None = None) -> None:
        super().__init__(message)
        self.matches = matches or []


@dataclass
class QueryStats:
    """How many C-FIND requests went out, per level; how many were retried or split."""

    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    splits: int = 0
    truncated: int = 0


class PacsQuery:
    """Study Root C-FIND to one peer."""

    def __init__(self, connector: PeerConnector, peer: str, attempts: int = 3, backoff: float = 0.5) -> None:
        self.connector = connector
        self.peer = peer
        self.limit = connector.peers[peer].max_find_matches
        self.attempts = attempts
        self.backoff = backoff
        self.stats = QueryStats()

    def find(self, level: str, identifier: Dataset) -> list[Dataset]:
        """All matches of one C-FIND, retried on a fresh association when it breaks."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._find_once(level, identifier)
            except (PeerUnreachable, QueryFailed) as exc:
                if isinstance(exc, TooManyMatches) or attempt == self.attempts:
                    raise
                self.stats.retries += 1
                log.warning(
                    "C-FIND retried",
                    extra={"event": "cfind.retry", "peer": self.peer, "query_level": level, "reason": str(exc)},
                )
                time.sleep(self.backoff * attempt)
        raise AssertionError("unreachable")

    def _find_once(self, level: str, identifier: Dataset) -> list[Dataset]:
        self.stats.requests[level] += 1
        identifier.QueryRetrieveLevel = level
        matches: list[Dataset] = []
        context = build_context(FIND_MODEL)
        with self.connector.associate(self.peer, [context]) as assoc:
            for status, match in assoc.send_c_find(identifier, FIND_MODEL):
                code = status.get("Status") if status is not None else None
                if code is None:
                    raise QueryFailed(f"{self.peer}: association lost during C-FIND at {level} level")
                if code in PENDING:
                    if match is not None:
                        matches.append(match)
                    continue
                if code == 0x0000:
                    break
                if code in OUT_OF_RESOURCES or code == CANCELLED:
                    raise TooManyMatches(f"{self.peer}: answer capped (0x{code:04X}) at {level} level", matches)
                raise QueryFailed(f"{self.peer}: C-FIND at {level} level failed with status 0x{code:04X}")
        if self.limit is not None and len(matches) >= self.limit:
            raise TooManyMatches(f"{self.peer}: {len(matches)} matches reach the PACS's limit", matches)
        return matches

    # --- levels -------------------------------------------------------------------------

    def studies(self, first: date | None, last: date | None, on_batch: Callable[[list[Dataset]], None]) -> None:
        """Every study dated within [first, last] (None: unbounded), delivered in batches."""
        self._studies_in(first, last, on_batch)

    def _studies_in(self, first: date | None, last: date | None, on_batch: Callable[[list[Dataset]], None]) -> None:
        try:
            on_batch(self.find("STUDY", _study_identifier(_date_range(first, last))))
            return
        except TooManyMatches:
            if first is None or last is None:
                first = first or date(1900, 1, 1)
                last = last or date.today() + timedelta(days=1)
            elif first == last:
                self._day_in_slices(first, on_batch)
                return
        self.stats.splits += 1
        middle = first + (last - first) // 2
        self._studies_in(first, middle, on_batch)
        self._studies_in(middle + timedelta(days=1), last, on_batch)

    def _day_in_slices(
        self, day: date, on_batch: Callable[[list[Dataset]], None], first: int = 0, last: int = 86399
    ) -> None:
        """One day's studies, bisecting the StudyTime range while answers come back capped."""
        self.stats.splits += 1
        identifier = _study_identifier(day.strftime("%Y%m%d"))
        identifier.StudyTime = f"{_hhmmss(first)}-{_hhmmss(last)}"
        try:
            on_batch(self.find("STUDY", identifier))
            return
        except TooManyMatches as exc:
            if last - first < 60:
                # Nothing narrower to ask: keep what came back and say so.
                self.stats.truncated += 1
                log.error(
                    "C-FIND truncated",
                    extra={"event": "cfind.truncated", "peer": self.peer, "day": str(day), "reason": str(exc)},
                )
                on_batch(exc.matches)
                return
        middle = (first + last) // 2
        self._day_in_slices(day, on_batch, first, middle)
        self._day_in_slices(day, on_batch, middle + 1, last)

    def series(self, study_uid: str) -> list[Dataset]:
        identifier = Dataset()
        identifier.StudyInstanceUID = study_uid
        for key in SERIES_KEYS:
            setattr(identifier, key, None)
        return self._all_or_truncated("SERIES", identifier)

    def _all_or_truncated(self, level: str, identifier: Dataset) -> list[Dataset]:
        """Series and instances cannot be split by date: keep a capped answer, and count it."""
        try:
            return self.find(level, identifier)
        except TooManyMatches as exc:
            self.stats.truncated += 1
            log.error("C-FIND truncated", extra={"event": "cfind.truncated", "peer": self.peer,
                                                 "query_level": level, "reason": str(exc)})  # fmt: skip
            return exc.matches

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[Dataset]:
        identifier = Dataset()
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid or None
        for key in IMAGE_KEYS:
            setattr(identifier, key, None)
        return self._all_or_truncated("IMAGE", identifier)


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _date_range(first: date | None, last: date | None) -> str:
    if first is None and last is None:
        return ""
    low = first.strftime("%Y%m%d") if first else ""
    high = last.strftime("%Y%m%d") if last else ""
    return low if low == high else f"{low}-{high}"


def _study_identifier(date_range: str) -> Dataset:
    identifier = Dataset()
    for key in STUDY_KEYS:
        setattr(identifier, key, None)
    identifier.StudyDate = date_range or None
    return identifier

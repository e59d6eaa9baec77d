"""How an instance file becomes part of our store and index, whoever brought it.

The DIMSE boundary (C-STORE SCP, C-GET sub-operations) and later STOW-RS hand a received file
here. Order matters: check the file, rename it into place, then index it; if indexing fails the
file is removed again, so the store never holds a file the index does not know and the index
never points at a file that is not complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from drimbox.errors import InstanceMismatch, InvalidInstance
from drimbox.index.records import (
    SERIES_KEYWORDS,
    SHAPE_KEYWORDS,
    STUDY_KEYWORDS,
    ImageShape,
    InstanceEntry,
    InstanceRecord,
    SeriesRecord,
    StoredFile,
    StudyRecord,
    image_shape,
)
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.store import metadata
from drimbox.store.files import DataSetStart, InspectedFile, InstanceStore

log = logging.getLogger(__name__)
R = TypeVar("R")


def _entry(inspected: InspectedFile, final: Path) -> InstanceEntry:
    """The index entry of a checked file, built before the file is placed (it may still refuse)."""
    ds = inspected.dataset
    try:
        return InstanceEntry(
            study=_remembered(_STUDIES, _STUDY_TAGS, inspected, StudyRecord.from_dataset),
            series=_remembered(_SERIES, _SERIES_TAGS, inspected, SeriesRecord.from_dataset),
            instance=InstanceRecord.from_dataset(
                ds,
                inspected.transfer_syntax_uid,
                inspected.sop_uid,
                inspected.sop_class_uid,
                _remembered(_SHAPES, _SHAPE_TAGS, inspected, image_shape),  # a series' images share it
            ),
            file=StoredFile(str(final), inspected.size),
        )
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises widely on malformed values it deferred
        raise InvalidInstance(f"unreadable attribute: {exc.__class__.__name__}: {exc}") from exc


_STUDY_TAGS = tuple(Tag(keyword) for keyword in (*STUDY_KEYWORDS, "SpecificCharacterSet"))
_SERIES_TAGS = tuple(Tag(keyword) for keyword in (*SERIES_KEYWORDS, "SpecificCharacterSet"))
_SHAPE_TAGS = tuple(Tag(keyword) for keyword in SHAPE_KEYWORDS)
_STUDIES: dict[tuple[object, ...], StudyRecord] = {}
_SERIES: dict[tuple[object, ...], SeriesRecord] = {}
_SHAPES: dict[tuple[object, ...], ImageShape] = {}
_REMEMBERED = 1024


def _remembered(memo: dict[tuple[object, ...], R], tags: tuple[BaseTag, ...], inspected: InspectedFile,
                build: Callable[[Dataset], R]) -> R:  # fmt: skip
    """The record of the last instance whose attributes `tags` held the same bytes, else a new one.

    The instances of a series repeat their patient, study and series attributes, and mostly the
    shape of their images: converting them with pydicom again cost ~1 ms of every CT slice.
    """
    key = _raw_key(inspected.elements, tags)
    record = memo.get(key) if key is not None else None
    if record is None:
        record = build(inspected.dataset)
        if key is not None:
            if len(memo) >= _REMEMBERED:
                memo.clear()
            memo[key] = record
    return record


def _raw_key(elements: Mapping[BaseTag, object], tags: tuple[BaseTag, ...]) -> tuple[object, ...] | None:
    """The values of `tags` as read (bytes, before any conversion); None if one is not at hand."""
    key: list[object] = []
    for tag in tags:
        element = elements.get(tag)
        if element is None:
            key.append(None)
        elif isinstance(element, RawDataElement) and element.value is not None:
            key.append((element.VR, element.is_little_endian, element.is_implicit_VR, element.value))
        elif isinstance(element, DataElement) and element.VR == "CS":  # SpecificCharacterSet: pydicom reads it at once
            key.append(("CS", str(element.value)))
        else:
            return None  # deferred (too long to have been read) or already converted
    return tuple(key)


@dataclass(frozen=True)
class CheckedFile:
    """A received file proven complete and valid, with its place in the store and its index entry."""

    received: Path
    inspected: InspectedFile
    final: Path
    entry: InstanceEntry


class InstanceIntake:
    """Admits received instance files into the store and the index."""

    def __init__(
        self, store: InstanceStore, index: IndexRepository, audit: AuditTrail, public_prefix: str = ""
    ) -> None:
        self.store = store
        self.index = index
        self.audit = audit
        self.public_prefix = public_prefix

    def admit(
        self,
        received: Path,
        *,
        sender: str,
        peer: str = "",
        expected_sop_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        audited: bool = True,
    ) -> InstanceEntry:
        """Check, place and index `received`; raise InvalidInstance (file removed) if it is not valid.

        `audited=False` for an instance of our own retrieval: the retrieval leaves one record for
        the whole study (`study.retrieved`, with its counts) instead of one per instance, which
        cost more than a millisecond of each C-STORE. A refused instance is always recorded.
        """
        checked = self.check(
            received, sender=sender, expected_sop_uid=expected_sop_uid, expected_sop_class_uid=expected_sop_class_uid
        )
        [entry] = self.place([checked], sender=sender, peer=peer, audited=audited)
        return entry

    def check(
        self,
        received: Path,
        *,
        sender: str,
        expected_sop_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        start: DataSetStart | None = None,
    ) -> CheckedFile:
        """Read and check a received file and build its index entry; raise InvalidInstance (file removed).

        `start`: where its data set begins, when the receiver wrote the file meta itself.
        """
        try:
            inspected = self.store.inspect(received, start)
            if expected_sop_uid and inspected.sop_uid != expected_sop_uid:
                raise InstanceMismatch(
                    f"SOPInstanceUID {inspected.sop_uid} differs from the request's {expected_sop_uid}"
                )
            if expected_sop_class_uid and inspected.sop_class_uid != expected_sop_class_uid:
                raise InstanceMismatch(
                    f"SOPClassUID {inspected.sop_class_uid} differs from the request's {expected_sop_class_uid}"
                )
            final = self.store.path_for(inspected.study_uid, inspected.series_uid, inspected.sop_uid)
            return CheckedFile(received, inspected, final, _entry(inspected, final))
        except InvalidInstance as exc:
            received.unlink(missing_ok=True)
            log.warning("instance refused", extra={"event": "instance.refused", "peer": sender, "reason": str(exc)})
            self.audit.record(AuditEvent("instance.stored", sender, "failure", detail={"reason": str(exc)}))
            raise

    def place(
        self, batch: Sequence[CheckedFile], *, sender: str, peer: str = "", audited: bool = True
    ) -> list[InstanceEntry]:
        """Move checked files into the store and index them, all in one index transaction.

        All or nothing: if placing or indexing fails, no new file of the batch stays (a file that
        replaced an earlier copy of its instance is complete, and still what the index points at).
        A batch is what a retrieval's admissions found waiting: one transaction for up to 32
        instances instead of one each (~0.5 ms of SQLAlchemy and SQLite per instance).
        """
        documents = [self._document(item.inspected) for item in batch]
        placed: list[tuple[CheckedFile, bool]] = []
        try:
            for item in batch:
                replacing = item.final.exists()
                self.store.admit(item.received, item.final)
                placed.append((item, replacing))
            self.index.record_stored_many([item.entry for item in batch], peer, documents)
        except BaseException:
            for item, replacing in placed:
                if not replacing:
                    item.final.unlink(missing_ok=True)
            for item in batch[len(placed) :]:
                item.received.unlink(missing_ok=True)
            raise
        for item, replacing in placed:
            item.inspected.dataset.filename = str(item.final)  # values pydicom deferred are now read from here
            if replacing:  # offsets of the previous copy no longer hold
                item.final.with_suffix(".frames.json").unlink(missing_ok=True)
            if audited:
                self._audit_stored(item, sender)
        return [item.entry for item in batch]

    def _audit_stored(self, item: CheckedFile, sender: str) -> None:
        entry = item.entry
        self.audit.record(
            AuditEvent(
                "instance.stored",
                sender,
                patient_id=entry.study.patient.patient_id,
                study_uid=entry.study.study_uid,
                detail={"sop_uid": entry.instance.sop_uid, "bytes": item.inspected.size},
            )
        )

    def _document(self, inspected: InspectedFile) -> bytes | None:
        """The instance's WADO-RS metadata, computed now so no request ever parses the file for it.

        A failure here does not refuse the instance: its metadata is computed on first request.
        """
        if not self.public_prefix:
            return None
        # (relative BulkDataURIs: made absolute with the public base URL when served)
        base = metadata.instance_base("", inspected.study_uid, inspected.series_uid, inspected.sop_uid)
        try:
            return metadata.document(inspected.dataset, base, inspected.elements)
        except Exception as exc:
            log.warning("metadata not computed", extra={"event": "metadata.failed", "reason": str(exc)})
            return None

"""Instance files on disk: complete or absent, never half-written.

Files arrive in `incoming/` (pynetdicom's chunked receive writes there), are checked, then
renamed into `store/<study>/<series>/<sop>.dcm`. A rename on one filesystem is atomic, so a
reader or a restart sees either the whole file or nothing. UIDs are validated before they become
path components; nothing else from outside ever does.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from drimbox.errors import InvalidInstance, StoreError, StoreFull
from drimbox.uids import checked_uid


@dataclass(frozen=True)
class DataSetStart:
    """Where the data set of a file we wrote ourselves begins, and in which transfer syntax: what
    its file meta group says, known to the writer (dimse/suboperations.py) without reading it.

    Reading the preamble and file meta through pydicom cost a third of parsing a CT slice's header.
    """

    offset: int
    transfer_syntax_uid: str


@dataclass(frozen=True)
class InspectedFile:
    """The header of a received file, checked to be a complete DICOM instance."""

    dataset: Dataset
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    size: int
    #: The elements as read, before any value was converted (keys the metadata memo).
    elements: Mapping[BaseTag, DataElement | RawDataElement] = field(default_factory=dict)


class InstanceStore:
    """The folder tree of instance files."""

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.root = folder / "store"
        self.incoming = folder / "incoming"
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def clean_incoming(self, older_than: float = 0.0) -> int:
        """Remove files left in `incoming/` by interrupted transfers; return how many.

        `older_than` (seconds since last written) spares transfers another process (the daemon,
        beside a CLI command) is still writing: a live transfer's file changes every moment.
        """
        removed = 0
        limit = time.time() - older_than
        for leftover in self.incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if leftover.is_file() and leftover.stat().st_mtime <= limit:
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / checked_uid(study_uid, "StudyInstanceUID")
            / checked_uid(series_uid, "SeriesInstanceUID")
            / f"{checked_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def inspect(self, path: Path, start: DataSetStart | None = None) -> InspectedFile:
        """Read the header of `path` and prove the file is complete; raise InvalidInstance if not.

        `start`: where the data set begins, for a file whose meta group we wrote (else read from it).
        """
        try:
            size = path.stat().st_size
            ds = _read_header(path, size, start)
            elements = dict(ds.items())  # as read: pydicom's get_item(tag, keep_deferred=True) of each
            syntax = checked_uid(str(ds.file_meta.get("TransferSyntaxUID", "")), "TransferSyntaxUID")
            if syntax != DeflatedExplicitVRLittleEndian:  # (checked within the inflated stream when read)
                for element in elements.values():
                    _check_within(element, size)
            return InspectedFile(
                dataset=ds,
                transfer_syntax_uid=syntax,
                study_uid=_uid(ds, elements, "StudyInstanceUID"),
                series_uid=_uid(ds, elements, "SeriesInstanceUID"),
                sop_uid=_uid(ds, elements, "SOPInstanceUID"),
                sop_class_uid=_uid(ds, elements, "SOPClassUID"),
                size=size,
                elements=elements,
            )
        except InvalidInstance:
            raise
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInstance(f"not a readable DICOM instance: {exc.__class__.__name__}: {exc}") from exc
        except Exception as exc:  # pydicom raises a wide range on hostile input
            raise InvalidInstance(f"not a readable DICOM instance: {exc.__class__.__name__}: {exc}") from exc

    def admit(self, received: Path, final: Path) -> Path:
        """Move a checked file into its place in the store (`final`, from `path_for`) and return it."""
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                with open(received, "rb") as handle:
                    os.fsync(handle.fileno())
            try:
                os.replace(received, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # incoming/ is on another filesystem: copy next to the final place, then rename
                descriptor, partial = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".part")
                os.close(descriptor)
                shutil.copyfile(received, partial)
                os.replace(partial, final)
                received.unlink(missing_ok=True)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreFull("no space left in the store folder") from exc
            raise StoreError(f"cannot place the instance in the store: {exc}") from exc
        return final

    def remove(self, paths: list[str]) -> None:
        """Delete files the index no longer refers to (only below our root)."""
        root = self.root.resolve()
        for name in paths:
            path = Path(name).resolve()
            if path.is_relative_to(root):
                path.unlink(missing_ok=True)
                path.with_suffix(".meta.gz").unlink(missing_ok=True)  # metadata of stores before 0006
                path.with_suffix(".frames.json").unlink(missing_ok=True)


#: Files up to this size are parsed in memory (one read instead of a seek and a read per
#: element: ~130 system calls of a CT slice); larger ones (mammograms, tomosynthesis) are parsed
#: from the file. Of a file above `_HEAD`, only its head is read when its last element (the pixel
#: data, always in practice) is a deferred value that ends the file exactly.
_READ_WHOLE = 1 << 20
_HEAD = 1 << 16


def _read_header(path: Path, size: int, start: DataSetStart | None = None) -> Dataset:
    """The data set of `path`, values above 1 KiB deferred (read from the file on access), or all
    read if it is deflated.

    Where the data set begins and its transfer syntax are known first (`start`, or the file meta
    read as pydicom reads it): a deflated one is never handed to pydicom, which would inflate it
    whole in memory, however large.
    """
    with open(path, "rb") as handle:
        data = handle.read(_HEAD if size > _HEAD else size + 1)
        if start is None:
            start = _meta_start(data, handle)
        elif int.from_bytes(data[start.offset : start.offset + 2], "little") == 0x0002:
            raise InvalidInstance("the data set holds file meta elements (group 0002)")
        if start.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            return _read_inflated(handle, start.offset)
        if size > _READ_WHOLE:
            return dcmread(path, defer_size=1024)
        if size <= _HEAD and len(data) != size:
            raise InvalidInstance(f"the file changed while read ({len(data)} of {size} bytes)")
        ds = _parse(data, path, start)
        if size > _HEAD and not _ends_with_deferred(ds, size):
            handle.seek(0)
            data = handle.read(size + 1)
            if len(data) != size:
                raise InvalidInstance(f"the file changed while read ({len(data)} of {size} bytes)")
            ds = _parse(data, path, start)
    return ds


#: The most a deflated data set may inflate to; beyond, the instance is refused.
DEFLATED_MAX = 128 << 20


def read_deflated(path: Path) -> Dataset | None:
    """The data set of a deflated instance file, every value read (inflated within `DEFLATED_MAX`,
    as at admission); None if the file is in another transfer syntax."""
    with open(path, "rb") as handle:
        start = _meta_start(handle.read(_HEAD), handle)
        if start.transfer_syntax_uid != DeflatedExplicitVRLittleEndian:
            return None
        return _read_inflated(handle, start.offset)


def _meta_start(head: bytes, handle: BinaryIO) -> DataSetStart:
    """Where pydicom's dcmread begins the data set, and the syntax it reads it in: past the
    preamble and the group 0002 elements after it (from the file if they go on past `head`)."""
    stream = io.BytesIO(head)
    start = _after_meta(stream)
    if stream.tell() >= len(head) - 8:
        handle.seek(0)
        start = _after_meta(handle)
    return start


def _after_meta(stream: BinaryIO) -> DataSetStart:
    read_preamble(stream, False)  # (InvalidDicomError without the DICM prefix)
    meta = read_dataset(stream, False, True, stop_when=lambda tag, _vr, _length: tag.group != 0x0002)
    return DataSetStart(stream.tell(), str(meta.get("TransferSyntaxUID", "")))


def _read_inflated(handle: BinaryIO, offset: int) -> Dataset:
    """The deflated data set at `offset`, inflated in memory and every value read: values left in
    the file could not be read back from it (their positions are the inflated stream's). The
    inflated size is bounded step by step: a few KiB of deflate may announce GiB."""
    handle.seek(offset)
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), bytearray()
    while not inflater.eof and (chunk := handle.read(1 << 16)):
        while chunk:
            inflated += inflater.decompress(chunk, 1 << 20)
            if len(inflated) > DEFLATED_MAX:
                raise InvalidInstance(f"the deflated data set inflates beyond {DEFLATED_MAX >> 20} MiB")
            chunk = inflater.unconsumed_tail
    if not inflater.eof:
        raise InvalidInstance("truncated: the deflated data set ends before its deflate stream does")
    stream = io.BytesIO(inflated)
    size = len(inflated)
    del inflated
    dataset = read_dataset(stream, False, True)
    for _, element in dataset.items():
        _check_within(element, size)  # (within the inflated stream: its lengths are its own)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = FileDataset(stream, dataset, None, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)  # as dcmread's read_partial ends
    return ds


def _parse(data: bytes, path: Path, start: DataSetStart) -> Dataset:
    encoding = _plain_encoding(start, data)
    if encoding is not None:
        stream = io.BytesIO(data)
        stream.seek(start.offset)  # (value positions stay the file's: deferred values are read from it)
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(start.transfer_syntax_uid)
        dataset = read_dataset(stream, encoding, True, defer_size=1024)
        ds: Dataset = FileDataset(stream, dataset, None, meta, encoding, True)
        ds.set_original_encoding(encoding, True, dataset._character_set)  # as dcmread's read_partial ends
    else:
        ds = dcmread(io.BytesIO(data), defer_size=1024)
    # As dcmread(path) leaves it: deferred values are read from the file (FileDataset attributes).
    ds.filename, ds.fileobj_type, ds.buffer, ds.timestamp = str(path), open, None, None
    return ds


def _plain_encoding(start: DataSetStart, data: bytes) -> bool | None:
    """Whether the data set at `start` is implicit VR (True) or explicit (False), both little
    endian; None to read the file as pydicom does (a big endian data set, a private transfer
    syntax, command elements first, or not the file `start` describes)."""
    if data[128:132] != b"DICM" or not 144 <= start.offset < len(data) - 1:
        return None
    if int.from_bytes(data[start.offset : start.offset + 2], "little") <= 0x0002:  # (command or meta elements)
        return None
    syntax = UID(start.transfer_syntax_uid)
    if not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
        return None
    return bool(syntax.is_implicit_VR)


def _ends_with_deferred(ds: Dataset, size: int) -> bool:
    """Whether parsing a head of the file saw all of it: its last element was deferred (skipped,
    not read) and ends exactly where the file does. Anything else is parsed again, whole."""
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(tags[-1], keep_deferred=True)
    return (
        isinstance(last, RawDataElement)
        and last.value is None
        and last.length != 0xFFFFFFFF
        and last.value_tell + last.length == size
    )


def write_atomically(target: Path, data: bytes, work: Path | None = None) -> None:
    """Write `target` whole or not at all: a partial file in `work` (the store's incoming/, cleaned
    at start; default: beside `target`), then a rename."""
    descriptor, partial = tempfile.mkstemp(dir=work or target.parent, prefix=".", suffix=".part")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(partial, target)


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_UID_TAGS = {keyword: Tag(keyword) for keyword in _UID_KEYWORDS}


def _uid(ds: Dataset, elements: Mapping[BaseTag, DataElement | RawDataElement], keyword: str) -> str:
    """A UID element's value, checked. Its bytes are ASCII digits and dots or invalid, so they
    need no conversion through pydicom: ~15 µs each, four per instance received. One declared
    with another VR (explicit VR) goes through pydicom, and is refused."""
    raw = elements.get(_UID_TAGS[keyword])
    if type(raw) is RawDataElement and raw.VR in ("UI", None) and isinstance(raw.value, bytes):
        try:
            return checked_uid(raw.value.decode("ascii"), keyword)
        except UnicodeDecodeError:
            raise InvalidInstance(f"{keyword} is not ASCII") from None
    return checked_uid(ds.get(keyword), keyword)


def _check_within(elem: object, size: int) -> None:
    """Every value must lie inside the file: catches truncation, in a value pydicom deferred (not
    read) as in a short one it read (pydicom keeps the bytes there were, without a word)."""
    if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
        return
    if elem.value_tell + elem.length > size:
        raise InvalidInstance(f"truncated: element {elem.tag} ends past the end of the file")

"""WADO-RS metadata (DICOM JSON, PS3.18 F.2), computed once per instance and kept gzipped.

The JSON is built when an instance enters the store, from the real file, and saved gzipped in
the index (`instance_metadata`) with the instance's row: serving metadata never re-parses a
pixel file. Values too large to inline (pixel data, big binary elements) become BulkDataURIs.
They are saved relative to the DICOMweb service (`/studies/...`) and made absolute when served
(`with_prefix`), from the configured public base URL, never from a request: a change of that
URL applies to what is already stored. A series' or study's metadata is the array of its
instances' documents.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)
_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
_AMBIGUOUS = frozenset({"US or SS", "OB or OW", "US or OW", "US or SS or OW"})
_MEMO: dict[tuple[object, ...], str] = {}  # in use order: least recently used first
_MEMO_LOCK = threading.Lock()
_MEMO_ENTRIES = 8192
_MEMO_VALUE_BYTES = 256
_MEMO_SEQUENCE_BYTES = 1024  # (at most ~8192 × 3 KiB with its JSON)

Element = DataElement | RawDataElement


def instance_base(public_prefix: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The instance's URL under the configured public DICOMweb prefix."""
    return f"{public_prefix}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def metadata_json(ds: Dataset, base_url: str) -> dict[str, Any]:
    """The DICOM JSON of `ds` as a dict (see `metadata_text`)."""
    result: dict[str, Any] = json.loads(metadata_text(ds, base_url))
    return result


def metadata_text(ds: Dataset, base_url: str, elements: Mapping[BaseTag, Element] | None = None) -> str:
    """The DICOM JSON of `ds` (read with deferred values); bulk values become BulkDataURIs.

    `elements` are the data set's elements as read, before any was converted (InstanceStore.inspect
    keeps them): their raw bytes key the memo of encoded elements. Default: the data set's own.
    """
    if elements is None:
        elements = {tag: ds.get_item(tag, keep_deferred=True) for tag in ds.keys()}  # noqa: SIM118
    charset = _charset_key(elements.get(_SPECIFIC_CHARACTER_SET))
    parts = []
    for tag, raw in elements.items():
        if raw is None:
            continue
        key = f"{int(tag):08X}"
        vr = _vr_of(ds, raw, tag)
        if _is_bulk(raw, vr):
            parts.append(f'"{key}":{{"vr":"{vr}","BulkDataURI":{json.dumps(f"{base_url}/bulkdata/{key}")}}}')
        else:
            parts.append(f'"{key}":{_element_text(ds, raw, tag, vr, charset)}')
    return "{" + ",".join(parts) + "}"


def _element_text(ds: Dataset, raw: Element, tag: BaseTag, vr: str, charset: object) -> str:
    """One element's JSON, from the memo when the same bytes were encoded before.

    A series repeats most of its header from instance to instance (patient, study, equipment,
    acquisition): converting each value with pydicom and encoding it again cost ~2 ms of every
    CT slice received. The memo is keyed by everything the JSON depends on (tag, VR, byte order,
    raw bytes, character set) and holds only short values whose meaning does not depend on other
    elements: no private or ambiguous VR, and sequences only in explicit VR (where every nested
    element carries its own VR). Least recently used entries go first.
    """
    memo_key = _memo_key(raw, tag, vr, charset)
    if memo_key is not None:
        with _MEMO_LOCK:
            text = _MEMO.pop(memo_key, None)
            if text is not None:
                _MEMO[memo_key] = text  # now the most recently used
                return text
    try:
        text = json.dumps(ds[tag].to_json_dict(None, BULK_THRESHOLD * 64), separators=(",", ":"), ensure_ascii=False)
    except Exception as exc:  # a malformed value must not cost the instance its metadata
        key = f"{int(tag):08X}"
        log.warning("unencodable element", extra={"event": "metadata.element", "tag": key, "reason": str(exc)})
        return json.dumps({"vr": vr})
    if memo_key is not None:
        with _MEMO_LOCK:
            if len(_MEMO) >= _MEMO_ENTRIES:
                del _MEMO[next(iter(_MEMO))]
            _MEMO[memo_key] = text
    return text


def _memo_key(raw: Element, tag: BaseTag, vr: str, charset: object) -> tuple[object, ...] | None:
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return None
    if vr == "SQ":
        if raw.is_implicit_VR or len(raw.value) > _MEMO_SEQUENCE_BYTES:
            return None
    elif len(raw.value) > _MEMO_VALUE_BYTES or vr == "UN" or (raw.VR or _dictionary_vr(tag)) in _AMBIGUOUS:
        return None
    if tag.group & 1:
        return None
    return (int(tag), vr, raw.is_little_endian, raw.is_implicit_VR, raw.value, charset)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _charset_key(element: Element | None) -> object:
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        return element.value
    return str(element.value)


def _vr_of(ds: Dataset, raw: DataElement | RawDataElement, tag: BaseTag) -> str:
    vr = raw.VR
    if vr and vr not in ("US or SS", "OB or OW", "US or OW", "US or SS or OW"):
        return str(vr)
    if int(tag) == PIXEL_DATA:
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        native = syntax in _NATIVE_SYNTAXES
        return "OW" if native and int(ds.get("BitsAllocated", 16)) > 8 else "OB"
    try:
        found = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return "OW" if " or " in found else found


def _is_bulk(raw: DataElement | RawDataElement, vr: str) -> bool:
    if vr == "SQ":
        return False  # PS3.18 F.2: sequences are always inlined (functional groups of enhanced objects)
    if isinstance(raw, RawDataElement):
        if raw.value is None:  # deferred: too big to have been read
            return True
        return vr in _BULK_VRS and (raw.length == 0xFFFFFFFF or raw.length > BULK_THRESHOLD)
    return int(raw.tag) == PIXEL_DATA


def encode(text: str) -> bytes:
    """One gzip member (level 6: metadata is written once and read many times)."""
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


_RELATIVE_URI = b'"BulkDataURI":"/studies/'


def with_prefix(text: bytes, public_prefix: str) -> bytes:
    """A saved document's JSON with its relative BulkDataURIs made absolute under `public_prefix`.

    Only our own key can match: inside a JSON string every quote is escaped.
    """
    prefix = json.dumps(public_prefix)[1:-1].encode("ascii")
    return text.replace(_RELATIVE_URI, b'"BulkDataURI":"' + prefix + b"/studies/")


def document(ds: Dataset, base_url: str, elements: Mapping[BaseTag, Element] | None = None) -> bytes:
    """The metadata document of a data set, as the index keeps it (`metadata_text`, gzipped)."""
    return encode(metadata_text(ds, base_url, elements))


def file_document(instance_file: Path, base_url: str) -> bytes:
    """The metadata document of an instance file, read now (an older store, a failure at intake)."""
    return document(dcmread(instance_file, defer_size=BULK_THRESHOLD), base_url)

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
_MEMO: dict[tuple[object, ...], str] = {}  # (dict operations are atomic: no lock)
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
        memo_key = _memo_key(raw, tag, charset)
        if memo_key is not None:
            fragment = _MEMO.get(memo_key)
            if fragment is not None:
                parts.append(fragment)
                continue
        key = f"{int(tag):08X}"
        vr = _vr_of(ds, raw, tag)
        if _is_bulk(raw, vr):
            parts.append(f'"{key}":{{"vr":"{vr}","BulkDataURI":{json.dumps(f"{base_url}/bulkdata/{key}")}}}')
            continue
        fragment = f'"{key}":{_element_text(ds, tag, vr)}'
        parts.append(fragment)
        if memo_key is not None and _memorable(raw, tag, vr):
            if len(_MEMO) >= _MEMO_ENTRIES:
                _MEMO.clear()
            _MEMO[memo_key] = fragment
    return "{" + ",".join(parts) + "}"


def _element_text(ds: Dataset, tag: BaseTag, vr: str) -> str:
    """One element's JSON value, converted and encoded by pydicom."""
    try:
        return json.dumps(ds[tag].to_json_dict(None, BULK_THRESHOLD * 64), separators=(",", ":"), ensure_ascii=False)
    except Exception as exc:  # a malformed value must not cost the instance its metadata
        key = f"{int(tag):08X}"
        log.warning("unencodable element", extra={"event": "metadata.element", "tag": key, "reason": str(exc)})
        return json.dumps({"vr": vr})


def _memo_key(raw: Element, tag: BaseTag, charset: object) -> tuple[object, ...] | None:
    """The memo's key for an element, from what was read alone: found before anything is derived.

    A series repeats most of its header from instance to instance (patient, study, equipment,
    acquisition): converting each value with pydicom and encoding it again cost ~2 ms of every
    CT slice received, and deriving each element's VR and bulk status before looking it up
    another ~0.1 ms. The key holds everything an element's JSON fragment depends on (tag, VR as
    read, byte order, undefined length, raw bytes, character set); the VR is the dictionary's
    when none was read (implicit VR), so the tag stands for it. Only elements `_memorable` says
    so are stored; the others' keys are looked up in vain. The memo is emptied when full: a
    series' shared elements are encoded again once, the instances' own values are gone.
    """
    if type(raw) is not RawDataElement or raw.value is None or len(raw.value) > _MEMO_SEQUENCE_BYTES:
        return None
    if tag & 0x10000:  # a private group (odd)
        return None
    undefined_length = raw.length == 0xFFFFFFFF  # (encapsulated: always bulk, whatever its bytes)
    return (int(tag), raw.VR, raw.is_little_endian, raw.is_implicit_VR, undefined_length, raw.value, charset)


def _memorable(raw: Element, tag: BaseTag, vr: str) -> bool:
    """Short values whose meaning does not depend on other elements: no ambiguous VR, and
    sequences only in explicit VR (where every nested element carries its own VR)."""
    assert isinstance(raw, RawDataElement) and raw.value is not None
    if vr == "SQ":
        return not raw.is_implicit_VR
    return len(raw.value) <= _MEMO_VALUE_BYTES and vr != "UN" and (raw.VR or _dictionary_vr(tag)) not in _AMBIGUOUS


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

"""Schemathesis against the HTTP API, in process (ASGI, no socket): no request makes the box answer 500,
and every refusal is an RFC 9457 problem.

`build_app` publishes no OpenAPI; the test reads `app.openapi()`. That document is thin where the
routes read the raw request (QIDO-RS matching keys, rendering parameters, and the Accept,
Authorization and KOS-SOPInstanceUID headers of every DICOMweb route), so it is run three ways:

- as published, without any header: every route but /health and /status answers 401, never a crash;
- as published, with a valid token, a KOS header and sometimes Accept, If-None-Match and
  Accept-Encoding headers drawn from their grammars; path UIDs are those of a held instance four
  times in five, so requests reach the retrieve, metadata, frames, rendering and search code;
- with the query parameters the QIDO-RS and rendering routes read declared (strings), same headers.

Then instances that a peer could send, readable but odd (pixel module attributes that contradict
each other, garbage compressed frames, values pydicom cannot convert), are admitted and asked for
the way a viewer does.

The token verifier accepts one fixed token: the target is the routes' input handling, not PSC
(tests/unit/test_auth_verifiers.py covers that). The box's only PACS is a closed port.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import event, given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from schemathesis.checks import not_a_server_error
from starlette.exceptions import StarletteDeprecationWarning

from drimbox.config import load_settings
from drimbox.daemon import Node, build_app, build_node
from drimbox.errors import InvalidInstance
from tests.conftest import write_config
from tests.fuzz.damage import budget
from tests.fuzz.test_header_fuzz import accept_headers
from tests.integration.test_dicomweb_orthanc import KOS_UID, TOKEN, OneTokenVerifier
from tests.support.datasets import CT, DBT, StudySpec, build_instance, write_study
from tests.support.peers import free_port

with warnings.catch_warnings():  # Starlette prefers `httpx2` over the `httpx` we pin; the client works the same
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

PREFIX = "/dicom-web"
#: Query parameters the routes read from the raw request, declared for the third run.
QIDO_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
             "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "SeriesNumber",
             "InstanceNumber", "00100010", "includefield", "limit", "offset", "fuzzymatching", "accept")  # fmt: skip
RENDER_KEYS = ("window", "viewport", "quality")
READING_RAW = ("/studies", "/series", "/instances", "/rendered", "/thumbnail")
#: Values of the other path parameters that a viewer sends, right and wrong.
PATH_VALUES = {
    "numbers": ["1", "1,2,3", "3,1", "4", "0", "1,,2", "-1", "1,1", "99999999999999999999"],
    "number": ["1", "2", "3", "9", "0", "-1"],
    "tag": ["7FE00010", "00100010", "00280010", "7fe00010", "ZZZZ"],
}
Seen = dict[tuple[str, int], int]
ETAGS = st.sampled_from(['"x"', "*", 'W/"1"', "", '"a", "b"']) | st.text(st.characters(max_codepoint=255), max_size=20)


@dataclass
class Box:
    node: Node
    app: Any
    spec: StudySpec
    instances: list[tuple[str, str]]

    @property
    def study(self) -> str:
        return self.spec.study_uid


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    folder = tmp_path_factory.mktemp("api")
    peer = {"ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}
    node = build_node(load_settings(write_config(folder, peers={"main": peer}, dimse_port=free_port(),
                                                 http_port=free_port())))  # fmt: skip
    spec = StudySpec(series=[(CT, "CT", 2), (DBT, "MG", 1)], frames=3)
    instances: list[tuple[str, str]] = []
    for source in write_study(spec, folder / "src"):
        ds = dcmread(source, stop_before_pixels=True)
        instances.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
        received = node.store.incoming / source.name
        received.write_bytes(source.read_bytes())
        node.storage.intake.admit(received, sender="TEST")
    node.index.grant_kos(KOS_UID, spec.study_uid)
    yield Box(node, build_app(node, OneTokenVerifier()), spec, instances)
    node.close()


def _described(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with the query parameters of the QIDO-RS and rendering routes declared as strings."""
    described = copy.deepcopy(document)
    for path, operations in described["paths"].items():
        keys = QIDO_KEYS if path.endswith(READING_RAW[:3]) else RENDER_KEYS if path.endswith(READING_RAW[3:]) else ()
        for operation in operations.values():
            operation.setdefault("parameters", []).extend(
                {"name": key, "in": "query", "required": False, "schema": {"type": "string"}} for key in keys
            )
    return described


def _operations(document: dict[str, Any]) -> list[Any]:
    return [result.ok() for result in schemathesis.openapi.from_dict(document).get_all_operations()]


def _check(case: schemathesis.Case, response: Any) -> int:
    """No 500, ever; 502/503 only as problems (a PACS or verifier down); every refusal a problem body."""
    status = int(response.status_code)
    where = f"{case.method} {case.formatted_path}?{case.query} {dict(case.headers or {})}"
    assert status != 500, (where, response.text[:300])
    if status not in (502, 503):
        case.validate_response(response, checks=[not_a_server_error])
    if status >= 400:
        kind = response.headers.get("content-type", [""])[0]  # schemathesis keeps every value of a header
        assert kind == "application/problem+json", (where, response.text[:300])
        problem = json.loads(response.text)
        assert problem["status"] == status and problem["title"] and "detail" in problem, where
    return status


def _run(box: Box, document: dict[str, Any], examples: int,
         prepare: Callable[[schemathesis.Case, st.DataObject, Box], dict[str, str]]) -> Seen:  # fmt: skip
    """Every operation of `document`, `examples` cases each; the (path, status) pairs seen, counted."""
    seen: Seen = {}
    for operation in _operations(document):
        _fuzz(operation, box, examples, prepare, seen)
    return seen


def _fuzz(operation: Any, box: Box, examples: int,
          prepare: Callable[[schemathesis.Case, st.DataObject, Box], dict[str, str]], seen: Seen) -> None:  # fmt: skip
    @budget(examples)
    @given(case=operation.as_strategy(), data=st.data())
    def call(case: schemathesis.Case, data: st.DataObject) -> None:
        headers = prepare(case, data, box)
        status = _check(case, case.call(app=box.app, headers=headers, timeout=30))
        seen[operation.path, status] = seen.get((operation.path, status), 0) + 1

    call()


def _anonymous(case: schemathesis.Case, data: st.DataObject, box: Box) -> dict[str, str]:
    return {}


def _authorised(case: schemathesis.Case, data: st.DataObject, box: Box) -> dict[str, str]:
    """A valid token; the KOS header mostly right, Accept and If-None-Match sometimes drawn; path
    UIDs mostly those of a held instance, so that most requests get past the checks."""
    params = case.path_parameters or {}
    if _often(data):
        series, sop = data.draw(st.sampled_from(box.instances))
        for name, value in (("study", box.study), ("series", series), ("sop", sop)):
            if name in params:
                params[name] = value
        for name, values in PATH_VALUES.items():
            if name in params and _often(data):
                params[name] = data.draw(st.sampled_from(values))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    kos = KOS_UID if _often(data) else data.draw(st.sampled_from(["1.2.3", "", " ", "1..2", "x" * 100, None]))
    if kos is not None:
        headers["KOS-SOPInstanceUID"] = kos
    if not _often(data):
        headers["Accept"] = data.draw(accept_headers())
    if not _often(data):
        headers["If-None-Match"] = data.draw(ETAGS)
        headers["Accept-Encoding"] = data.draw(st.sampled_from(["gzip", "br, gzip;q=0", "*", "identity", ""]))
    return {name: _sendable(value) for name, value in headers.items()}


def _often(data: st.DataObject) -> bool:
    """True about four times in five (Hypothesis draws small integers more often than large ones)."""
    return bool(data.draw(st.integers(0, 99)) < 80)


def _sendable(value: str) -> str:
    """What an HTTP client can put on the wire (h11 refuses the rest before the box sees it)."""
    return re.sub(r"[\x00-\x1f\x7f]", "", value.encode("latin-1", "replace").decode("latin-1")).strip()


def _statuses(seen: Seen) -> dict[int, int]:
    counts: dict[int, int] = {}
    for (_, status), count in seen.items():
        counts[status] = counts.get(status, 0) + count
    return counts


def test_anonymous_requests_are_refused_never_failed(box: Box) -> None:
    seen = _run(box, box.app.openapi(), 15, _anonymous)
    public = {"/health", "/status"}
    assert {status for (path, status) in seen if path not in public} == {401}, seen
    assert {status for (path, status) in seen if path in public} == {200}, seen


def test_authorised_requests_never_make_the_box_fail(box: Box) -> None:
    seen = _run(box, box.app.openapi(), 40, _authorised)
    dicomweb = {path for (path, _) in seen if path.startswith(PREFIX)}
    reached = {path for (path, status) in seen if status < 300}
    assert len(dicomweb) == 19 and dicomweb <= reached, seen  # every DICOMweb route answered past its checks


def test_declared_query_parameters_never_make_the_box_fail(box: Box) -> None:
    document = _described(box.app.openapi())
    document["paths"] = {path: item for path, item in document["paths"].items() if path.endswith(READING_RAW)}
    assert len(document["paths"]) == 11  # six QIDO-RS searches, two renderings, three thumbnails
    statuses = _statuses(_run(box, document, 60, _authorised))
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses


# --- instances a peer sent that are readable but odd ---------------------------------------------

#: Pixel module values that contradict each other or the pixel data; None removes the attribute.
ODD: dict[str, st.SearchStrategy[Any]] = {
    "Rows": st.sampled_from([0, 1, 31, 33, 4096, None]),
    "Columns": st.sampled_from([0, 1, 31, 33, 4096, None]),
    "BitsAllocated": st.sampled_from([1, 8, 12, 32, 64, 0, None]),
    "BitsStored": st.sampled_from([0, 1, 8, 16, 17, 40, None]),
    "HighBit": st.sampled_from([0, 7, 15, 16, 40, None]),
    "PixelRepresentation": st.sampled_from([1, 2, None]),
    "SamplesPerPixel": st.sampled_from([0, 3, 4, None]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL_422", "PALETTE COLOR", "", "X"]),
    "PlanarConfiguration": st.sampled_from([0, 1, 2]),
    "NumberOfFrames": st.sampled_from(["0", "2", "3", "1000", "-1", "abc", None]),
    "WindowCenter": st.sampled_from(["0", "-1", "abc", "1e308", None]),
    "WindowWidth": st.sampled_from(["0", "-5", "nan", "1", None]),
    "RescaleSlope": st.sampled_from(["0", "1e308", "nan", "-inf", None]),
    "RescaleIntercept": st.sampled_from(["-1024", "1e308", "x", None]),
    "VOILUTFunction": st.sampled_from(["SIGMOID", "LINEAR_EXACT", "BOGUS"]),
    "PixelData": st.sampled_from([0, 2, 100, 2047, 4096]) | st.just(-1),
    "TransferSyntaxUID": st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                                          "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.1.99"]),
}  # fmt: skip
ENCAPSULATED = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80")
#: What is asked of each odd instance, and the Accept values a viewer sends for it.
DICOM_PARTS = [
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90',
]
FRAMES = [
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    'multipart/related; type="image/jpeg"',
    "*/*",
]
IMAGES = ["image/jpeg", "image/png", "*/*"]
ASKED = {
    "": DICOM_PARTS,
    "/metadata": ["application/dicom+json"],
    "/frames/1": FRAMES,
    "/frames/1,2": FRAMES,
    "/rendered": IMAGES,
    "/frames/2/rendered": IMAGES,
    "/thumbnail": IMAGES,
    "/bulkdata/7FE00010": FRAMES,
}
#: JPEG process 1, 2/4, 14 and 14 SV1 layouts GDCM cannot decode: it aborts the process instead of raising
#: (std::terminate on gdcm::Exception). Kept out of this test, which runs in process; see
#: test_pixel_codecs.py, which runs them in a child process.


def _odd_instance(box: Box, changes: dict[str, Any], garbage: bytes, folder: Path) -> Path:
    """A held study's instance (32x32, 16 bits, 3 frames) with `changes` applied, written as Part 10."""
    ds = build_instance(box.spec, box.instances[0][0], DBT, "MG", 90, 2)
    for keyword, value in sorted(changes.items(), key=lambda change: change[0] == "TransferSyntaxUID"):
        if keyword == "PixelData":
            padded = garbage + garbage[-1:] * (len(garbage) % 2)  # Pixel Data keeps an even length
            ds.PixelData = ds.PixelData[:value] if value >= 0 else ds.PixelData + padded
        elif keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
            if value in ENCAPSULATED:
                ds.PixelData = encapsulate([garbage or b"\x00\x00"] * 3)
                ds["PixelData"].VR = "OB"
        elif value is None:
            ds.pop(keyword, None)
        elif isinstance(value, str):  # written as is, even where pydicom would refuse the value
            tag = tag_for_keyword(keyword)
            text = value.encode() + b" " * (len(value) % 2)
            ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(text), text, 0, False, True)
        else:
            setattr(ds, keyword, value)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)  # encoded as its transfer syntax says
    return path


@pytest.fixture(scope="module")
def client(box: Box) -> Iterator[TestClient]:
    with TestClient(box.app, raise_server_exceptions=True) as test_client:
        yield test_client


@budget(150)
@given(changes=st.fixed_dictionaries({}, optional=ODD), garbage=st.binary(max_size=64), data=st.data())
def test_odd_instances_a_peer_sent_never_make_the_box_fail(
    box: Box, client: TestClient, tmp_path_factory: pytest.TempPathFactory, changes: dict[str, Any], garbage: bytes,
    data: st.DataObject
) -> None:  # fmt: skip
    """Whatever an admitted instance says of its pixels, its retrieve, metadata, frames, rendering and
    thumbnail answer 2xx or a problem, never 500, and never a 200 cut short by an error while streaming
    (the test client raises "response already started" then)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = _odd_instance(box, changes, garbage, tmp_path_factory.mktemp("odd"))
        received = box.node.store.incoming / source.name
        received.write_bytes(source.read_bytes())
        try:
            entry = box.node.storage.intake.admit(received, sender="ODD")
        except InvalidInstance as refused:
            event(f"refused at intake: {str(refused)[:50]}")
            return
        base = f"{PREFIX}/studies/{box.study}/series/{entry.series.series_uid}/instances/{entry.instance.sop_uid}"
        for asked, accepts in ASKED.items():
            headers = {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": KOS_UID,
                       "Accept": data.draw(st.sampled_from(accepts))}  # fmt: skip
            response = client.get(base + asked, headers=headers)
            event(f"{asked or '/'} {response.status_code}")
            assert response.status_code < 500, (asked, changes, response.text[:300])
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json", (asked, response.text[:200])


def test_a_deflated_instance_is_served_inflated(box: Box, client: TestClient, tmp_path: Path) -> None:
    """A deflated data set is admitted (its values read whole); its pixel data is served as bulk
    data, inflated, and its frames are refused with a problem (no offsets in the file)."""
    source = _odd_instance(box, {"TransferSyntaxUID": "1.2.840.10008.1.2.1.99"}, b"", tmp_path)
    received = box.node.store.incoming / source.name
    received.write_bytes(source.read_bytes())
    entry = box.node.storage.intake.admit(received, sender="ODD")
    assert entry.instance.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    base = f"{PREFIX}/studies/{box.study}/series/{entry.series.series_uid}/instances/{entry.instance.sop_uid}"
    headers = {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": KOS_UID}
    document = client.get(f"{base}/metadata", headers=headers).json()[0]
    assert document["7FE00010"]["BulkDataURI"].endswith(f"{base}/bulkdata/7FE00010")
    bulk = client.get(f"{base}/bulkdata/7FE00010", headers=headers)
    boundary = bulk.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    [part] = [p for p in bulk.content.split(b"--" + boundary) if b"\r\n\r\n" in p]
    assert bulk.status_code == 200 and part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") == dcmread(source).PixelData
    frames = client.get(f"{base}/frames/1", headers={**headers, "Accept": FRAMES[0]})
    assert 400 <= frames.status_code < 500 and "deflated" in frames.json()["detail"]

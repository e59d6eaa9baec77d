"""WADO-RS from our box, with the study only in a real Orthanc: fetch on demand, streamed, shared.

Clients are real: dicomweb-client and httpx over real sockets to a uvicorn server.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select, text

from drimbox.auth.factory import make_verifier
from drimbox.config import AuthSettings
from drimbox.daemon import Node, build_app
from drimbox.errors import TokenRejected
from drimbox.index.models import Instance, Series
from drimbox.ports import Principal
from drimbox.sandbox.http import serve_in_thread
from drimbox.sandbox.oidc import PscSandbox, SandboxClient
from tests.conftest import NodeFactory, orthanc_peer
from tests.support.datasets import CT, DBT, MG, StudySpec, write_study
from tests.support.peers import Orthanc

TOKEN = "test-token-0123456789"
KOS_UID = "1.2.250.1.999.1.1"


class OneTokenVerifier:
    """Accepts exactly one token: enough to exercise the routes; the PSC sandbox has its own tests."""

    def verify(self, token: str) -> Principal:
        if token != TOKEN:
            raise TokenRejected("inactive token")
        return Principal(subject="810000000001")


@dataclass
class Box:
    node: Node
    url: str
    study_uid: str
    files: list[Path]

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": KOS_UID, **extra}


@pytest.fixture
def box(tmp_path: Path, orthanc: Orthanc, make_node: NodeFactory) -> Iterator[Box]:
    spec = StudySpec(series=[(MG, "MG", 4), (CT, "CT", 60), (DBT, "MG", 1)], frames=5, rows=64, columns=48)
    files = write_study(spec, tmp_path / "study")
    orthanc.upload(files)
    node = make_node({"main": orthanc_peer(orthanc)})
    node.index_peer("main", full=True)
    node.index.grant_kos(KOS_UID, spec.study_uid)
    served = serve_in_thread(build_app(node, OneTokenVerifier()))
    yield Box(node, f"http://127.0.0.1:{served.port}/dicom-web", spec.study_uid, files)
    served.stop()


def _original(box: Box, sop_uid: str) -> Path:
    return next(f for f in box.files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == sop_uid)


def _client(box: Box) -> DICOMwebClient:
    return DICOMwebClient(url=box.url, headers=box.headers())


def test_study_retrieved_on_demand_is_byte_identical(box: Box) -> None:
    assert box.node.index.held(box.study_uid) == []
    instances = _client(box).retrieve_study(box.study_uid)
    assert len(instances) == len(box.files)
    originals = {dcmread(f).SOPInstanceUID: f for f in box.files}
    for ds in instances:
        original = dcmread(originals[ds.SOPInstanceUID])
        assert ds.PixelData == original.PixelData
        assert ds.PatientName == original.PatientName
    assert len(box.node.index.held(box.study_uid)) == len(box.files)


def test_held_study_served_from_the_store(box: Box) -> None:
    _client(box).retrieve_study(box.study_uid)
    started = box.node.wado.hub.started
    again = _client(box).retrieve_study(box.study_uid)
    assert len(again) == len(box.files)
    assert box.node.wado.hub.started == started, "a held study must not be fetched again"


def test_a_held_file_gone_since_the_index_was_read_is_fetched_again(box: Box) -> None:
    """An eviction between the index's answer and the file's opening: the PACS sends the instance again."""
    _client(box).retrieve_study(box.study_uid)
    held = box.node.index.held(box.study_uid)
    Path(held[1].path).unlink()  # the index still says we hold it
    started = box.node.wado.hub.started
    again = _client(box).retrieve_study(box.study_uid)
    assert sorted(ds.SOPInstanceUID for ds in again) == sorted(h.sop_uid for h in held)
    gone = next(ds for ds in again if ds.SOPInstanceUID == held[1].sop_uid)
    assert gone.PixelData == dcmread(_original(box, held[1].sop_uid)).PixelData
    assert box.node.wado.hub.started == started + 1
    assert Path(box.node.index.held_one(held[1].sop_uid).path).is_file()


def test_held_files_all_gone_and_the_pacs_failing_is_a_502_not_a_cut_200(box: Box, orthanc: Orthanc) -> None:
    """Whether anything can be sent is known before the response starts: a store wiped behind the
    index's back, with the PACS unable to send the series again, gets a status, not an empty 200."""
    ds0 = dcmread(box.files[0])
    series = [f for f in box.files if dcmread(f, stop_before_pixels=True).SeriesInstanceUID == ds0.SeriesInstanceUID]
    url = f"{box.url}/studies/{box.study_uid}/series/{ds0.SeriesInstanceUID}"
    assert httpx.get(url, headers=box.headers(), timeout=60).status_code == 200
    for held in box.node.index.held(box.study_uid, ds0.SeriesInstanceUID):
        Path(held.path).unlink()
    for path in series:
        orthanc.delete_instance(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    answer = httpx.get(url, headers=box.headers(), timeout=60)
    assert answer.status_code == 502, answer.text[:200]


def test_series_and_instance_levels_and_drim_m_accept(box: Box) -> None:
    ds0 = dcmread(box.files[0])
    accept = (
        'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.70;q=0.9;boundary=**,'
        'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.1;q=0.4;boundary=**,'
    )
    url = f"{box.url}/studies/{box.study_uid}/series/{ds0.SeriesInstanceUID}/instances/{ds0.SOPInstanceUID}"
    response = httpx.get(url, headers=box.headers(Accept=accept), timeout=30)
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.split("boundary=")[1].split(";")[0]
    body = response.content
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"--{boundary}--\r\n".encode())
    head, _, rest = body.partition(b"\r\n\r\n")
    assert b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1" in head
    assert (
        hashlib.sha256(rest[: -len(f"\r\n--{boundary}--\r\n")]).digest()
        == hashlib.sha256(
            (box.node.store.path_for(box.study_uid, ds0.SeriesInstanceUID, ds0.SOPInstanceUID)).read_bytes()
        ).digest()
    )
    series = _client(box).retrieve_series(box.study_uid, ds0.SeriesInstanceUID)
    assert len(series) == 4


def test_metadata_is_dicom_json_with_bulk_data_uris_from_configuration(box: Box) -> None:
    metadata = _client(box).retrieve_study_metadata(box.study_uid)
    assert len(metadata) == len(box.files)
    one = Dataset.from_json(metadata[0], bulk_data_uri_handler=lambda tag, vr, uri: b"")
    assert one.StudyInstanceUID == box.study_uid
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(box.node.settings.http.public_base_url + "/dicom-web/studies/")
    url = f"{box.url}/studies/{box.study_uid}/metadata"
    first = httpx.get(url, headers=box.headers(**{"Accept-Encoding": "gzip"}), timeout=30)
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    assert len(first.json()) == len(box.files)
    again = httpx.get(url, headers=box.headers(**{"If-None-Match": first.headers["etag"]}), timeout=30)
    assert again.status_code == 304
    plain = httpx.get(url, headers=box.headers(**{"Accept-Encoding": "identity"}), timeout=30)
    assert plain.json() == first.json()

    with box.node.index.session() as session, session.begin():  # a store older than the metadata table
        session.execute(text("DELETE FROM instance_metadata"))
    recomputed = httpx.get(url, headers=box.headers(), timeout=30)
    assert recomputed.status_code == 200 and recomputed.json() == first.json()
    assert recomputed.headers["etag"] == first.headers["etag"], "the same files, the same metadata"
    assert box.node.index.metadata_missing([f.stem for f in box.files]) == []


def test_first_instance_reaches_the_client_before_orthanc_sent_the_last(box: Box) -> None:
    series_uid = dcmread(next(f for f in box.files if dcmread(f).Modality == "CT")).SeriesInstanceUID
    first_part: list[datetime] = []
    url = f"{box.url}/studies/{box.study_uid}/series/{series_uid}"
    with httpx.stream("GET", url, headers=box.headers(), timeout=60) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            if not first_part:
                first_part.append(datetime.now(UTC))
    with box.node.index.session() as session:
        landed = sorted(session.scalars(select(Instance.stored_at).join(Series).where(Series.series_uid == series_uid)))
    assert len(landed) == 60
    assert first_part[0] < _aware(landed[-1]), "the first instance must be sent while later ones still arrive"


def _aware(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_two_concurrent_clients_cause_one_retrieval(box: Box) -> None:
    results: list[int] = []

    def fetch() -> None:
        results.append(len(_client(box).retrieve_study(box.study_uid)))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [len(box.files)] * 2
    assert box.node.wado.hub.started == 1


def _record_retrievals(box: Box, hold_first: threading.Event | None = None) -> list[str | None]:
    """The series UID (None: whole study) of each retrieval the box starts; the first one waits
    for `hold_first` when given."""
    asked: list[str | None] = []
    retrieve = box.node.retriever.retrieve

    def recorded(study_uid: str, series_uid: str | None = None, **options: Any) -> Any:
        asked.append(series_uid)
        if hold_first is not None and len(asked) == 1:
            hold_first.wait(30)
        return retrieve(study_uid, series_uid, **options)

    box.node.retriever.retrieve = recorded  # type: ignore[method-assign]
    return asked


def _series_of(box: Box) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in box.files:
        uid = str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    return counts


def test_a_study_asked_for_after_one_of_its_series_fetches_only_the_others(box: Box) -> None:
    asked = _record_retrievals(box)
    series = _series_of(box)
    first = next(uid for uid, count in series.items() if count == 4)
    assert len(_client(box).retrieve_series(box.study_uid, first)) == 4
    study = _client(box).retrieve_study(box.study_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in study) == sorted(f.stem for f in box.files)
    assert asked[0] == first and sorted(asked[1:]) == sorted(set(series) - {first})  # type: ignore[type-var]


def test_a_study_asked_for_while_one_of_its_series_is_fetched_follows_that_fetch(box: Box) -> None:
    gate = threading.Event()
    asked = _record_retrievals(box, hold_first=gate)
    series = _series_of(box)
    ct = next(uid for uid, count in series.items() if count == 60)
    got: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda: got.update(series=len(_client(box).retrieve_series(box.study_uid, ct)))),
        threading.Thread(target=lambda: got.update(study=len(_client(box).retrieve_study(box.study_uid)))),
    ]
    threads[0].start()
    deadline = time.monotonic() + 30
    while asked != [ct] and time.monotonic() < deadline:
        time.sleep(0.01)
    threads[1].start()
    time.sleep(1.0)  # the study request reaches the running series fetch before it is let go
    gate.set()
    for thread in threads:
        thread.join(timeout=120)
    assert got == {"series": 60, "study": len(box.files)}
    assert asked[0] == ct and None not in asked, "no whole-study retrieval beside the running series"
    assert sorted(asked[1:]) == sorted(set(series) - {ct})  # type: ignore[type-var]


def test_a_series_asked_for_as_the_study_retrieval_ends_is_served_from_the_store(box: Box) -> None:
    """The series request looked while the study's retrieval was under way, and goes to the PACS
    only after it ended: what it brought is served, the series is not fetched again."""
    gate = threading.Event()
    asked = _record_retrievals(box, hold_first=gate)
    ct = next(uid for uid, count in _series_of(box).items() if count == 60)
    looked = threading.Event()
    held = box.node.wado._held

    def held_then_wait(study: str, series: str | None, sop: str | None) -> Any:
        result = held(study, series, sop)
        if series == ct:
            looked.set()
            deadline = time.monotonic() + 60
            while box.node.wado.hub.running() and time.monotonic() < deadline:
                time.sleep(0.01)
        return result

    box.node.wado._held = held_then_wait  # type: ignore[method-assign]
    got: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda: got.update(study=len(_client(box).retrieve_study(box.study_uid)))),
        threading.Thread(target=lambda: got.update(series=len(_client(box).retrieve_series(box.study_uid, ct)))),
    ]
    threads[0].start()
    deadline = time.monotonic() + 30
    while asked != [None] and time.monotonic() < deadline:
        time.sleep(0.01)
    threads[1].start()
    assert looked.wait(30), "the series request looked while the study retrieval was held"
    gate.set()
    for thread in threads:
        thread.join(timeout=120)
    assert got == {"study": len(box.files), "series": 60}
    assert asked == [None], "one retrieval: the series came with the study"


def test_no_series_retrieval_starts_between_a_study_request_look_and_its_retrieval(box: Box) -> None:
    """The study request decides to fetch the study whole while a series request arrives: the
    series request follows the study retrieval (decided under the hub's lock), never fetches its
    series beside it."""
    asked = _record_retrievals(box)
    ct = next(uid for uid, count in _series_of(box).items() if count == 60)
    held = box.node.index.held
    study_looks: list[None] = []
    got: dict[str, int] = {}
    series_request = threading.Thread(
        target=lambda: got.update(series=len(_client(box).retrieve_series(box.study_uid, ct)))
    )

    def held_and_a_series_request(study: str, series: str | None = None) -> Any:
        result = held(study, series)
        if series is None:
            study_looks.append(None)
            if len(study_looks) == 2:  # the study request's last look before it fetches the study
                series_request.start()
                deadline = time.monotonic() + 2  # (it cannot start while the hub is locked)
                while ct not in asked and time.monotonic() < deadline:
                    time.sleep(0.01)
        return result

    box.node.index.held = held_and_a_series_request  # type: ignore[method-assign]
    study = _client(box).retrieve_study(box.study_uid)
    series_request.join(timeout=120)
    assert len(study) == len(box.files) and got == {"series": 60}
    assert asked == [None], "the series request followed the study retrieval"


def test_access_control_statuses(box: Box) -> None:
    url = f"{box.url}/studies/{box.study_uid}/metadata"
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 400),
        ({"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": "not-a-uid"}, 400),
        ({"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": "1.2.3.4"}, 404),
    ]
    for headers, status in cases:
        response = httpx.get(url, headers=headers, timeout=10)
        assert response.status_code == status, (headers, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    other_study = httpx.get(f"{box.url}/studies/1.2.3/metadata", headers=box.headers(), timeout=10)
    assert other_study.status_code == 404


def test_bad_input_statuses(box: Box) -> None:
    base = f"{box.url}/studies/{box.study_uid}"
    assert httpx.get(f"{box.url}/studies/1.2.abc", headers=box.headers(), timeout=10).status_code == 400
    assert httpx.get(f"{base}/series/9.9.9", headers=box.headers(), timeout=10).status_code == 404
    bad_accept = httpx.get(base, headers=box.headers(Accept='multipart/related; type="image/png"'), timeout=10)
    assert bad_accept.status_code == 406
    garbage = httpx.get(base, headers=box.headers(Accept="multipart/related; q=2"), timeout=10)
    assert garbage.status_code == 400
    traversal = httpx.get(f"{box.url}/studies/..%2F..%2Fetc/metadata", headers=box.headers(), timeout=10)
    assert traversal.status_code in (400, 404)


def test_qido_searches_only_within_the_kos_study(box: Box, orthanc: Orthanc, tmp_path: Path) -> None:
    other = StudySpec(patient_id="IPP00000099", patient_name="DUPRÉ^Henri", accession="ACC99")
    orthanc.upload(write_study(other, tmp_path / "other"))
    box.node.index_peer("main", full=True)
    assert box.node.index.study_known(other.study_uid)
    client = _client(box)
    everything = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in everything] == [box.study_uid]
    studies = client.search_for_studies(search_filters={"PatientName": "dupre*"}, fuzzymatching=True)
    assert [s["0020000D"]["Value"][0] for s in studies] == [box.study_uid]
    series = client.search_for_series(box.study_uid)
    assert len(series) == 3
    mg = client.search_for_series(box.study_uid, search_filters={"Modality": "MG"})
    assert len(mg) == 2
    instances = client.search_for_instances(box.study_uid)
    assert len(instances) == len(box.files)
    wildcard = httpx.get(f"{box.url}/studies?PatientName=DUPR%2A", headers=box.headers(), timeout=10)
    assert wildcard.status_code == 200 and len(wildcard.json()) == 1
    outside = httpx.get(f"{box.url}/studies/{other.study_uid}/series", headers=box.headers(), timeout=10)
    assert outside.status_code == 404
    bad = httpx.get(f"{box.url}/studies?StudyDate=2026-11", headers=box.headers(), timeout=10)
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"


def test_orthanc_as_a_consumer_pulls_the_study(box: Box, tmp_path: Path, shim: Path) -> None:
    """Orthanc's own DICOMweb client, configured with our box and the bearer token and KOS headers."""
    server = {"Url": f"{box.url}/", "HttpHeaders": box.headers()}
    consumer = Orthanc(tmp_path / "consumer", shim, extra={"DicomWeb": {"Enable": True, "Servers": {"box": server}}})
    consumer.start()
    try:
        with httpx.Client(base_url=consumer.url, timeout=180) as client:
            answer = client.post("/dicom-web/servers/box/retrieve", json={"Resources": [{"Study": box.study_uid}]})
            assert answer.status_code == 200, answer.text
            received = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in client.get(
                "/instances", params={"expand": ""}).json()}  # fmt: skip
            originals = {dcmread(f).SOPInstanceUID: f for f in box.files}
            assert set(received) == set(originals)
            for sop_uid, path in originals.items():
                copy = dcmread(BytesIO(client.get(f"/instances/{received[sop_uid]}/file").content))
                assert copy.PixelData == dcmread(path).PixelData
    finally:
        consumer.stop()


def test_frames_bulkdata_rendered_and_thumbnails(box: Box) -> None:
    dbt = next(f for f in box.files if dcmread(f).SOPClassUID == DBT)
    ds = dcmread(dbt)
    base = f"{box.url}/studies/{box.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    client = _client(box)
    frames = client.retrieve_instance_frames(box.study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID, [2, 5])
    size = ds.Rows * ds.Columns * 2
    assert frames == [ds.PixelData[size : 2 * size], ds.PixelData[4 * size : 5 * size]]
    metadata = client.retrieve_instance_metadata(box.study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    pixel_data = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"].replace(
        box.node.settings.http.public_base_url, box.url.removesuffix("/dicom-web")))  # fmt: skip
    assert pixel_data == [ds.PixelData]
    for url, media in [
        (f"{base}/rendered", "image/jpeg"),
        (f"{base}/frames/3/rendered?window=100,200,linear&viewport=96,72", "image/png"),
        (f"{base}/thumbnail", "image/jpeg"),
        (f"{box.url}/studies/{box.study_uid}/thumbnail", "image/jpeg"),
    ]:
        response = httpx.get(url, headers=box.headers(Accept=media), timeout=30)
        assert response.status_code == 200 and response.headers["content-type"] == media, response.text
        image = Image.open(BytesIO(response.content))
        assert image.format == media.split("/")[1].upper()
    sized = Image.open(BytesIO(httpx.get(f"{base}/frames/3/rendered?viewport=96,72",
                                         headers=box.headers(Accept="image/png"), timeout=30).content))  # fmt: skip
    assert sized.size == (54, 72), "48 x 64 pixels fitted into 96 x 72, aspect ratio kept"
    for url, status in [
        (f"{base}/frames/6", 404),
        (f"{base}/frames/0", 404),
        (f"{base}/frames/1,x", 400),
        (f"{base}/frames/99999999999999999999", 400),
        (f"{base}/frames/" + "1" * 5000, 400),
        (f"{base}/frames/999999999", 404),
        (f"{base}/rendered?window=1,0", 400),
        (f"{base}/rendered?viewport=100000,1", 400),
        (f"{base}/bulkdata/ZZZZ", 400),
        (f"{base}/bulkdata/00100010", 404),
    ]:
        response = httpx.get(url, headers=box.headers(), timeout=30)
        assert response.status_code == status, (url, response.text)


def test_transcoding_on_request_is_lossless_and_406_when_impossible(box: Box) -> None:
    ds0 = dcmread(box.files[0])
    url = f"{box.url}/studies/{box.study_uid}/series/{ds0.SeriesInstanceUID}/instances/{ds0.SOPInstanceUID}"
    for syntax in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"):
        client = DICOMwebClient(url=box.url, headers=box.headers())
        copy = client.retrieve_instance(
            box.study_uid, ds0.SeriesInstanceUID, ds0.SOPInstanceUID, media_types=(("application/dicom", syntax),)
        )
        assert copy.file_meta.TransferSyntaxUID == syntax
        assert (copy.pixel_array == ds0.pixel_array).all(), f"{syntax} must be lossless"
        assert copy.SOPInstanceUID == ds0.SOPInstanceUID and copy.PatientName == ds0.PatientName
    lossless_sv1 = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.70'
    impossible = httpx.get(url, headers=box.headers(Accept=lossless_sv1), timeout=30)
    assert impossible.status_code == 406 and impossible.json()["status"] == 406
    as_stored = 'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.1'
    either = httpx.get(url, headers=box.headers(Accept=f"{lossless_sv1}; q=0.9, {as_stored}"), timeout=30)
    assert either.status_code == 200 and b"transfer-syntax=1.2.840.10008.1.2.1\r\n" in either.content[:400]


def test_tokens_checked_by_introspection_at_the_psc_sandbox(box: Box) -> None:
    """The real verifier chain: our introspection client against the PSC stand-in, over HTTP."""
    now = [time.time()]
    psc = PscSandbox(clients=[SandboxClient("drimbox-test", "s3cret")], clock=lambda: now[0])
    provider = psc.serve()
    settings = AuthSettings(introspection_url=f"{psc.issuer}/token/introspect", client_id="drimbox-test",
                            client_secret="s3cret", cache_seconds=0)  # fmt: skip
    served = serve_in_thread(build_app(box.node, make_verifier(settings)))
    url = f"http://127.0.0.1:{served.port}/dicom-web/studies/{box.study_uid}/series"
    try:
        token = psc.issue_token(expires_in=60)
        headers = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": KOS_UID}
        first = httpx.get(url, headers=headers, timeout=10)
        assert first.status_code == 200, first.text
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert httpx.get(url, headers=headers | {"Authorization": f"Bearer {forged}"}, timeout=10).status_code == 401
        now[0] += 120  # the token has expired
        assert httpx.get(url, headers=headers, timeout=10).status_code == 401
        fresh = psc.issue_token(expires_in=600)
        psc.revoke(fresh)
        assert httpx.get(url, headers=headers | {"Authorization": f"Bearer {fresh}"}, timeout=10).status_code == 401
    finally:
        served.stop()
        provider.stop()


def test_a_short_delivery_cuts_the_response_and_the_next_request_retries(box: Box, orthanc: Orthanc) -> None:
    ct = [f for f in box.files if dcmread(f).Modality == "CT"]
    series_uid = dcmread(ct[0]).SeriesInstanceUID
    for path in ct[-3:]:
        orthanc.delete_instance(dcmread(path).SOPInstanceUID)  # the index still expects them
    url = f"{box.url}/studies/{box.study_uid}/series/{series_uid}"
    received = bytearray()
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", url, headers=box.headers(), timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += chunk
    assert received.count(b"Content-Type: application/dicom") == 57, "what landed was streamed"
    assert not received.endswith(b"--\r\n"), "no closing delimiter: the client knows the series is incomplete"
    started = box.node.wado.hub.started
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, headers=box.headers(), timeout=60)
    assert box.node.wado.hub.started == started + 1, "a failed retrieval is not remembered: the next request retries"

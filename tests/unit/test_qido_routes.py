"""QIDO-RS over HTTP: parameters, DICOM JSON read back with pydicom, paging caps, scope, problems, 406."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from starlette.exceptions import StarletteDeprecationWarning

from drimbox.dicomweb.access import AccessScope
from drimbox.dicomweb.qido import TOO_MANY, QueryError, negotiate, parse_search, qido_router
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from tests.unit.test_qido_queries import MG, ROOT, fill, uid

with warnings.catch_warnings():  # Starlette prefers `httpx2` over the `httpx` we pin; the client works the same
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

BASE = "/dicom-web"
PUBLIC = "https://db1.example.fr/dicom-web"  # RetrieveURLs come from configuration, never from Host


def authorize(request: Request) -> AccessScope:
    """The test's stand-in for the KOS guard: `X-Studies: uid,uid` restricts, no header is unrestricted."""
    header = request.headers.get("x-studies")
    return AccessScope(None if header is None else frozenset(filter(None, header.split(","))), "tester")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    engine = db.make_engine(f"sqlite:///{tmp_path_factory.mktemp('qido') / 'index.db'}")
    db.upgrade(engine)
    repository = IndexRepository(engine)
    fill(repository)
    app = FastAPI()
    app.include_router(
        qido_router(lambda: repository, default_limit=3, max_limit=5, authorize=authorize, public_prefix=PUBLIC),
        prefix=BASE,
    )
    with TestClient(app) as test_client:
        yield test_client
    engine.dispose()


def get(client: TestClient, path: str, **headers: str) -> Any:
    response = client.get(BASE + path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    return response.json()


def study_uids(results: list[dict[str, Any]]) -> list[str]:
    return [r["0020000D"]["Value"][0].removeprefix(ROOT + ".") for r in results]


def datasets(results: list[dict[str, Any]]) -> list[Dataset]:
    return [Dataset.from_json(result) for result in results]


def test_matching_keys_by_keyword_or_tag(client: TestClient) -> None:
    assert study_uids(get(client, "/studies?PatientID=IPP001")) == ["2", "1"]
    assert study_uids(get(client, "/studies?00100020=IPP001")) == ["2", "1"]
    assert study_uids(get(client, "/studies?0020000d=" + uid(3))) == ["3"]
    assert study_uids(get(client, "/studies?StudyDate=20260101-20261231&limit=5")) == ["2", "4", "1"]
    assert study_uids(get(client, f"/studies?StudyInstanceUID={uid(1)},{uid(3)}")) == ["1", "3"]
    assert study_uids(get(client, "/studies?AccessionNumber=NOPE")) == []  # no match: 200 and []


def test_percent_encoded_values_are_decoded_once(client: TestClient) -> None:
    assert study_uids(get(client, "/studies?PatientName=MART%2A")) == ["3"]
    assert study_uids(get(client, "/studies?PatientName=MART%252A")) == []  # a literal `MART%2A`
    assert study_uids(get(client, "/studies?PatientID=IPP%2505")) == ["6"]


def test_fuzzy_matching_of_french_names(client: TestClient) -> None:
    assert study_uids(get(client, "/studies?PatientName=lefevre&fuzzymatching=true")) == ["2", "1"]
    assert study_uids(get(client, "/studies?PatientName=h%C3%A9l&fuzzymatching=TRUE")) == ["2", "1"]
    assert study_uids(get(client, "/studies?PatientName=lefevre&fuzzymatching=false")) == []
    assert study_uids(get(client, "/studies?PatientName=lefevre")) == []


def test_study_results_read_back_with_pydicom(client: TestClient) -> None:
    [raw] = get(client, "/studies?PatientID=IPP001&StudyDate=20260105")
    [ds] = datasets([raw])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime) == (uid(1), "20260105", "083000")
    assert (ds.AccessionNumber, ds.StudyID, ds.StudyDescription, ds.ModalitiesInStudy) == (
        "ACC-001",
        "S1",
        "MAMMOGRAPHIE",
        "MG",
    )
    assert str(ds.PatientName) == "LEFÈVRE^Hélène" and ds.PatientName.given_name == "Hélène"
    assert (str(ds.ReferringPhysicianName), ds.PatientID, ds.IssuerOfPatientID) == ("DUPONT^Marc", "IPP001", "CIS")
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19650412", "F")
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (1, 4)
    assert ds.RetrieveURL == f"{PUBLIC}/studies/{uid(1)}"
    assert raw["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "LEFÈVRE^Hélène"}]}
    assert raw["00201208"] == {"vr": "IS", "Value": [4]}  # IS as a JSON number (PS3.18 F.2.3)
    assert list(raw) == sorted(raw)  # attributes in tag order


def test_required_attributes_without_value_carry_their_vr_only(client: TestClient) -> None:
    [raw] = get(client, f"/studies?StudyInstanceUID={uid(5)}")
    assert raw["00200010"] == {"vr": "SH"} and raw["00080020"] == {"vr": "DA"}
    assert raw["00201206"] == {"vr": "IS"} and raw["00080061"] == {"vr": "CS"}
    assert "00081030" not in raw  # StudyDescription is not required: left out when empty
    [ds] = datasets([raw])
    assert ds.StudyID == "" and ds.NumberOfStudyRelatedSeries is None


def test_modalities_in_study_is_multi_valued(client: TestClient) -> None:
    [raw] = get(client, f"/studies?StudyInstanceUID={uid(2)}&ModalitiesInStudy=CT")
    assert raw["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert list(datasets([raw])[0].ModalitiesInStudy) == ["CT", "SR"]


@pytest.mark.parametrize(
    ("query", "present", "absent"),
    [
        ("includefield=00081030", ["00081030"], []),
        ("includefield=StudyDescription&includefield=PatientAge", ["00081030"], ["00101010"]),
        ("includefield=StudyDescription,IssuerOfPatientID", ["00081030", "00100021"], []),
        ("includefield=all", ["00081030", "00100021", "00201208"], ["00080060"]),  # no series attribute
        ("StudyDescription=", ["00081030"], []),  # an empty key asks for the attribute
    ],
)
def test_includefield_variants(client: TestClient, query: str, present: list[str], absent: list[str]) -> None:
    [raw] = get(client, f"/studies?StudyInstanceUID={uid(6)}&{query}")
    for tag in present:
        assert tag in raw, tag
    for tag in absent:
        assert tag not in raw, tag


def test_includefield_of_an_attribute_we_do_not_hold_is_ignored_with_a_warning(client: TestClient) -> None:
    response = client.get(f"{BASE}/studies?PatientID=IPP001&includefield=PatientAge,SOPClassUID")
    assert response.status_code == 200
    assert (
        '"The following attributes are not supported and were ignored: PatientAge, SOPClassUID"'
        in response.headers["warning"]
    )
    assert response.headers["warning"].startswith("299 drimbox: ")


def test_default_limit_and_cap_warn_when_results_are_cut(client: TestClient) -> None:
    warning = f'299 drimbox: "{TOO_MANY}"'
    response = client.get(BASE + "/studies")  # default limit 3 of 7
    assert len(response.json()) == 3 and response.headers["warning"] == warning
    response = client.get(BASE + "/studies?limit=50")  # capped to 5
    assert len(response.json()) == 5 and response.headers["warning"] == warning
    response = client.get(BASE + "/studies?limit=50&PatientID=IPP001")  # capped, even if all fit
    assert len(response.json()) == 2 and response.headers["warning"] == warning
    response = client.get(BASE + "/studies?limit=2")  # the client's own page size
    assert len(response.json()) == 2 and "warning" not in response.headers
    response = client.get(BASE + "/studies?PatientID=IPP001")  # under the default limit
    assert len(response.json()) == 2 and "warning" not in response.headers


def test_paging_with_limit_and_offset(client: TestClient) -> None:
    pages = [study_uids(get(client, f"/studies?limit=2&offset={offset}")) for offset in (0, 2, 4, 6, 8)]
    assert pages == [["2", "4"], ["1", "3"], ["5", "6"], ["7"], []]


def test_series_at_root_carry_their_study_and_within_a_study_do_not(client: TestClient) -> None:
    root = get(client, "/series?Modality=CT")
    [ds] = datasets(root)
    assert (ds.Modality, ds.SeriesNumber, ds.NumberOfSeriesRelatedInstances) == ("CT", 1, 3)
    assert (ds.StudyInstanceUID, str(ds.PatientName), ds.AccessionNumber) == (uid(2), "LEFÈVRE^Hélène", "ACC-002")
    assert ds.RetrieveURL == f"{PUBLIC}/studies/{uid(2)}/series/{uid(2, 1)}"
    nested = get(client, f"/studies/{uid(2)}/series")
    assert [r["0020000E"]["Value"][0] for r in nested] == [uid(2, 1), uid(2, 2)]
    assert all("00100010" not in r and r["0020000D"]["Value"] == [uid(2)] for r in nested)
    [us] = get(client, f"/studies/{uid(4)}/series")
    assert us["00200011"] == {"vr": "IS"} and us["00201209"] == {"vr": "IS", "Value": [7]}
    assert "00180015" not in us  # BodyPartExamined: optional, unknown here


def test_instances_at_every_route(client: TestClient) -> None:
    [raw] = get(client, f"/studies/{uid(1)}/series/{uid(1, 1)}/instances?InstanceNumber=1")
    [ds] = datasets([raw])
    assert (ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber) == (MG, uid(1, 1, 1), 1)
    assert (ds.Rows, ds.Columns, ds.NumberOfFrames, ds.InstanceAvailability) == (32, 24, 1, "ONLINE")
    assert ds.AvailableTransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (uid(1), uid(1, 1))
    assert "00080060" not in raw and raw["00280010"] == {"vr": "US", "Value": [32]}
    assert ds.RetrieveURL.endswith(f"/studies/{uid(1)}/series/{uid(1, 1)}/instances/{uid(1, 1, 1)}")
    in_study = datasets(get(client, f"/studies/{uid(2)}/instances?limit=5"))
    assert [(d.Modality, d.InstanceNumber, d.InstanceAvailability) for d in in_study] == [
        ("CT", 1, "NEARLINE"), ("CT", 2, "NEARLINE"), ("CT", 3, "NEARLINE"), ("SR", 1, "NEARLINE")]  # fmt: skip
    at_root = datasets(get(client, f"/instances?SOPClassUID={MG}&limit=5"))
    assert len(at_root) == 4 and {str(d.PatientName) for d in at_root} == {"LEFÈVRE^Hélène"}


def test_scope_restricts_searches_and_hides_other_studies(client: TestClient) -> None:
    only_three = {"X-Studies": uid(3)}
    assert study_uids(get(client, "/studies", **only_three)) == ["3"]
    assert study_uids(get(client, "/studies?PatientID=IPP001", **only_three)) == []
    assert get(client, "/instances", **{"X-Studies": uid(1)})[0]["0020000D"]["Value"] == [uid(1)]
    assert get(client, "/studies", **{"X-Studies": ""}) == []
    for path in (
        f"/studies/{uid(2)}/series",
        f"/studies/{uid(2)}/instances",
        f"/studies/{uid(2)}/series/{uid(2, 1)}/instances",
    ):
        response = client.get(BASE + path, headers=only_three)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
    assert client.get(f"{BASE}/studies/{uid(2)}/series", headers={"X-Studies": uid(2)}).status_code == 200


def test_unknown_study_or_series_is_404_but_an_empty_search_inside_a_study_is_not(client: TestClient) -> None:
    assert client.get(f"{BASE}/studies/{uid(99)}/series").status_code == 404
    assert client.get(f"{BASE}/studies/{uid(1)}/series/{uid(2, 1)}/instances").status_code == 404
    assert get(client, f"/studies/{uid(3)}/series") == []  # indexed at study level only
    assert get(client, f"/studies/{uid(2)}/series?Modality=MR") == []


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/studies?StudyDate=2026-01-01", "not a date"),
        ("/studies?StudyDate=20260230", "not a date"),
        ("/studies?StudyInstanceUID=1.2.x", "not a valid DICOM UID"),
        ("/studies/1.02.3/series", "not a valid DICOM UID"),
        ("/studies?limit=-1", "limit must be a non-negative integer"),
        ("/studies?limit=ten", "limit must be"),
        ("/studies?limit=0", "positive"),
        ("/studies?offset=-2", "offset must be"),
        ("/studies?fuzzymatching=maybe", "fuzzymatching must be true or false"),
        ("/studies?Colour=red", "neither a query parameter nor a DICOM attribute"),
        ("/studies?7FE10010=x", "not a known DICOM attribute tag"),
        ("/studies?ReferencedSeriesSequence.SeriesInstanceUID=1.2", "inside sequences"),
        ("/studies?PatientAge=045Y", "matching on PatientAge is not supported"),
        ("/studies?Modality=CT", "series attribute"),
        ("/series?SOPInstanceUID=1.2.3", "instance attribute"),
        ("/studies?PatientID=A&PatientID=B", "more than once"),
        ("/studies?includefield=NotAnAttribute", "neither a query parameter"),
    ],
)
def test_bad_queries_are_400_with_a_problem_body(client: TestClient, path: str, detail: str) -> None:
    response = client.get(BASE + path)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["type"], body["title"], body["status"]) == ("about:blank", "Bad Request", 400)
    assert detail in body["detail"]


@pytest.mark.parametrize(
    ("accept", "status", "media_type"),
    [
        (None, 200, "application/dicom+json"),
        ("application/dicom+json", 200, "application/dicom+json"),
        ("application/dicom+json; charset=utf-8", 200, "application/dicom+json"),
        ("application/json", 200, "application/json"),
        ("*/*", 200, "application/dicom+json"),
        ("text/html, application/*;q=0.2", 200, "application/dicom+json"),
        ("application/dicom+xml", 406, "application/problem+json"),
        ('multipart/related; type="application/dicom+xml"', 406, "application/problem+json"),
        ("text/html", 406, "application/problem+json"),
        ("application/dicom+json;q=0", 406, "application/problem+json"),
    ],
)
def test_accept_negotiation(client: TestClient, accept: str | None, status: int, media_type: str) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response = client.get(BASE + "/studies?PatientID=IPP001", headers=headers)
    assert (response.status_code, response.headers["content-type"]) == (status, media_type)


def test_accept_query_parameter_overrides_the_header(client: TestClient) -> None:
    response = client.get(BASE + "/studies?accept=application/dicom%2Bjson", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert client.get(BASE + "/studies?accept=text/html").status_code == 406


def test_negotiate_ignores_malformed_weights() -> None:
    assert negotiate("application/dicom+json;q=abc") is None
    assert negotiate("application/dicom+json;q=abc, application/json;q=0.5") == "application/json"


_NAMES = st.sampled_from(["PatientName", "StudyDate", "00100020", "limit", "offset", "includefield",
                          "fuzzymatching", "Modality", "StudyInstanceUID", "x", "0020000D", "accept"])  # fmt: skip


@given(st.lists(st.tuples(_NAMES | st.text(max_size=12), st.text(max_size=30)), max_size=6),
       st.sampled_from(["study", "series", "instance"]))  # fmt: skip
def test_any_query_string_parses_or_is_a_query_error(params: list[tuple[str, str]], level: Any) -> None:
    try:
        parsed = parse_search(params, level=level, default_limit=10, max_limit=20)
    except QueryError:
        return
    assert parsed.query.limit is not None and 1 <= parsed.query.limit <= 20


def test_retrieve_url_ignores_the_host_header(client: TestClient) -> None:
    response = client.get(f"{BASE}/studies", headers={"Host": "evil.example.com"})
    assert response.status_code == 200
    assert "evil.example.com" not in response.text
    assert all(item["00081190"]["Value"][0].startswith(PUBLIC) for item in response.json())

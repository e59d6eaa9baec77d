"""Schemathesis against our OpenAPI: whatever it sends, no answer is a 500 (capped run).

The box holds one small study (admitted directly into its store); its only PACS peer is a
closed port, so a cold fetch fails cleanly too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from drimbox.config import load_settings
from drimbox.daemon import build_app, build_node
from drimbox.sandbox.http import serve_in_thread
from tests.conftest import write_config
from tests.integration.test_dicomweb_orthanc import KOS_UID, TOKEN, OneTokenVerifier
from tests.support.datasets import CT, DBT, StudySpec, write_study
from tests.support.peers import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("fuzz")
    peer = {"ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}
    node = build_node(load_settings(write_config(folder, peers={"main": peer}, dimse_port=free_port(),
                                                 http_port=free_port())))  # fmt: skip
    spec = StudySpec(series=[(CT, "CT", 3), (DBT, "MG", 1)], frames=3)
    for source in write_study(spec, folder / "src"):
        received = node.store.incoming / source.name
        received.write_bytes(source.read_bytes())
        node.storage.intake.admit(received, sender="TEST")
    node.index.grant_kos(KOS_UID, spec.study_uid)
    app = build_app(node, OneTokenVerifier())
    server = serve_in_thread(app)
    yield {"url": f"http://127.0.0.1:{server.port}", "openapi": app.openapi(), "study": spec.study_uid}
    server.stop()
    node.close()


def test_no_request_makes_the_box_fail(served: dict[str, Any]) -> None:
    """Every operation of our OpenAPI, with generated paths, queries and headers (50 cases each).

    (Schemathesis's pytest plugin does not run on pytest 9, so the cases are drawn with
    Hypothesis directly from each operation's strategy.)
    """
    schema = schemathesis.openapi.from_dict(served["openapi"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            calls.append(_call(case, served))

        check()
    assert len(calls) >= 20 * len(operations)
    assert sum(1 for status in calls if status < 300) > 0, "some generated requests must get through"


def _call(case: schemathesis.Case, served: dict[str, Any]) -> int:
    if case.path_parameters and "study" in case.path_parameters and hash(str(case.path_parameters)) % 2:
        case.path_parameters["study"] = served["study"]  # half the cases get past the KOS check
    headers = {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": KOS_UID}
    response = case.call(base_url=served["url"], headers=headers, timeout=30)
    assert response.status_code < 500 or response.status_code in (502, 503), (case.path, response.text[:300])
    if response.status_code >= 400:
        kind = response.headers.get("content-type", [""])[0]
        assert kind == "application/problem+json", (case.path, response.text[:300])
    return response.status_code

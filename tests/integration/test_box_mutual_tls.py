"""The whole box behind mutual TLS, as `drimbox serve` runs it: the whitelist it keeps (signed by the
sandbox's "Liste Blanche DRIM-M") decides which remote boxes get in; every DICOMweb record names the
box's certificate DN; every refused box is in the box's own audit trail."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from drimbox.config import load_settings
from drimbox.daemon import Daemon, build_app, http_options
from drimbox.sandbox.pki import PkiFiles, create_pki, issue_organisation, revoke
from drimbox.sandbox.whitelist import sign_whitelist
from drimbox.whitelist.model import dn_of
from tests.conftest import write_config
from tests.integration.test_dicomweb_orthanc import TOKEN, OneTokenVerifier
from tests.support.peers import free_port

STRUCTURE = "499700367909006"


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _client(pki: PkiFiles, cert: Path, key: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=context, timeout=20)


def _refused(pki: PkiFiles, cert: Path, key: Path, url: str, headers: dict[str, str]) -> bool:
    try:
        with _client(pki, cert, key) as client:
            client.get(url, headers=headers)
    except httpx.HTTPError:
        return True
    return False


def test_the_box_admits_whitelisted_boxes_only_and_audits_the_others(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki", STRUCTURE)
    listed = issue_organisation(pki.folder, "499700367909002", "CABINET LISTE")
    unlisted = issue_organisation(pki.folder, "499700367909003", "CABINET INCONNU")
    listed_dn = dn_of(x509.load_pem_x509_certificate(listed.auth_cert.read_bytes()))
    domain = {"identifier": "2", "db": "db2.sandbox.example", "vi": "vi2.sandbox.example", "denomination": "SANDBOX",
              "operator_dn": listed_dn, "support_contact": "s@sandbox.example",
              "updated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}  # fmt: skip
    whitelist = tmp_path / "whitelist.xml"
    whitelist.write_bytes(sign_whitelist([domain], pki, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)))
    port = free_port()
    extra = "\n".join([
        "[http.tls]", f'certificate = "{pki.server_cert}"', f'key = "{pki.server_key}"',
        f'client_ca = "{pki.ca_bundle}"', 'revocation = "crl"', f"crl_files = {[str(p) for p in pki.crls]!r}",
        "[whitelist]", f'initial_file = "{whitelist}"', f'trust_anchors = "{pki.root_cert}"',
    ]).replace("'", '"')  # fmt: skip
    (tmp_path / "box").mkdir()
    config = write_config(tmp_path / "box", peers={}, dimse_port=free_port(), http_port=port, extra=extra)
    daemon = Daemon(load_settings(config), index_at_start=False)
    daemon.start_background()
    server = daemon.tls.server(build_app(daemon.node, OneTokenVerifier()), **http_options(daemon.settings))
    sock = socket.create_server(("127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait(lambda: server.started, "the listener")
    url = f"https://127.0.0.1:{port}/dicom-web/studies"
    headers = {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": "1.2.3.4"}
    trail = daemon.node.audit
    try:
        with _client(pki, listed.auth_cert, listed.auth_key) as client:
            # Admitted: the request reaches the routes (here: a KOS we never published → 404).
            assert client.get(url, headers=headers).status_code == 404
        [access] = trail.query(action="dicomweb.access")
        assert access.peer == listed_dn and access.detail["status"] == 404

        with _client(pki, unlisted.auth_cert, unlisted.auth_key) as client:
            refused = client.get(url, headers=headers)
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        _wait(lambda: len(trail.query(action="tls.refused")) == 1, "the whitelist refusal")

        revoke(pki, listed.auth_cert)  # the listener notices the changed CRL file without a restart
        _wait(lambda: _refused(pki, listed.auth_cert, listed.auth_key, url, headers), "the revoked certificate refused")
        _wait(lambda: len(trail.query(action="tls.refused")) == 2, "the revocation refusal")
        with (
            pytest.raises(httpx.HTTPError),
            httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca_bundle)), timeout=20) as anonymous,
        ):
            anonymous.get(url, headers=headers)
        _wait(lambda: len(trail.query(action="tls.refused")) == 3, "the no-certificate refusal")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        daemon.tls.close()
        daemon.stop()
    reasons = [r.detail["reason"] for r in trail.query(action="tls.refused", newest_first=False)]
    assert "whitelist" in str(reasons[0]).lower()
    assert "revoked" in str(reasons[1]).lower()
    assert "certificate" in str(reasons[2]).lower()
    assert trail.check().intact

"""The listener's SSL context: the TLS policy it sets, how CRLs are loaded, when it is rebuilt."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from drimbox.config import TlsSettings
from drimbox.errors import ConfigError
from drimbox.mtls.context import ServerContext, build_server_context
from drimbox.mtls.gate import handshake_reason
from drimbox.sandbox.pki import PkiFiles, create_pki, revoke


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), "499700367909006")


def settings(pki: PkiFiles, **changes: object) -> TlsSettings:
    values: dict[str, object] = {"certificate": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca_bundle,
                                 "crl_files": list(pki.crls)} | changes  # fmt: skip
    return TlsSettings.model_validate(values)


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_policy_tls12_minimum_client_certificate_required_no_resumption(pki: PkiFiles) -> None:
    context = build_server_context(settings(pki))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_TICKET and context.num_tickets == 0
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in tls12)
    assert build_server_context(settings(pki, minimum_version="TLSv1.3")).minimum_version == ssl.TLSVersion.TLSv1_3


def test_crls_of_every_ca_check_the_whole_chain_else_the_leaf_only(pki: PkiFiles) -> None:
    def crl_check(context: ssl.SSLContext) -> ssl.VerifyFlags:
        return context.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN  # CHAIN includes the LEAF bit

    assert crl_check(build_server_context(settings(pki))) == ssl.VERIFY_CRL_CHECK_CHAIN
    assert crl_check(build_server_context(settings(pki, crl_files=[pki.intermediate_crl]))) == ssl.VERIFY_CRL_CHECK_LEAF
    assert crl_check(build_server_context(settings(pki, revocation="ocsp", crl_files=[]))) == 0


def test_plain_tls_asks_no_client_certificate(pki: PkiFiles) -> None:
    context = build_server_context(TlsSettings(certificate=pki.server_cert, key=pki.server_key))
    assert context.verify_mode == ssl.CERT_NONE


def test_unusable_files_name_the_key(pki: PkiFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not a CRL")
    with pytest.raises(ConfigError, match=r"http\.tls\.crl_files: cannot read .*garbage\.crl"):
        build_server_context(settings(pki, crl_files=[garbage]))
    with pytest.raises(ConfigError, match=r"http\.tls\.certificate"):
        build_server_context(settings(pki, certificate=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"http\.tls\.client_ca"):
        build_server_context(settings(pki, client_ca=garbage))


def test_a_changed_crl_is_loaded_at_the_next_check_and_a_broken_one_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    pki = create_pki(tmp_path / "pki", "499700367909006")
    ticks = Ticks()
    contexts = ServerContext(settings(pki), reload_interval=5, clock=ticks)
    first = contexts.current()
    revoke(pki, 4242)
    assert contexts.current() is first  # not looked at before the interval
    ticks.now = 5
    second = contexts.current()
    assert second is not first
    ticks.now = 10
    assert contexts.current() is second  # nothing changed
    pki.intermediate_crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")
    ticks.now = 15
    assert contexts.current() is second


def test_handshake_reason_is_openssl_s_message() -> None:
    error = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate (_ssl.c:1006)")
    assert handshake_reason(error, 10) == "peer did not return a certificate"
    assert handshake_reason(ConnectionAbortedError("slow"), 10) == "TLS handshake not completed within 10 s"

"""The sandbox PKI: IGC-Santé-shaped chains, ORG certificates carrying the structure id, PKCS#12
files that open with the password, a server certificate that works in a real TLS handshake, CRLs."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drimbox.sandbox.pki import PkiFiles, create_pki, issue_organisation, load_certificates, load_pki, revoke

STRUCTURE = "499700367909006"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE, organisation_name="CABINET M DOC0036790")


def _verifier(pki: PkiFiles) -> verification.ClientVerifier:
    """Trusting the root only, so the chain must go through the intermediate the PEM carries."""
    store = verification.Store(load_certificates(pki.root_cert))
    policies = {
        "ee_policy": verification.ExtensionPolicy.permit_all(),
        "ca_policy": verification.ExtensionPolicy.webpki_defaults_ca(),
    }
    return verification.PolicyBuilder().store(store).extension_policies(**policies).build_client_verifier()


def _ou(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]


@pytest.mark.parametrize("which", ["auth_cert", "signature_cert"])
def test_org_certificates_chain_to_the_root_and_carry_the_structure_id(pki: PkiFiles, which: str) -> None:
    leaf, *chain = load_certificates(getattr(pki.organisation, which))
    verified = _verifier(pki).verify(leaf, chain)
    assert [c.subject for c in verified.chain][1:] == [load_certificates(pki.intermediate_cert)[0].subject,
                                                      load_certificates(pki.root_cert)[0].subject]  # fmt: skip
    assert _ou(leaf) == [STRUCTURE]
    assert leaf.subject.rfc4514_string() == f"CN=DRIMbox,OU={STRUCTURE},O=CABINET M DOC0036790,C=FR"
    assert "ELEMENTAIRE ORGANISATIONS" in leaf.issuer.rfc4514_string()


def test_auth_is_for_tls_clients_and_signature_for_non_repudiation(pki: PkiFiles) -> None:
    auth = load_certificates(pki.organisation.auth_cert)[0]
    signature = load_certificates(pki.organisation.signature_cert)[0]
    eku = auth.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = signature.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_encipherment
    with pytest.raises(x509.ExtensionNotFound):
        signature.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_a_certificate_of_another_pki_does_not_chain(pki: PkiFiles, tmp_path: Path) -> None:
    other = create_pki(tmp_path / "other", STRUCTURE)
    leaf, *chain = load_certificates(other.organisation.auth_cert)
    with pytest.raises(verification.VerificationError):
        _verifier(pki).verify(leaf, chain)


def test_pkcs12_opens_with_the_password_only(pki: PkiFiles) -> None:
    key, cert, extra = pkcs12.load_key_and_certificates(pki.organisation.auth_p12.read_bytes(), pki.password.encode())
    assert key is not None and cert is not None and _ou(cert) == [STRUCTURE]
    chain = {load_certificates(path)[0].subject for path in (pki.root_cert, pki.intermediate_cert)}
    assert {c.subject for c in extra} == chain
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(pki.organisation.signature_p12.read_bytes(), b"wrong")


def test_second_organisation_in_the_same_ca(pki: PkiFiles) -> None:
    other = issue_organisation(pki.folder, "123456789", "AUTRE CABINET")
    leaf, *chain = load_certificates(other.auth_cert)
    _verifier(pki).verify(leaf, chain)
    assert _ou(leaf) == ["123456789"] and other.auth_p12.parent == pki.folder / "123456789"


def test_whitelist_signer(pki: PkiFiles) -> None:
    signer = load_certificates(pki.whitelist_cert)[0]
    assert signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Liste Blanche DRIM-M"
    assert _ou(signer) == ["318751275100020"]


def test_create_again_reuses_unless_forced(pki: PkiFiles) -> None:
    before = pki.root_cert.read_bytes()
    assert create_pki(pki.folder, STRUCTURE, organisation_name="CABINET M DOC0036790") == pki
    assert pki.root_cert.read_bytes() == before and load_pki(pki.folder) == pki
    with pytest.raises(ValueError, match="other parameters"):
        create_pki(pki.folder, "000000000")


def test_force_starts_over(tmp_path: Path) -> None:
    first = create_pki(tmp_path, STRUCTURE)
    root = first.root_cert.read_bytes()
    assert create_pki(tmp_path, STRUCTURE, force=True).root_cert.read_bytes() != root


def test_revoked_serial_is_listed_in_the_crl(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, STRUCTURE)
    auth = load_certificates(pki.organisation.auth_cert)[0]
    crl = x509.load_pem_x509_crl(pki.intermediate_crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(auth.serial_number) is None
    revoke(pki, auth)
    revoke(pki, 4242)
    crl = x509.load_pem_x509_crl(pki.intermediate_crl.read_bytes())
    intermediate = load_certificates(pki.intermediate_cert)[0]
    assert crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(auth.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(4242) is not None
    assert len(x509.load_pem_x509_crl(pki.root_crl.read_bytes())) == 0


@pytest.fixture
def tls_server(pki: PkiFiles) -> Iterator[int]:
    """A one-shot TLS server with the sandbox server certificate, asking for a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca_bundle)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with context.wrap_socket(connection, server_side=True) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
            seen.append(_ou(peer)[0])
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(timeout=5)
    listener.close()
    assert seen == [STRUCTURE]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_server_certificate_in_a_mutual_tls_handshake(pki: PkiFiles, tls_server: int, host: str) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    context.load_cert_chain(pki.organisation.auth_cert, pki.organisation.auth_key)
    raw = socket.create_connection(("127.0.0.1", tls_server), timeout=5)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.recv(2) == b"ok"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")

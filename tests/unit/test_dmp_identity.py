"""PKCS#12 identities and the TLS client context of the DMP boundary; the test PKI other DMP tests share."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drimbox.dmp.identity import distinguished_name, load_identity, tls_context
from drimbox.errors import ConfigError

STRUCTURE_ID = "499700367909006"
ORG_DN = f"CN=DRIMbox, OU={STRUCTURE_ID}, O=CABINET M DOC0036790, ST=Paris (75), C=FR"
CA_DN = "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS, OU=IGC-SANTE TEST, OU=0002 187512751, O=ASIP-SANTE, C=FR"
AUTH_PASSWORD = "auth-secret"
SIGN_PASSWORD = "sign-secret"


@dataclass(frozen=True)
class Pki:
    """A CA (as IGC-Santé's test ORG CA), our ORG AUTH and SIGN PKCS#12, and a server certificate."""

    folder: Path
    ca_certificate: x509.Certificate
    ca_pem: Path
    auth_p12: Path
    sign_p12: Path
    sign_certificate: x509.Certificate
    server_pem: Path
    server_key: Path


def _name(dn: str) -> x509.Name:
    oids = {
        "CN": NameOID.COMMON_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "ST": NameOID.STATE_OR_PROVINCE_NAME,
        "C": NameOID.COUNTRY_NAME,
    }
    parts = [part.split("=", 1) for part in dn.split(", ")]
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in reversed(parts)])


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    usage: tuple[x509.ObjectIdentifier, ...] = (),
    san: x509.GeneralName | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def build_pki(folder: Path) -> Pki:
    ca_key = _key()
    ca = _certificate(CA_DN, ca_key, _name(CA_DN), ca_key, ca=True)
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files = {}
    for stem, password in (("auth", AUTH_PASSWORD), ("sign", SIGN_PASSWORD)):
        key = _key()
        cert = _certificate(
            ORG_DN,
            key,
            ca.subject,
            ca_key,
            usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            san=x509.DNSName("drimbox.example.fr"),
        )
        data = pkcs12.serialize_key_and_certificates(
            b"drimbox", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())
        )
        (folder / f"{stem}.p12").write_bytes(data)
        files[stem] = cert
    server_key = _key()
    server = _certificate(
        "CN=localhost, O=DMP sandbox, C=FR",
        server_key,
        ca.subject,
        ca_key,
        usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
        san=x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    )
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pki(
        folder,
        ca,
        ca_pem,
        folder / "auth.p12",
        folder / "sign.p12",
        files["sign"],
        folder / "server.pem",
        folder / "server.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


def test_pkcs12_gives_key_certificate_chain_and_the_java_style_subject(pki: Pki) -> None:
    identity = load_identity(pki.sign_p12, SIGN_PASSWORD, "dmp.signature_pkcs12")
    assert identity.certificate == pki.sign_certificate
    assert identity.chain == (pki.ca_certificate,)
    assert identity.subject_dn == ORG_DN
    assert identity.issuer_dn == CA_DN
    assert distinguished_name(pki.ca_certificate.subject) == CA_DN


@pytest.mark.parametrize(
    ("path", "password", "reason"),
    [
        (None, "", "required"),
        (Path("/nonexistent/auth.p12"), "", "cannot read"),
        ("auth", "wrong", "password"),
        ("pem", "", "PKCS#12"),
    ],
)
def test_unusable_pkcs12_is_a_config_error_naming_the_key(
    pki: Pki, path: Path | str | None, password: str, reason: str
) -> None:
    real = {"auth": pki.auth_p12, "pem": pki.ca_pem}
    chosen = real[path] if isinstance(path, str) else path
    with pytest.raises(ConfigError, match=rf"^dmp\.auth_pkcs12: .*{reason}"):
        load_identity(chosen, password, "dmp.auth_pkcs12")


def test_a_non_rsa_key_is_refused(tmp_path: Path, pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ORG_DN))
        .issuer_name(_name(ORG_DN))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2024, 1, 1))
        .not_valid_after(dt.datetime(2034, 1, 1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ec.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"ec", key, cert, None, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="RSA"):
        load_identity(path, "", "dmp.signature_pkcs12")


def test_tls_context_is_tls12_plus_with_our_certificate_and_leaves_no_key_on_disk(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    identity = load_identity(pki.auth_p12, AUTH_PASSWORD, "dmp.auth_pkcs12")
    context = tls_context(identity, pki.ca_pem)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        tuple((attribute,) for attribute in _openssl_subject(pki.ca_certificate))
    ]
    assert list(tmp_path.iterdir()) == []  # the temporary PEM and its folder are gone


def _openssl_subject(certificate: x509.Certificate) -> list[tuple[str, str]]:
    names = {"CN": "commonName", "OU": "organizationalUnitName", "O": "organizationName", "C": "countryName"}
    return [(names[a.rfc4514_attribute_name], str(a.value)) for a in certificate.subject]


def test_a_missing_ca_bundle_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"dmp\.ca_bundle"):
        tls_context(None, pki.folder / "absent.pem")

"""The ANS whitelist verifier: the genuine signed test list verifies, and every way of forging,
altering, replaying or mis-signing a list is refused with its reason. DN and host matching."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from drimbox.config import WhitelistSettings
from drimbox.errors import ConfigError, WhitelistRefused
from drimbox.ports import AuditEvent
from drimbox.sandbox.pki import PkiFiles, create_pki, load_certificates, revoke
from drimbox.sandbox.whitelist import sign_whitelist
from drimbox.whitelist import Whitelist, WhitelistKeeper, dn_of, format_status, verify_whitelist

FIXTURES = Path(__file__).parent.parent / "fixtures" / "drim-m-data"
SIGNED = (FIXTURES / "whitelist-signed-test.xml").read_bytes()
UNSIGNED = (FIXTURES / "whitelist-unsigned-test.xml").read_bytes()
DS = "{http://www.w3.org/2000/09/xmldsig#}"
# the IGC-Santé TEST root ("TEST AC RACINE IGC-SANTE ELEMENTAIRE") the sample embeds, pinned by fingerprint
ANS_TEST_ROOT_SHA256 = "01325aeb193871eec90fa89556804e4185cb362e0ca87a3d79939c71186da805"
AT = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)  # inside the sample signer's validity (2026-09-14..2029-09-14)
SIGNER = {"signer_cn": "Liste Blanche DRIM-M", "signer_ou": "318751275100020"}
DB3_DN = "CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR"


def _embedded(data: bytes) -> list[x509.Certificate]:
    root = etree.fromstring(data)
    return [x509.load_der_x509_certificate(base64.b64decode(n.text or "")) for n in root.iter(f"{DS}X509Certificate")]


@pytest.fixture(scope="module")
def ans_root() -> x509.Certificate:
    root = _embedded(SIGNED)[-1]
    assert root.fingerprint(hashes.SHA256()).hex() == ANS_TEST_ROOT_SHA256
    return root


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), "499700367909006")


@pytest.fixture(scope="module")
def sandbox_at(pki: PkiFiles) -> dt.datetime:
    """A moment inside the sandbox signer's validity, fixed by the certificate, not the wall clock."""
    return load_certificates(pki.whitelist_cert)[0].not_valid_before_utc + dt.timedelta(days=1)


def _domains(*numbers: int) -> list[dict[str, object]]:
    return [
        {
            "identifier": str(n),
            "db": f"db{n}.sandbox.example",
            "vi": f"vi{n}.sandbox.example",
            "denomination": "SANDBOX",
            "operator_dn": f"CN=db{n}.sandbox.example,OU=49970036790900{n % 10},O=CABINET {n},ST=Paris (75),C=FR",
            "support_contact": "support@sandbox.example",
            "updated_at": dt.datetime(2026, 1, n % 28 + 1, tzinfo=dt.UTC),
        }
        for n in numbers
    ]


def _issue(
    pki: PkiFiles, cn: str, ou: str, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A signing certificate from the sandbox intermediate (a renamed or short-lived signer)."""
    issuer = load_certificates(pki.intermediate_cert)[0]
    issuer_key = serialization.load_pem_private_key(pki.intermediate_key.read_bytes(), password=None)
    assert isinstance(issuer_key, rsa.RSAPrivateKey)
    return _certificate(cn, ou, issuer.subject, issuer_key, not_before, not_after, issuer)


def _certificate(
    cn: str, ou: str, issuer_name: x509.Name | None, issuer_key: rsa.RSAPrivateKey | None,
    not_before: dt.datetime, not_after: dt.datetime, issuer: x509.Certificate | None = None,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AGENCE DU NUMERIQUE EN SANTE"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
    )
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
        builder = builder.add_extension(aki, critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _crls(pki: PkiFiles) -> list[x509.CertificateRevocationList]:
    return [x509.load_pem_x509_crl(path.read_bytes()) for path in pki.crls]


# -- the genuine ANS test list -------------------------------------------------------------------


def test_genuine_signed_sample_verifies_and_yields_its_domains(ans_root: x509.Certificate) -> None:
    whitelist = verify_whitelist(SIGNED, [ans_root], at=AT, **SIGNER)
    assert whitelist.generated_at == dt.datetime(2026, 6, 19, 18, 6, 52, tzinfo=dt.UTC)
    assert len(whitelist.domains) == 17
    assert whitelist.signer.startswith("CN=Liste Blanche DRIM-M,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE")
    first = whitelist.domains[0]
    assert (first.identifier, first.db, first.vi, first.denomination) == (
        "3", "db3.test.mesimagesmedicales.fr", "vi3.test.mesimagesmedicales.fr", "ANS",
    )  # fmt: skip
    assert first.operator_dn == DB3_DN
    assert first.updated_at == dt.datetime(2024, 12, 10, 11, 27, 12, tzinfo=dt.UTC)
    last = whitelist.domains[-1]
    assert last.db == "db1543.test.mesimagesmedicales.fr"
    assert last.operator_dn.endswith("O=MINISTERE DE TEST3206,ST=Côte-d'Or (21),C=FR")
    assert whitelist.allows_host("db175.test.mesimagesmedicales.fr")
    assert not whitelist.allows_host("db176.test.mesimagesmedicales.fr")
    edl = whitelist.domain_for_dn(
        "CN=db156.test.mesimagesmedicales.fr,OU=300000001832013,O=MINISTERE DE TEST3201,ST=Côte-d'Or (21),C=FR"
    )
    assert edl is not None and edl.denomination == "EDL"


def test_unsigned_sample_is_refused(ans_root: x509.Certificate) -> None:
    with pytest.raises(WhitelistRefused, match="no signature"):
        verify_whitelist(UNSIGNED, [ans_root], at=AT, **SIGNER)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"OU=300000001831981", b"OU=300000001831982", "digest of the list does not match"),  # one byte of a Domaine
        (b"<db>db3.", b"<db>db9.", "digest of the list does not match"),
        (b"2026-09-17T08:27:36Z", b"2026-09-17T08:27:37Z", "digest of #xades-"),  # XAdES SigningTime
        (b"rsa-sha256", b"rsa-sha1", "signature method .* refused"),
        (b"/descendant::ds:Signature<", b"/descendant::ds:Signature | //*[local-name()='Domaine'][1]<", "XPath filter"),
    ],
)
def test_altered_sample_is_refused(ans_root: x509.Certificate, old: bytes, new: bytes, reason: str) -> None:
    assert SIGNED.count(old) == 1
    with pytest.raises(WhitelistRefused, match=reason):
        verify_whitelist(SIGNED.replace(old, new), [ans_root], at=AT, **SIGNER)


def test_altered_signature_value_is_refused(ans_root: x509.Certificate) -> None:
    root = etree.fromstring(SIGNED)
    value = root.find(f"{DS}Signature/{DS}SignatureValue")
    assert value is not None and value.text
    text = value.text.strip()
    flipped = ("B" if text[10] == "A" else "A").encode()
    altered = SIGNED.replace(text.encode(), text[:10].encode() + flipped + text[11:].encode())
    with pytest.raises(WhitelistRefused, match="does not verify with any certificate"):
        verify_whitelist(altered, [ans_root], at=AT, **SIGNER)


def test_a_second_signature_hidden_in_the_content_is_refused(ans_root: x509.Certificate) -> None:
    """Filter 2.0 subtracts every ds:Signature: one inside a Domaine would be unsigned content."""
    smuggled = SIGNED.replace(b"<Denomination>ANS</Denomination>", b'<Denomination>ANS</Denomination><ds:Signature '
                              b'xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/>', 1)  # fmt: skip
    with pytest.raises(WhitelistRefused, match="exactly one ds:Signature"):
        verify_whitelist(smuggled, [ans_root], at=AT, **SIGNER)


def test_doctype_is_refused(ans_root: x509.Certificate) -> None:
    data = SIGNED.replace(b"?><Liste", b'?><!DOCTYPE x [<!ENTITY e "boom">]><Liste', 1)
    with pytest.raises(WhitelistRefused, match="DOCTYPE"):
        verify_whitelist(data, [ans_root], at=AT, **SIGNER)


@pytest.mark.parametrize(
    "at", [dt.datetime(2026, 9, 13, tzinfo=dt.UTC), dt.datetime(2029, 9, 15, tzinfo=dt.UTC)], ids=["before", "after"]
)
def test_sample_refused_outside_its_signer_validity(ans_root: x509.Certificate, at: dt.datetime) -> None:
    with pytest.raises(WhitelistRefused, match="is not valid at"):
        verify_whitelist(SIGNED, [ans_root], at=at, **SIGNER)


def test_sample_refused_for_another_configured_signer_name(ans_root: x509.Certificate) -> None:
    with pytest.raises(WhitelistRefused, match="is not the whitelist signer"):
        verify_whitelist(SIGNED, [ans_root], at=AT, signer_cn="Liste Blanche DRIM-M", signer_ou="499700367909006")


# -- lists the sandbox signs -----------------------------------------------------------------------


def test_sandbox_signed_list_verifies_against_the_sandbox_root_only(
    pki: PkiFiles, ans_root: x509.Certificate, sandbox_at: dt.datetime
) -> None:
    data = sign_whitelist(_domains(1, 2, 3), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert [c.subject for c in _embedded(data)] == [
        load_certificates(path)[0].subject for path in (pki.whitelist_cert, pki.intermediate_cert, pki.root_cert)
    ]
    whitelist = verify_whitelist(data, load_certificates(pki.root_cert), at=sandbox_at, crls=_crls(pki), **SIGNER)
    assert [d.db for d in whitelist.domains] == ["db1.sandbox.example", "db2.sandbox.example", "db3.sandbox.example"]
    assert whitelist.generated_at == dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    with pytest.raises(WhitelistRefused, match="not chained to the trusted ANS CA"):
        verify_whitelist(data, [ans_root], at=sandbox_at, **SIGNER)


def test_list_signed_by_another_key_with_the_same_name_is_refused(pki: PkiFiles, sandbox_at: dt.datetime) -> None:
    start = sandbox_at - dt.timedelta(days=2)
    key, forged = _certificate(
        SIGNER["signer_cn"], SIGNER["signer_ou"], None, None, start, start + dt.timedelta(days=30)
    )
    data = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), key=key, cert=forged)
    with pytest.raises(WhitelistRefused, match="not chained to the trusted ANS CA"):
        verify_whitelist(data, load_certificates(pki.root_cert), at=sandbox_at, **SIGNER)


@pytest.mark.parametrize(("cn", "ou"), [("Liste Grise DRIM-M", "318751275100020"), ("Liste Blanche DRIM-M", "1")])
def test_list_signed_by_a_chained_certificate_of_another_name_is_refused(
    pki: PkiFiles, sandbox_at: dt.datetime, cn: str, ou: str
) -> None:
    start = sandbox_at - dt.timedelta(hours=1)
    key, cert = _issue(pki, cn, ou, start, start + dt.timedelta(days=30))
    data = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), key=key, cert=cert)
    with pytest.raises(WhitelistRefused, match="is not the whitelist signer"):
        verify_whitelist(data, load_certificates(pki.root_cert), at=sandbox_at, **SIGNER)


def test_list_signed_by_an_expired_signer_is_refused(pki: PkiFiles, sandbox_at: dt.datetime) -> None:
    start = sandbox_at - dt.timedelta(hours=2)
    key, cert = _issue(pki, SIGNER["signer_cn"], SIGNER["signer_ou"], start, start + dt.timedelta(hours=1))
    data = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), key=key, cert=cert)
    roots = load_certificates(pki.root_cert)
    assert verify_whitelist(data, roots, at=start + dt.timedelta(minutes=30), **SIGNER).domains
    with pytest.raises(WhitelistRefused, match="is not valid at"):
        verify_whitelist(data, roots, at=sandbox_at, **SIGNER)


def test_list_signed_by_a_revoked_signer_is_refused(pki: PkiFiles, sandbox_at: dt.datetime) -> None:
    start = sandbox_at - dt.timedelta(hours=1)
    key, cert = _issue(pki, SIGNER["signer_cn"], SIGNER["signer_ou"], start, start + dt.timedelta(days=30))
    data = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), key=key, cert=cert)
    roots = load_certificates(pki.root_cert)
    assert verify_whitelist(data, roots, at=sandbox_at, crls=_crls(pki), **SIGNER).domains
    revoke(pki, cert)
    with pytest.raises(WhitelistRefused, match="is revoked"):
        verify_whitelist(data, roots, at=sandbox_at, crls=_crls(pki), **SIGNER)
    root_crl_only = [x509.load_pem_x509_crl(pki.root_crl.read_bytes())]
    with pytest.raises(WhitelistRefused, match="cannot be checked: no CRL"):
        verify_whitelist(data, roots, at=sandbox_at, crls=root_crl_only, **SIGNER)


def test_list_without_domains_is_refused(pki: PkiFiles, sandbox_at: dt.datetime) -> None:
    data = sign_whitelist([], pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    with pytest.raises(WhitelistRefused, match="no Domaine"):
        verify_whitelist(data, load_certificates(pki.root_cert), at=sandbox_at, **SIGNER)


# -- matching peers ------------------------------------------------------------------------------


def _sample(ans_root: x509.Certificate) -> Whitelist:
    return verify_whitelist(SIGNED, [ans_root], at=AT, **SIGNER)


@pytest.mark.parametrize(
    "dn",
    [
        DB3_DN,
        "C=FR,ST=Paris (75),O=AGENCE DU NUMERIQUE EN SANTE,OU=318751275100020,CN=db3.test.mesimagesmedicales.fr",
        "C=FR, ST=Paris (75), O=Agence du Numerique en Sante, OU=318751275100020, CN=DB3.test.mesimagesmedicales.fr",
        "/C=FR/ST=Paris (75)/O=AGENCE DU NUMERIQUE EN SANTE/OU=318751275100020/CN=db3.test.mesimagesmedicales.fr",
        "cn=db3.test.mesimagesmedicales.fr, ou=318751275100020, o=AGENCE  DU NUMERIQUE EN SANTE, st=Paris (75), c=FR",
    ],
)
def test_allows_dn_in_either_order_and_case(ans_root: x509.Certificate, dn: str) -> None:
    assert _sample(ans_root).allows_dn(dn)


@pytest.mark.parametrize(
    "dn",
    [
        "CN=db3.test.mesimagesmedicales.fr,OU=318751275100021,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR",
        "CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,C=FR",
        DB3_DN + ",L=Paris",
        "CN=db3.test.mesimagesmedicales.fr",
        "not a DN",
        "",
    ],
)
def test_refuses_other_dns(ans_root: x509.Certificate, dn: str) -> None:
    assert not _sample(ans_root).allows_dn(dn)


def test_a_certificate_subject_matches_its_listed_domain(ans_root: x509.Certificate) -> None:
    name = x509.Name.from_rfc4514_string(DB3_DN)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    whitelist = _sample(ans_root)
    domain = whitelist.domain_for_dn(dn_of(cert))
    assert domain is not None and domain.db == "db3.test.mesimagesmedicales.fr"
    assert whitelist.domain_for_dn(cert.subject) == domain


# -- keeper without network: rollback, configuration -----------------------------------------------


class Trail:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_keeper_refuses_a_rollback_and_keeps_the_newer_list(
    pki: PkiFiles, sandbox_at: dt.datetime, tmp_path: Path
) -> None:
    newer = sign_whitelist(_domains(1, 2), pki, dt.datetime(2026, 5, 2, tzinfo=dt.UTC))
    older = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    offered = [newer, older]
    trail = Trail()
    settings = WhitelistSettings(trust_anchors=pki.root_cert)
    keeper = WhitelistKeeper(settings, tmp_path, trail, fetch=lambda: offered.pop(0), clock=lambda: sandbox_at)
    assert keeper.refresh().outcome == "accepted"
    result = keeper.refresh()
    assert result.outcome == "refused" and result.reason.startswith("rollback")
    current = keeper.current()
    assert current is not None and len(current.domains) == 2 and result.whitelist == current
    assert (tmp_path / "whitelist.xml").read_bytes() == newer
    assert [(e.action, e.outcome, e.detail["result"]) for e in trail.events] == [
        ("whitelist.refresh", "success", "accepted"),
        ("whitelist.refresh", "failure", "refused"),
    ]
    assert "rollback" in str(trail.events[-1].detail["reason"])


@pytest.mark.parametrize("url", ["http://ans.example/liste.xml", "file:///etc/passwd", "ftp://ans.example/x"])
def test_keeper_only_downloads_over_https(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"whitelist\.url"):
        WhitelistKeeper(WhitelistSettings(url=url, trust_anchors=tmp_path / "x.pem"), tmp_path, Trail())


def test_keeper_needs_trust_anchors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trust_anchors"):
        WhitelistKeeper(WhitelistSettings(url="https://ans.example/liste.xml"), tmp_path, Trail())


def test_status_report_reads_well(pki: PkiFiles, sandbox_at: dt.datetime, tmp_path: Path) -> None:
    data = sign_whitelist(_domains(1), pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    settings = WhitelistSettings(url="https://ans.example/liste.xml", trust_anchors=pki.root_cert)
    keeper = WhitelistKeeper(settings, tmp_path, Trail(), fetch=lambda: data, clock=lambda: sandbox_at)
    assert format_status(keeper.status()).startswith("NO WHITELIST IN FORCE")
    keeper.refresh()
    text = format_status(keeper.status())
    assert text.startswith("OK: whitelist in force and fresh")
    assert "domains        1" in text and "https://ans.example/liste.xml" in text

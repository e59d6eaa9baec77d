"""A test PKI shaped like IGC-Santé, for the sandbox services, the demo and the tests.

The national services only trust IGC-Santé: a root, an intermediate "AC ELEMENTAIRE ORGANISATIONS",
and per-structure ORG certificates whose subject carries the structure id as OU (DRIM-M §4.5, §4.11:
`CN=DRIMbox, OU=499700367909006, O=…, C=FR`). One ORG certificate authenticates TLS (`auth.p12`,
EKU clientAuth) and another signs the VIHF and the XAdES (`signature.p12`, digitalSignature +
nonRepudiation). This module issues the same shapes from a sandbox root, plus a TLS server
certificate for the local listeners and the signer of the "Liste Blanche DRIM-M" (§4.12).

Everything lands in one folder, reused when called again (`force=True` starts over), so a demo or a
test session keeps one trust anchor. Keys are RSA 2048 as the IGC-Santé ones; certificates are
signed with SHA-256 (cryptography's verifier refuses SHA-1 certificates). Private keys are written
unencrypted next to password-protected PKCS#12 files: this is a test PKI, never a production one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

ROOT_NAME = "TEST AC IGC-SANTE RACINE (sandbox)"
INTERMEDIATE_NAME = "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS (sandbox)"
WHITELIST_SIGNER = "Liste Blanche DRIM-M"
WHITELIST_STRUCTURE = "318751275100020"  # the ANS structure id the real whitelist signer carries
DEFAULT_PASSWORD = "sandbox-pki"  # a test PKI: the password is no secret
_META = "pki.json"
_REVOKED = "revoked.json"
OCSP_RESPONDER_NAME = "TEST OCSP IGC-SANTE ELEMENTAIRE ORGANISATIONS (sandbox)"


@dataclass(frozen=True)
class OrganisationFiles:
    """The two IGC-Santé ORG certificates of one structure: TLS ("auth") and signature."""

    structure_id: str
    name: str
    password: str
    auth_p12: Path
    auth_cert: Path  # PEM: certificate then intermediate
    auth_key: Path
    signature_p12: Path
    signature_cert: Path
    signature_key: Path


@dataclass(frozen=True)
class PkiFiles:
    """Paths of a sandbox PKI. `ca_bundle` (root + intermediate) is what a peer trusts."""

    folder: Path
    password: str
    root_cert: Path
    root_key: Path
    intermediate_cert: Path
    intermediate_key: Path
    ca_bundle: Path
    root_crl: Path
    intermediate_crl: Path
    server_cert: Path  # PEM: certificate then intermediate
    server_key: Path
    whitelist_p12: Path
    whitelist_cert: Path
    whitelist_key: Path
    organisation: OrganisationFiles

    @property
    def crls(self) -> tuple[Path, Path]:
        return self.root_crl, self.intermediate_crl


def create_pki(
    folder: Path,
    structure_id: str,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    password: str = DEFAULT_PASSWORD,
    *,
    organisation_name: str = "CABINET D'IMAGERIE SANDBOX",
    ca_days: int = 3650,
    leaf_days: int = 365,
    force: bool = False,
) -> PkiFiles:
    """Issue (or reuse) a root, an intermediate, the structure's ORG certificates, a TLS server
    certificate for `hosts`, the whitelist signer and empty CRLs, all under `folder`."""
    if not structure_id.strip() or not hosts:
        raise ValueError("create_pki needs a structure id and at least one host")
    meta_path = folder / _META
    wanted = {"structure_id": structure_id, "hosts": list(hosts), "password": password, "name": organisation_name}
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if {key: meta.get(key) for key in wanted} != wanted:
            raise ValueError(f"{folder} already holds a PKI for other parameters; pass force=True to replace it")
        return load_pki(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (_REVOKED, _META):
        (folder / stale).unlink(missing_ok=True)
    now = _now()
    root_key, inter_key = _new_key(), _new_key()
    root = _ca_certificate(_ca_name(ROOT_NAME), root_key, None, root_key, now, ca_days, path_length=1)
    inter = _ca_certificate(_ca_name(INTERMEDIATE_NAME), inter_key, root, root_key, now, ca_days, path_length=0)
    _write_key(folder / "root.key", root_key)
    _write_key(folder / "intermediate.key", inter_key)
    _write_certs(folder / "root.pem", [root])
    _write_certs(folder / "intermediate.pem", [inter])
    _write_certs(folder / "ca.pem", [root, inter])
    server_key = _new_key()
    server = _leaf(_server_name(hosts[0]), server_key, inter, inter_key, now, leaf_days, _server_extensions(hosts))
    _write_key(folder / "server.key", server_key)
    _write_certs(folder / "server.pem", [server, inter])
    signer_name = _org_name(WHITELIST_SIGNER, WHITELIST_STRUCTURE, "AGENCE DU NUMERIQUE EN SANTE (sandbox)")
    _issue_pair(
        folder, "whitelist", signer_name, _signature_extensions(), (inter, inter_key, root), password, leaf_days
    )
    meta_path.write_text(json.dumps(wanted | {"leaf_days": leaf_days}), encoding="utf-8")
    issue_organisation(folder, structure_id, organisation_name, _main=True)
    _write_crls(folder)
    return load_pki(folder)


def issue_organisation(pki_folder: Path, structure_id: str, name: str, *, _main: bool = False) -> OrganisationFiles:
    """Issue the auth and signature certificates of another structure under the same CA (into
    `<pki_folder>/<structure_id>/`), e.g. to test that the DMP refuses the wrong structure."""
    meta = json.loads((pki_folder / _META).read_text(encoding="utf-8"))
    target = pki_folder if _main else pki_folder / structure_id
    target.mkdir(parents=True, exist_ok=True)
    ca = (_load_cert(pki_folder / "intermediate.pem"), _load_key(pki_folder / "intermediate.key"),
          _load_cert(pki_folder / "root.pem"))  # fmt: skip
    subject = _org_name("DRIMbox", structure_id, name)
    password, days = str(meta["password"]), int(meta["leaf_days"])
    _issue_pair(target, "auth", subject, _auth_extensions(), ca, password, days)
    _issue_pair(target, "signature", subject, _signature_extensions(), ca, password, days)
    return _organisation(target, structure_id, name, password)


def issue_dated_organisation(
    pki_folder: Path, label: str, structure_id: str, name: str, not_before: dt.datetime, not_after: dt.datetime,
    *, ocsp_url: str | None = None,
) -> OrganisationFiles:  # fmt: skip
    """Issue a structure's ORG certificates with chosen validity dates (an expired or not yet valid
    one) into `<pki_folder>/<label>/`; `ocsp_url` adds an Authority Information Access pointing at
    an OCSP responder, as IGC-Santé certificates carry."""
    meta = json.loads((pki_folder / _META).read_text(encoding="utf-8"))
    target = pki_folder / label
    target.mkdir(parents=True, exist_ok=True)
    ca = (_load_cert(pki_folder / "intermediate.pem"), _load_key(pki_folder / "intermediate.key"),
          _load_cert(pki_folder / "root.pem"))  # fmt: skip
    subject, password = _org_name("DRIMbox", structure_id, name), str(meta["password"])
    access = [] if ocsp_url is None else [(_ocsp_access(ocsp_url), False)]
    validity = (not_before, not_after)
    _issue_pair(target, "auth", subject, [*_auth_extensions(), *access], ca, password, 0, validity)
    _issue_pair(target, "signature", subject, [*_signature_extensions(), *access], ca, password, 0, validity)
    return _organisation(target, structure_id, name, password)


def issue_ocsp_responder(pki: PkiFiles) -> tuple[Path, Path]:
    """Issue (or reuse) the delegated OCSP responder of the intermediate (EKU OCSPSigning, id-pkix-ocsp-nocheck,
    RFC 6960 §4.2.2.2): (certificate PEM, key PEM) under `<pki>/ocsp/`."""
    target = pki.folder / "ocsp"
    cert_path, key_path = target / "responder.pem", target / "responder.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    target.mkdir(parents=True, exist_ok=True)
    meta = json.loads((pki.folder / _META).read_text(encoding="utf-8"))
    issuer, issuer_key = _load_cert(pki.intermediate_cert), _load_key(pki.intermediate_key)
    key = _new_key()
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)  # digitalSignature
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (usage, True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False), (x509.OCSPNoCheck(), False),
    ]  # fmt: skip
    name = _name((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
                 (NameOID.COMMON_NAME, OCSP_RESPONDER_NAME))  # fmt: skip
    cert = _leaf(name, key, issuer, issuer_key, _now(), int(meta["leaf_days"]), extensions)
    _write_key(key_path, key)
    _write_certs(cert_path, [cert, issuer])
    return cert_path, key_path


def revoked_serials(pki: PkiFiles) -> dict[str, list[int]]:
    """The serials revoked so far, by issuing CA ("root", "intermediate"): what the CRLs list."""
    return _revoked(pki.folder)


def load_pki(folder: Path) -> PkiFiles:
    """The PkiFiles of a folder `create_pki` filled."""
    meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    password = str(meta["password"])
    files = PkiFiles(
        folder=folder,
        password=password,
        root_cert=folder / "root.pem",
        root_key=folder / "root.key",
        intermediate_cert=folder / "intermediate.pem",
        intermediate_key=folder / "intermediate.key",
        ca_bundle=folder / "ca.pem",
        root_crl=folder / "root.crl.pem",
        intermediate_crl=folder / "intermediate.crl.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        whitelist_p12=folder / "whitelist.p12",
        whitelist_cert=folder / "whitelist.pem",
        whitelist_key=folder / "whitelist.key",
        organisation=_organisation(folder, str(meta["structure_id"]), str(meta["name"]), password),
    )
    missing = [path.name for path in _paths(files) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is an incomplete sandbox PKI (missing {', '.join(missing)}); use force=True")
    return files


def revoke(pki: PkiFiles, serial_or_cert: int | x509.Certificate | Path) -> None:
    """Revoke a certificate (or a serial number of the intermediate's) and re-issue both CRLs."""
    if isinstance(serial_or_cert, Path):
        serial_or_cert = x509.load_pem_x509_certificates(serial_or_cert.read_bytes())[0]
    issuer = "intermediate"
    if isinstance(serial_or_cert, x509.Certificate):
        if serial_or_cert.issuer == _load_cert(pki.root_cert).subject:
            issuer = "root"
        serial = serial_or_cert.serial_number
    else:
        serial = serial_or_cert
    ledger = _revoked(pki.folder)
    if serial not in ledger[issuer]:
        ledger[issuer].append(serial)
    (pki.folder / _REVOKED).write_text(json.dumps(ledger), encoding="utf-8")
    _write_crls(pki.folder)


def load_certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


# -- issuing -------------------------------------------------------------------------------------

_Ca = tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]  # issuer, its key, the root


def _issue_pair(
    folder: Path, stem: str, subject: x509.Name, extensions: list[tuple[x509.ExtensionType, bool]],
    ca: _Ca, password: str, days: int, validity: tuple[dt.datetime, dt.datetime] | None = None,
) -> None:  # fmt: skip
    issuer, issuer_key, root = ca
    key = _new_key()
    cert = _leaf(subject, key, issuer, issuer_key, _now(), days, extensions, validity)
    _write_key(folder / f"{stem}.key", key)
    _write_certs(folder / f"{stem}.pem", [cert, issuer])
    encryption = serialization.BestAvailableEncryption(password.encode("utf-8"))
    blob = pkcs12.serialize_key_and_certificates(stem.encode(), key, cert, [issuer, root], encryption)
    (folder / f"{stem}.p12").write_bytes(blob)


def _ca_certificate(
    name: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None, issuer_key: rsa.RSAPrivateKey,
    now: dt.datetime, days: int, *, path_length: int,
) -> x509.Certificate:  # fmt: skip
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
    builder = _base(name, key, issuer.subject if issuer else name, now, days)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    builder = builder.add_extension(usage, critical=True)
    authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key() if issuer is None else _rsa(issuer.public_key()))
    )
    builder = builder.add_extension(authority, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf(
    subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Certificate, issuer_key: rsa.RSAPrivateKey,
    now: dt.datetime, days: int, extensions: list[tuple[x509.ExtensionType, bool]],
    validity: tuple[dt.datetime, dt.datetime] | None = None,
) -> x509.Certificate:  # fmt: skip
    builder = _base(subject, key, issuer.subject, now, days, validity)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(_rsa(issuer.public_key()))
    builder = builder.add_extension(aki, critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _base(
    subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, now: dt.datetime, days: int,
    validity: tuple[dt.datetime, dt.datetime] | None = None,
) -> x509.CertificateBuilder:  # fmt: skip
    # by default, from an hour ago: tolerate a peer's clock a little behind
    not_before, not_after = validity or (now - dt.timedelta(hours=1), now + dt.timedelta(days=days))
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _auth_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)  # digitalSignature, keyEnc.
    return [(usage, True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]


def _signature_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    usage = x509.KeyUsage(True, True, False, False, False, False, False, False, False)  # digitalSig., nonRepudiation
    return [(usage, True)]


def _ocsp_access(url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]
    )


def _server_extensions(hosts: Sequence[str]) -> list[tuple[x509.ExtensionType, bool]]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    return [(usage, True), (eku, False), (x509.SubjectAlternativeName(names), False)]


def _write_crls(folder: Path) -> None:
    """One CRL per CA, valid a week, listing the ledger's serials (re-issued at each revocation)."""
    ledger, now = _revoked(folder), _now()
    for which in ("root", "intermediate"):
        ca, key = _load_cert(folder / f"{which}.pem"), _load_key(folder / f"{which}.key")
        builder = x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
        builder = builder.last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=7))
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(_rsa(ca.public_key()))
        builder = builder.add_extension(aki, critical=False)
        builder = builder.add_extension(x509.CRLNumber(len(ledger[which]) + 1), critical=False)
        for serial in ledger[which]:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(key, hashes.SHA256())
        (folder / f"{which}.crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


# -- names and files -----------------------------------------------------------------------------


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _ca_name(common_name: str) -> x509.Name:
    """The DN shape of the IGC-Santé TEST CAs (`CN=TEST AC IGC-SANTE …, OU=IGC-SANTE TEST, OU=0002 187512751, …`)."""
    ou = NameOID.ORGANIZATIONAL_UNIT_NAME
    return _name((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "ASIP-SANTE"), (ou, "0002 187512751"),
                 (ou, "IGC-SANTE SANDBOX"), (NameOID.COMMON_NAME, common_name))  # fmt: skip


def _org_name(common_name: str, structure_id: str, organisation: str) -> x509.Name:
    """`CN=…, OU=<structure id>, O=…, C=FR`, the DN shape of an IGC-Santé ORG certificate."""
    return _name((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, organisation),
                 (NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id), (NameOID.COMMON_NAME, common_name))  # fmt: skip


def _server_name(host: str) -> x509.Name:
    return _name(
        (NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "DRIMbox sandbox"), (NameOID.COMMON_NAME, host)
    )


def _organisation(folder: Path, structure_id: str, name: str, password: str) -> OrganisationFiles:
    return OrganisationFiles(
        structure_id=structure_id,
        name=name,
        password=password,
        auth_p12=folder / "auth.p12",
        auth_cert=folder / "auth.pem",
        auth_key=folder / "auth.key",
        signature_p12=folder / "signature.p12",
        signature_cert=folder / "signature.pem",
        signature_key=folder / "signature.key",
    )


def _paths(files: PkiFiles) -> list[Path]:
    org = files.organisation
    paths = [value for value in vars(files).values() if isinstance(value, Path) and value != files.folder]
    return [*paths, org.auth_p12, org.auth_cert, org.auth_key, org.signature_p12, org.signature_cert, org.signature_key]


def _revoked(folder: Path) -> dict[str, list[int]]:
    path = folder / _REVOKED
    ledger: dict[str, list[int]] = {"root": [], "intermediate": []}
    if path.exists():
        ledger |= {key: [int(serial) for serial in value] for key, value in json.loads(path.read_text()).items()}
    return ledger


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA key")
    return key


def _rsa(key: object) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the sandbox PKI only holds RSA keys")
    return key


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_certs(path: Path, certs: Sequence[x509.Certificate]) -> None:
    path.write_bytes(b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)

"""The settings object: one typed tree read from `config/drimbox.toml`, then the environment.

`DRIMBOX_HTTP__PORT=9000` overrides `[http] port`. Built once (in the CLI or `daemon.py`) and
passed down; no module reads the environment itself. Invalid settings raise `ConfigError` whose
message names the key, where it came from and how to fix it.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from drimbox.errors import ConfigError

ENV_PREFIX = "DRIMBOX_"
DEFAULT_CONFIG = Path("config/drimbox.toml")

# Hints appended to validation messages, by key (the last part of the location).
_FIXES: dict[str, str] = {
    "port": "use a TCP port between 1 and 65535",
    "ae_title": "use 1 to 16 characters among A-Z, 0-9, '-', '_' and space (no backslash)",
    "public_base_url": "give the https:// URL remote boxes use to reach this box, e.g. https://db1.example.fr",
    "bind": "give an IP address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
    "structure_id": "give the FINESS or SIRET of the site",
    "retrieve": 'write "c-get" or "c-move" (C-MOVE needs our AE title declared in the PACS)',
    "url": "give a SQLAlchemy URL, e.g. sqlite:///data/drimbox.db or postgresql+psycopg://user@host/db",
    "host": "give the host name or IP address of the PACS",
    "mode": 'write "production" or "demo"',
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ip(value: str) -> str:
    ipaddress.ip_address(value)
    return value


def _check_ae_title(value: str) -> str:
    text = value.strip()
    if not 1 <= len(text) <= 16 or "\\" in text or not text.isascii() or not text.isprintable():
        raise ValueError(f"{value!r} is not a valid AE title")
    return text


class SiteSettings(_Section):
    """Who we are on the DRIM-M network."""

    structure_id: str = Field(min_length=1, description="FINESS or SIRET of the site")
    name: str = Field(min_length=1)


class TlsSettings(_Section):
    """TLS on our HTTP listener, so the box can face the network without a separate proxy.

    `client_ca` set means mutual TLS (DRIM-M A9): a client must present a certificate chaining to
    it (the DRIM-M operators' IGC-Santé ORG certificates), not revoked (`revocation`: CRL files,
    OCSP, or both; fail closed unless `revocation_fail_open`), and, when `whitelist_peers`, whose
    subject DN is a `DNCertificatOperateur` of the whitelist in force.
    """

    certificate: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    revocation: Literal["crl", "ocsp", "crl+ocsp", "none"] = "crl"
    crl_files: list[Path] = Field(default_factory=list, description="PEM or DER CRLs of every CA in client_ca")
    ocsp_url: str = Field(default="", description="OCSP responder; empty = the certificate's AIA")
    ocsp_timeout_seconds: float = Field(default=5, gt=0)
    revocation_fail_open: bool = Field(default=False, description="let a peer in when revocation cannot be checked")
    whitelist_peers: bool = Field(default=True, description="only peers whose DN is in the ANS whitelist")
    minimum_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("http.tls: give both certificate and key, or neither")
        if self.client_ca is not None and self.certificate is None:
            raise ValueError("http.tls.client_ca: requires certificate and key (mutual TLS is TLS first)")
        if self.client_ca is not None and "crl" in self.revocation and not self.crl_files:
            raise ValueError('http.tls.crl_files: required when revocation includes "crl" (or set revocation)')
        return self


class HttpSettings(_Section):
    """The HTTP listener (status, later DICOMweb) and the URL others use to reach it."""

    bind: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_base_url: str
    tls: TlsSettings = TlsSettings()

    _bind_ip = field_validator("bind")(lambda cls, v: _check_ip(v))

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
            raise ValueError("must be an absolute http(s) URL without query or fragment")
        return value.rstrip("/")


class AuthSettings(_Section):
    """How a bearer token is checked (DRIM-M A7) and how the KOS binds it to a study (A8).

    `verifier = "introspection"` asks the Pro Santé Connect introspection endpoint (RFC 7662),
    authenticating with our ORG_AUTH_CLI certificate (RFC 8705) or a client secret;
    `verifier = "jwks"` validates signed JWTs against the provider's published keys.
    """

    verifier: Literal["introspection", "jwks"] = "introspection"
    introspection_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    client_certificate: Path | None = None
    client_key: Path | None = None
    ca_bundle: Path | None = None
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    cache_seconds: float = Field(default=60, ge=0, description="longest a verdict is reused; never past expiry")
    timeout_seconds: float = Field(default=5, gt=0)
    userinfo_url: str = Field(default="", description="asked when introspection names no profession (SubjectRefPro)")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive provider failures that open the breaker")
    breaker_cool_down_seconds: float = Field(default=30, ge=0, description="no call to the provider meanwhile")
    kos_mismatch_status: Literal[403, 404] = 404
    operators: list[str] = Field(
        default_factory=list,
        description="PSC national ids (SubjectNameID) allowed on the operator pages (/publications, /audit); "
        "empty: nobody in production, any authenticated professional in demo mode",
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if self.verifier == "introspection" and not self.introspection_url:
            raise ValueError('auth.introspection_url: required when verifier = "introspection"')
        if self.verifier == "jwks" and not (self.jwks_url and self.issuer):
            raise ValueError('auth.jwks_url and auth.issuer: required when verifier = "jwks"')
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("auth.client_certificate and auth.client_key: give both or neither")
        return self


class DicomwebSettings(_Section):
    """The DICOMweb service (QIDO-RS, WADO-RS) remote readers use."""

    prefix: str = Field(default="/dicom-web", pattern=r"^(/[A-Za-z0-9._-]+)+$")
    default_limit: int = Field(default=100, ge=1, le=100_000)
    max_limit: int = Field(default=1000, ge=1, le=100_000)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    transcode: Literal["when-needed", "client-preference"] = "when-needed"


class DimseSettings(_Section):
    """Our own DICOM node: the C-STORE SCP and the AE title we call PACS peers with."""

    bind: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    ae_title: str = "DRIMBOX"
    max_associations: int = Field(default=16, ge=1, le=512)
    max_associations_per_peer: int = Field(default=4, ge=1, le=64)
    idle_timeout: float = Field(default=120.0, gt=0, description="seconds without any byte before giving up")
    connect_timeout: float = Field(default=30.0, gt=0)
    max_pdu: int = Field(default=4_194_304, ge=0, description="largest PDU we accept; 0 = unlimited")
    retrieval_processes_idle_minutes: float = Field(
        default=10.0, ge=0, description="minutes unused before the C-GET worker and admission processes stop (0: never)"
    )
    accept_from: list[str] = Field(
        default_factory=list, description="AE titles that may send to us besides the PACS peers, from any address"
    )

    _bind_ip = field_validator("bind")(lambda cls, v: _check_ip(v))
    _aet = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))


class PacsPeer(_Section):
    """One PACS we index and retrieve from."""

    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    retrieve: Literal["c-get", "c-move"] = "c-get"
    max_associations: int = Field(default=4, ge=1, le=64)
    retrieve_processes: int = Field(
        default=2, ge=1, le=16, description="C-GET associations in parallel, one per worker process"
    )
    parallel_min_instances: int = Field(
        default=32, ge=2, description="split a C-GET over processes only from this many instances"
    )
    split_by: Literal["series", "instances"] = Field(
        default="series",
        description="how a split C-GET is shared: whole series (SERIES level), or lists of instances (IMAGE level)",
    )
    max_find_matches: int | None = Field(default=None, ge=1, description="the PACS's own match limit, if it has one")

    _aet = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))


class DatabaseSettings(_Section):
    """The index database; SQLite in the data folder unless a URL is given."""

    url: str | None = None
    auto_upgrade: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite and postgresql URLs are supported")
        return value


class StoreSettings(_Section):
    """Where instance files, the SQLite index and work files live."""

    folder: Path = Path("data")
    fsync: bool = Field(default=False, description="fsync each instance before it enters the store")
    max_bytes: int = Field(default=0, ge=0, description="cache bound on instance files; 0 = unbounded")
    eviction: Literal["lru"] = "lru"


class IndexSettings(_Section):
    """How the PACS is indexed: a recent window often, everything nightly."""

    window_days: int = Field(default=7, ge=1, le=36500)
    interval_minutes: float = Field(default=15, ge=0, description="0 disables periodic indexing")
    full_at_hour: int = Field(default=2, ge=0, le=23, description="local hour of the nightly full pass")
    echo_interval_seconds: float = Field(default=60, gt=0)


class Hl7Settings(_Section):
    """The MLLP listener the RIS sends validated reports to (CI-SIS HL7v2 profile 2.1)."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535, description="0 = any free port (tests)")
    accept_from: list[str] = Field(default_factory=list, description="client IPs allowed; empty = any")
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_connections: int = Field(default=32, ge=1, le=1024)
    idle_timeout: float = Field(default=300.0, gt=0, description="seconds a silent connection is kept")
    imaging_document_types: list[str] = Field(default_factory=lambda: ["18748-4"], min_length=1)
    other_document_types: Literal["reject", "ignore"] = Field(
        default="reject", description="reject = AE naming the type; ignore = AA, recorded, nothing published"
    )
    business_ack: bool = Field(default=False, description="send ZAM^Z01 to the RIS once the DMP answered")
    business_ack_host: str = ""
    business_ack_port: int = Field(default=2576, ge=1, le=65535)

    _bind_ip = field_validator("bind")(lambda cls, v: _check_ip(v))


class PublicationSettings(_Section):
    """How report intents become DMP submissions: waiting for images, retries, what is sent."""

    enabled: bool = True
    peer: str = Field(default="", description="PACS peer holding the studies; empty = the only one")
    wait_for_images_hours: float = Field(default=24, gt=0)
    images_retry_seconds: float = Field(default=300, gt=0, description="between two looks at an incomplete study")
    retry_base_seconds: float = Field(default=30, gt=0, description="first wait after a DMP network error")
    retry_max_seconds: float = Field(default=3600, gt=0)
    give_up_hours: float = Field(default=72, gt=0, description="an intent still unsent after this is failed")
    poll_seconds: float = Field(default=2, gt=0, description="how often the worker looks for due work")
    concurrency: int = Field(default=4, ge=1, le=32, description="publications of different studies sent at once")
    include_report: bool = Field(default=False, description="also publish the CDA report in the submission set")
    replacement: Literal["explicit", "explicit-or-new-report"] = Field(
        default="explicit-or-new-report",
        description="explicit-or-new-report also replaces when a new report names an already published study",
    )
    check_accession: bool = True
    check_patient_id: bool = True
    ins_roots: list[str] = Field(
        default_factory=lambda: ["1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9"],
        description="INS OIDs accepted as qualified identities (demo adds the test OIDs)",
    )
    kos_series_number: int = Field(default=9999, ge=1)


class DmpSettings(_Section):
    """The DMP (IHE XDS.b over SOAP 1.2/MTOM, mutual TLS, VIHF). Files are PKCS#12 (IGC-Santé ORG)."""

    url: str = "https://lps.dev9.dmp.gouv.fr/si-dmp-server/v2/services"
    auth_pkcs12: Path | None = Field(default=None, description="ORG certificate for TLS client authentication")
    auth_password: str = ""
    signature_pkcs12: Path | None = Field(default=None, description="ORG certificate signing VIHF and XAdES")
    signature_password: str = ""
    ca_bundle: Path | None = Field(default=None, description="CA certificates for the DMP's server certificate")
    timeout_seconds: float = Field(default=30, gt=0)
    signature_algorithm: Literal["rsa-sha1", "rsa-sha256"] = "rsa-sha1"
    source_id: str = Field(default="", description="our sourceId OID (SubmissionSet.sourceId)")
    uid_root: str = Field(default="", description="OID root for submission uniqueIds; empty = 2.25 UUIDs")
    lps_id: str = ""
    lps_name: str = "DRIMbox"
    lps_version: str = "0.1.0"
    homologation_id: str = ""
    author: Literal["person", "device"] = "person"
    content_type_code: str = "04"
    content_type_system: str = "1.2.250.1.213.2.2"
    content_type_display: str = "Hospitalisation de jour"
    practice_setting_code: str = "AMBULATOIRE"
    facility_type_code: str = "SA07"
    default_author_role: str = Field(
        default="G15_10/SM44", description="profession/specialty (VIHF roles) when the report's author has no code"
    )


class WhitelistSettings(_Section):
    """The ANS whitelist of DRIM-M boxes (DRIM-M §4.12, A9): downloaded, signature-checked, kept.

    The list in force is the last one whose XMLDSig/XAdES signature verified with a signer chained
    to `trust_anchors` and named `signer_cn`/`signer_ou`; a refused download never replaces it.
    """

    url: str = Field(default="", description="where the signed list is published; empty = `initial_file` only")
    initial_file: Path | None = Field(default=None, description="a signed list to start from (verified too)")
    trust_anchors: Path | None = Field(default=None, description="PEM: IGC-Santé root(s) the signer chains to")
    crl_files: list[Path] = Field(default_factory=list, description="CRLs checked for the signer's chain")
    signer_cn: str = "Liste Blanche DRIM-M"
    signer_ou: str = "318751275100020"
    refresh_hours: float = Field(default=24, gt=0)
    retry_minutes: float = Field(default=30, gt=0, description="after a failed download")
    max_age_hours: float = Field(default=48, gt=0, description="alert when the list in force is older")
    timeout_seconds: float = Field(default=30, gt=0)
    ca_bundle: Path | None = Field(default=None, description="CA certificates for the download's https server")


class AuditSettings(_Section):
    """The audit trail (DRIM-M §6): hash-chained records in the index, exported as DICOM PS3.15
    audit messages over syslog (RFC 5424 over TLS, RFC 5425) when `syslog_host` is set."""

    syslog_host: str = ""
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_ca: Path | None = Field(default=None, description="CA certificates of the collector")
    syslog_certificate: Path | None = Field(default=None, description="our client certificate (PEM), optional")
    syslog_key: Path | None = None
    syslog_app_name: str = "drimbox"
    source_id: str = Field(default="", description="AuditSourceID; empty = the site's structure id")
    export_batch: int = Field(default=200, ge=1, le=10_000)
    export_retry_seconds: float = Field(default=10, gt=0)


class LimitSettings(_Section):
    """Per-peer request limits on the HTTP listener (hardening)."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest request body accepted")
    max_header_bytes: int = Field(default=16_384, ge=1024)
    requests_per_minute: int = Field(default=6000, ge=1, description="per client address (and per peer DN)")
    burst: int = Field(default=600, ge=1)


class StatisticsSettings(_Section):
    """The ANS statistics export (ModelStat, DRIM-M §6)."""

    columns: list[str] = Field(
        default_factory=lambda: ["Date", "Identifiant_DRIMbox", "Nombre_Appel", "Statut_Appel"],
        description="columns of the CSV, in order (known: see docs/trust.md)",
    )


class Settings(BaseSettings):
    """Everything drimbox needs to run, validated at start."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    mode: Literal["production", "demo"] = "production"
    site: SiteSettings
    http: HttpSettings
    dimse: DimseSettings = DimseSettings()
    pacs: dict[str, PacsPeer] = Field(default_factory=dict)
    database: DatabaseSettings = DatabaseSettings()
    store: StoreSettings = StoreSettings()
    index: IndexSettings = IndexSettings()
    auth: AuthSettings
    dicomweb: DicomwebSettings = DicomwebSettings()
    hl7: Hl7Settings = Hl7Settings()
    publication: PublicationSettings = PublicationSettings()
    dmp: DmpSettings = DmpSettings()
    whitelist: WhitelistSettings = WhitelistSettings()
    audit: AuditSettings = AuditSettings()
    limits: LimitSettings = LimitSettings()
    statistics: StatisticsSettings = StatisticsSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment wins over it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.mode == "production" and not self.http.public_base_url.startswith("https://"):
            raise ValueError('http.public_base_url: must be https in production (mode = "demo" allows http)')
        if self.mode == "production":
            for key in ("introspection_url", "jwks_url", "userinfo_url"):
                url = getattr(self.auth, key)
                if url and not url.startswith("https://"):
                    raise ValueError(f'auth.{key}: must be https in production (mode = "demo" allows http)')
        if self.mode == "production" and self.auth.verifier == "introspection" and self.auth.client_certificate is None:
            raise ValueError("auth.client_certificate: required in production: Pro Santé Connect authenticates the "
                             "box by its ORG_AUTH_CLI certificate (RFC 8705), not by a client secret")  # fmt: skip
        if self.mode == "production" and not self.dmp.url.startswith("https://"):
            raise ValueError('dmp.url: must be https in production (mode = "demo" allows http)')
        if self.mode == "production" and self.publication.enabled and not self.dmp.homologation_id:
            raise ValueError("dmp.homologation_id: give the DMP homologation number (VIHF LPS_ID_HOMOLOGATION_DMP)")
        if self.dicomweb.workers > 1 and self.http.tls.client_ca is not None:
            raise ValueError("dicomweb.workers: must be 1 with mutual TLS (http.tls.client_ca): the listener that "
                             "checks and audits each peer runs in the daemon's process")  # fmt: skip
        for name, peer in self.pacs.items():
            if self.dicomweb.workers > 1 and peer.retrieve == "c-move":
                raise ValueError(f"pacs.{name}.retrieve: must be c-get when dicomweb.workers > 1 "
                                 "(C-MOVE deliveries reach the main process only)")  # fmt: skip
            if peer.ae_title == self.dimse.ae_title:
                raise ValueError(f"pacs.{name}.ae_title: must differ from dimse.ae_title")
        return self

    @property
    def database_url(self) -> str:
        """The configured URL, or a SQLite file in the data folder."""
        return self.database.url or f"sqlite:///{self.store.folder / 'drimbox.db'}"

    def peer(self, name: str) -> PacsPeer:
        """The PACS peer called `name`, or ConfigError listing the known ones."""
        try:
            return self.pacs[name]
        except KeyError:
            known = ", ".join(sorted(self.pacs)) or "none configured"
            raise ConfigError(f"unknown PACS peer {name!r} (known: {known}); see [pacs.<name>]") from None


def load_settings(path: Path | None = None) -> Settings:
    """Read `path` (default `config/drimbox.toml`) and the environment into a Settings.

    Relative paths in the file are taken relative to the file's own folder, so a service
    started from any working directory finds the same data folder.
    """
    file = path or DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        _secrets_in_file(data, file)
    elif path is not None:
        raise ConfigError(f"{file}: no such configuration file (give --config PATH)")
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, file)) from None
    except ValueError as exc:  # raised by the model validator outside pydantic's wrapper
        raise ConfigError(f"{file}: {exc}") from None
    return _resolve_paths(settings, file.resolve().parent)


# Secrets a production file must not hold: they come from the environment (or a secrets manager
# filling it), so a configuration file can be shared, versioned and backed up without them.
SECRET_KEYS = (("auth", "client_secret"), ("dmp", "auth_password"), ("dmp", "signature_password"))


def _secrets_in_file(data: dict[str, Any], file: Path) -> None:
    if data.get("mode", "production") != "production":
        return
    for section, key in SECRET_KEYS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if value:
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            raise ConfigError(f"{file}: {section}.{key}: a secret must not be written in the configuration file "
                              f"in production; set {env} in the service's environment instead")  # fmt: skip


def private_key_problems(settings: Settings) -> list[str]:
    """Private keys (PEM or PKCS#12) that users other than the service's own could read."""
    keys = [settings.http.tls.key, settings.auth.client_key, settings.audit.syslog_key,
            settings.dmp.auth_pkcs12, settings.dmp.signature_pkcs12]  # fmt: skip
    problems = []
    for path in keys:
        if path is None or not path.exists():
            continue
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            problems.append(f"{path}: readable by other users (mode {mode:o}); run chmod 600 {path}")
    return problems


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolved(section: _Section, *keys: str) -> Any:
        updates = {}
        for key in keys:
            value = getattr(section, key)
            if isinstance(value, Path) and not value.is_absolute():
                updates[key] = (base / value).resolve()
        return section.model_copy(update=updates)

    tls = resolved(settings.http.tls, "certificate", "key", "client_ca")
    tls = tls.model_copy(update={"crl_files": [base / path for path in settings.http.tls.crl_files]})
    whitelist = resolved(settings.whitelist, "initial_file", "trust_anchors", "ca_bundle")
    whitelist = whitelist.model_copy(update={"crl_files": [base / path for path in settings.whitelist.crl_files]})
    return settings.model_copy(
        update={
            "store": resolved(settings.store, "folder"),
            "http": settings.http.model_copy(update={"tls": tls}),
            "auth": resolved(settings.auth, "client_certificate", "client_key", "ca_bundle"),
            "dmp": resolved(settings.dmp, "auth_pkcs12", "signature_pkcs12", "ca_bundle"),
            "whitelist": whitelist,
            "audit": resolved(settings.audit, "syslog_ca", "syslog_certificate", "syslog_key"),
        }
    )


def _explain(exc: ValidationError, file: Path) -> str:
    lines = [f"invalid configuration ({file}, environment {ENV_PREFIX}*):"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc) or "(root)"
        env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling against config/drimbox.toml"
        elif err["type"] == "missing":
            message = "missing; this key is required"
        else:
            message = err["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(loc[-1] if loc else "", "")
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: {message}")
            continue
        hint = f" — fix: {fix}" if fix else ""
        lines.append(f"  {key}: {message}{hint} (or set {env_name})")
    return "\n".join(lines)

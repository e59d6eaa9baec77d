"""The exception tree of drimbox.

Boundaries translate lower-layer errors (socket, pynetdicom, SQLAlchemy, pydantic) into
these classes, so callers handle one documented tree and the CLI prints one clear line.
"""

from __future__ import annotations


class DrimboxError(Exception):
    """Base of every error drimbox raises on purpose."""


class ConfigError(DrimboxError):
    """The configuration is invalid; the message names the key, the file and the fix."""


class InvalidUID(DrimboxError, ValueError):
    """A DICOM UID that does not follow PS3.5 §9.1 (digits and dots, at most 64 characters)."""


class StoreError(DrimboxError):
    """The instance store cannot accept or give back a file."""


class InvalidInstance(StoreError):
    """A received object is not a readable DICOM instance, or contradicts its own request."""


class InstanceMismatch(InvalidInstance):
    """A received object's UIDs contradict the request that carried it."""


class StoreFull(StoreError):
    """No space left in the store folder."""


class DimseError(DrimboxError):
    """A DICOM network operation with a PACS failed."""


class PeerUnknown(DimseError):
    """The named PACS peer is not in the configuration."""


class PeerUnreachable(DimseError):
    """The PACS did not accept an association (refused, rejected, timed out)."""


class QueryFailed(DimseError):
    """A C-FIND ended with a failure status or the association broke during it."""


class RetrieveFailed(DimseError):
    """A C-GET or C-MOVE ended with failures or the association broke during it."""


class AccessDenied(DrimboxError):
    """A request may not have what it asks for (HTTP 401/403/404 at the DICOMweb boundary)."""


class TokenRejected(AccessDenied):
    """The bearer token is missing, malformed, expired, inactive or forged (HTTP 401)."""


class VerifierUnavailable(DrimboxError):
    """The token verifier (introspection endpoint, JWKS) cannot be reached or answers nonsense (HTTP 503)."""


class ReportRefused(DrimboxError):
    """A report we will not publish as it is (bad CDA, doubtful identity, unknown document type).

    `location` points at the faulty element (an XPath in the CDA or an HL7 field such as PID^1^3).
    """

    def __init__(self, message: str, location: str = "") -> None:
        super().__init__(message)
        self.location = location


class DmpUnavailable(DrimboxError):
    """The DMP did not give a definitive answer (network, timeout, 5xx): try again later."""


class DmpRefused(DrimboxError):
    """The DMP answered Failure: definitive for this submission. `issues` carries its error codes."""

    def __init__(self, message: str, issues: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.issues = issues


class WhitelistRefused(DrimboxError):
    """A downloaded or configured ANS whitelist we will not put in force (unsigned, altered, signed
    by someone else, expired signer, older than the list in force, unreadable)."""


class PeerRefused(AccessDenied):
    """A remote box whose TLS client certificate we do not accept (not whitelisted, revoked,
    revocation unknown while failing closed). `reason` is what the audit trail records."""


class AuditTampered(DrimboxError):
    """The audit trail's hash chain does not verify: a stored record was changed or removed."""

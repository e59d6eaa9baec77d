"""The sandbox DMP: a strict local stand-in for the national DMP's XDS.b services (see sandbox.py)."""

from drimbox.sandbox.dmp.context import PRODUCTION_INS_OIDS, REPOSITORY_UID, TEST_INS_OIDS, Rules
from drimbox.sandbox.dmp.ebxml import APPROVED, DELETED, DEPRECATED
from drimbox.sandbox.dmp.sandbox import MODES, DmpSandbox
from drimbox.sandbox.dmp.store import StoredEntry
from drimbox.sandbox.dmp.vihf import RSA_SHA1, RSA_SHA256, SHA1, SHA256

__all__ = [
    "APPROVED",
    "DELETED",
    "DEPRECATED",
    "MODES",
    "PRODUCTION_INS_OIDS",
    "REPOSITORY_UID",
    "RSA_SHA1",
    "RSA_SHA256",
    "SHA1",
    "SHA256",
    "TEST_INS_OIDS",
    "DmpSandbox",
    "Rules",
    "StoredEntry",
]

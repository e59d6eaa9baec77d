"""A report message as the RIS sends it (HL7v2 CI-SIS profile), and what the box answers.

The `hl7` boundary turns bytes into a `ReportMessage` and hands it to a `ReportInbox`; the inbox
stores it durably and decides the acknowledgement. Nothing here knows HL7 encoding rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol


class ReportAction(StrEnum):
    """What the RIS asks for (DRIM-M §3.6): OBX-11 F/C/D, MDM T02/T10/T04, ORC-1 NW/RO/CA."""

    PUBLISH = "publish"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True)
class PatientIdentifier:
    """One PID-3 repetition (CX): value, assigning authority (namespace and OID), type (INS, PI, ...)."""

    value: str
    namespace: str = ""
    oid: str = ""
    type_code: str = ""


@dataclass(frozen=True)
class ReportMessage:
    """One ORU^R01 or MDM^T02/T10/T04 message, decoded but not yet judged.

    `document` is the CDA exactly as carried (base64-decoded bytes); `flags` maps each
    MetaDMPMSS OBX code (MASQUE_PS, INVISIBLE_PATIENT, DESTDMP, ...) to its value (`Y`/`N`, or
    text). `replaces_hint` is TXA-13 when the message names the document it replaces.
    An order message (OMI^O23) carries no document: `document` is empty and `study_uids` /
    `accession_number` (IPC segment) name the exam; ORC-1 `CA` there means cancel (DELETE).
    """

    control_id: str
    message_type: str
    event: str
    version: str
    action: ReportAction
    document: bytes
    document_type: str
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    order_control: str = ""
    result_status: str = ""
    document_id: str = ""
    replaces_hint: str = ""
    patient_ids: tuple[PatientIdentifier, ...] = ()
    identity_reliability: str = ""
    flags: Mapping[str, str] = field(default_factory=dict)
    study_uids: tuple[str, ...] = ()
    accession_number: str = ""
    charset: str = "UNICODE UTF-8"
    raw: bytes = b""

    def flag(self, name: str) -> bool:
        """True when the MetaDMPMSS flag `name` is `Y`."""
        return self.flags.get(name, "").upper() == "Y"


#: HL7 table 0357 error codes used in ERR-3.
HL7_SEGMENT_SEQUENCE_ERROR = "100"
HL7_REQUIRED_FIELD_MISSING = "101"
HL7_DATA_TYPE_ERROR = "102"
HL7_TABLE_VALUE_NOT_FOUND = "103"
HL7_UNSUPPORTED_MESSAGE_TYPE = "200"
HL7_UNSUPPORTED_EVENT_CODE = "201"
HL7_UNSUPPORTED_PROCESSING_ID = "202"
HL7_UNSUPPORTED_VERSION = "203"
HL7_UNKNOWN_KEY = "204"
HL7_DUPLICATE_KEY = "205"
HL7_APPLICATION_RECORD_LOCKED = "206"
HL7_APPLICATION_INTERNAL_ERROR = "207"


@dataclass(frozen=True)
class Acceptance:
    """The answer for one message: MSA-1 `code`, a human `text`, and the ERR details when not AA.

    `error_location` is an ERR-2 location such as `PID^1^3` (segment^sequence^field).
    `publications` are the ids of the publication records the message created.
    """

    code: Literal["AA", "AE", "AR"]
    text: str = ""
    error_code: str = ""
    error_location: str = ""
    publications: tuple[int, ...] = ()


class ReportInbox(Protocol):
    """Where report messages go; every call returns only once its outcome is stored durably."""

    def accept(self, message: ReportMessage) -> Acceptance:
        """Judge and store `message`; AA means the intent is in the outbox."""
        ...

    def refuse(self, raw: bytes, control_id: str, acceptance: Acceptance) -> None:
        """Record a message the boundary could not read, so an operator sees it."""
        ...

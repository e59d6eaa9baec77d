"""HL7 v2 boundary: the MLLP listener for report messages (ORU, MDM, OMI), ACK and ZAM building.

RIS → `MllpServer` → `read_message` → `ReportInbox.accept` → `build_ack` → RIS (DRIM-M §3.6, §4.1).
"""

from drimbox.hl7.ack import build_ack, build_business_ack
from drimbox.hl7.client import MllpError, send_message, send_messages
from drimbox.hl7.er7 import MessageUnreadable
from drimbox.hl7.mllp import MllpServer
from drimbox.hl7.reading import read_message

__all__ = [
    "MessageUnreadable",
    "MllpError",
    "MllpServer",
    "build_ack",
    "build_business_ack",
    "read_message",
    "send_message",
    "send_messages",
]

"""A source box with its publication chain on real parts: Orthanc, the sandbox DMP over mutual TLS,
the MLLP listener, DCMTK for IOCM notes. Shared by the publication integration tests and the bench."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drimbox.hl7.client import send_message
from drimbox.sandbox.dmp import DmpSandbox, StoredEntry
from drimbox.sandbox.pki import PkiFiles, create_pki
from tests.conftest import write_config
from tests.support.peers import free_port

FIXTURES = Path(__file__).parent.parent / "fixtures"
HL7 = FIXTURES / "hl7v2-cisis"
STRUCTURE_ID = "499700367909006"
#: The study and accession the CI-SIS MDM examples' CDA names.
STUDY_UID = "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.0"
ACCESSION = "7252295367250056"
KOS_KEY = "1.2.840.10008.5.1.4.1.1.88.59"


def message(name: str, control_id: str = "", **cda_changes: str) -> bytes:
    """A CI-SIS example message as the RIS sends it (CR segments), optionally with its CDA edited.

    `cda_changes` maps a text found in the CDA to its replacement (e.g. another study UID).
    """
    text = (HL7 / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if control_id:
        fields = text.split(b"\r", 1)[0].split(b"|")
        fields[9] = control_id.encode()
        text = b"|".join(fields) + b"\r" + text.split(b"\r", 1)[1]
    if cda_changes:
        match = re.search(rb"\^(?:TEXT|text)\^XML\^Base64\^([A-Za-z0-9+/=]+)", text)
        assert match is not None
        padded = match.group(1) + b"=" * (-len(match.group(1)) % 4)
        cda = base64.b64decode(padded)
        for old, new in cda_changes.items():
            assert old.encode() in cda, old
            cda = cda.replace(old.encode(), new.encode())
        text = text[: match.start(1)] + base64.b64encode(cda) + text[match.end(1) :]
    return text


def make_pki(folder: Path) -> PkiFiles:
    return create_pki(folder, STRUCTURE_ID)


def start_dmp(folder: Path, pki: PkiFiles) -> DmpSandbox:
    return DmpSandbox(folder, pki).start()


def box_config(
    folder: Path, orthanc: Any, dmp: DmpSandbox, pki: PkiFiles, *, hl7_port: int | None = None,
    dmp_timeout: float = 3, extra: str = "", publication: str = "", hl7_extra: str = "",
) -> Path:  # fmt: skip
    """A demo-mode configuration publishing to `dmp`, with quick retries for tests."""
    org = pki.organisation
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(
        folder,
        peers={"main": {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        dimse_port=free_port(),
        http_port=free_port(),
        accept_from=("STORESCU",),
        extra="\n".join([
            "[hl7]", 'bind = "127.0.0.1"', f"port = {hl7_port or free_port()}", hl7_extra,
            "[publication]", "images_retry_seconds = 0.3", "retry_base_seconds = 0.2", "retry_max_seconds = 1",
            "poll_seconds = 0.1", publication,
            "[dmp]", f'url = "{dmp.base_url}"', f'auth_pkcs12 = "{org.auth_p12}"', f'auth_password = "{org.password}"',
            f'signature_pkcs12 = "{org.signature_p12}"', f'signature_password = "{org.password}"',
            f'ca_bundle = "{pki.ca_bundle}"', f"timeout_seconds = {dmp_timeout}",
            'source_id = "1.2.250.1.999.1.1.8121"',
            'homologation_id = "SANDBOX-0001"', 'lps_id = "drimbox-tests"',
            extra,
        ]),
    )  # fmt: skip
    text = config.read_text().replace('structure_id = "000000000"', f'structure_id = "{STRUCTURE_ID}"')
    config.write_text(text)
    return config


def send(port: int, raw: bytes) -> bytes:
    return send_message("127.0.0.1", port, raw, timeout=30)


def ack_code(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment.split(b"|")[1].decode()
    raise AssertionError(f"no MSA in {ack!r}")


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kos_entries(dmp: DmpSandbox) -> list[StoredEntry]:
    return [e for e in dmp.entries() if e.mime_type == "application/dicom"]

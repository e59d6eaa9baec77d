"""`drimbox demo`: a whole source box on one machine, with no root and no national service.

It starts pynetdicom's own Query/Retrieve SCP (`python -m pynetdicom qrscp`, a maintained
C-FIND/C-GET/C-MOVE/C-STORE SCP on SQLite) as the demo PACS, loads `sample_dicom/` into it by
C-STORE, writes a demo configuration in the data folder, starts the daemon on it, indexes the
PACS and prints where to look. Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from drimbox.config import Settings, load_settings
from drimbox.daemon import Daemon
from drimbox.errors import DrimboxError
from drimbox.hl7.client import send_messages
from drimbox.logs import configure_logging
from drimbox.sandbox.dmp import DmpSandbox
from drimbox.sandbox.oidc import PscSandbox
from drimbox.sandbox.pki import PkiFiles, create_pki
from drimbox.sandbox.reports import DemoReport, mdm_t02

PACS_AE = "DEMOPACS"
DEMO_STRUCTURE = "499700367909006"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as our servers do: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise DrimboxError(f"port {port} is in use; pick another one: ./run demo --http-port 9000") from None


def write_demo_config(data: Path, http_port: int, dimse_port: int, pacs_port: int, pki: PkiFiles, dmp_url: str) -> Path:
    """The demo's own configuration: demo mode, loopback only, the demo PACS as only peer,
    the sandbox DMP and its test PKI."""
    path = data / "drimbox.toml"
    org = pki.organisation
    path.write_text(
        f"""# Written by `drimbox demo`; rewritten at every demo start.
mode = "demo"
log_level = "INFO"

[site]
structure_id = "{DEMO_STRUCTURE}"
name = "Démo DRIMbox"

[http]
bind = "127.0.0.1"
port = {http_port}
public_base_url = "http://127.0.0.1:{http_port}"

[dimse]
bind = "127.0.0.1"
port = {dimse_port}
ae_title = "DRIMBOX"

[pacs.demo]
ae_title = "{PACS_AE}"
host = "127.0.0.1"
port = {pacs_port}
retrieve = "c-get"

[store]
folder = "."

[auth]
# The sandbox's Pro Santé Connect stand-in, started by `drimbox demo` beside the daemon.
verifier = "introspection"
introspection_url = "http://127.0.0.1:{http_port + 1}/token/introspect"
client_id = "drimbox-demo"
client_secret = "drimbox-demo-secret"

[index]
window_days = 36500
interval_minutes = 5

[hl7]
# Send report messages (MDM^T02 / ORU^R01, CI-SIS profile) here over MLLP.
bind = "127.0.0.1"
port = {http_port + 3}

[publication]
images_retry_seconds = 10
retry_base_seconds = 2

[dmp]
# The sandbox DMP started by `drimbox demo` (strict ITI-41/18/57 checks, mutual TLS).
url = "{dmp_url}"
auth_pkcs12 = "{org.auth_p12}"
auth_password = "{org.password}"
signature_pkcs12 = "{org.signature_p12}"
signature_password = "{org.password}"
ca_bundle = "{pki.ca_bundle}"
homologation_id = "SANDBOX-DEMO"
lps_id = "drimbox-demo"
""",
        encoding="utf-8",
    )
    return path


class DemoPacs:
    """pynetdicom's qrscp in a child process, with its files under `folder`."""

    def __init__(self, folder: Path, port: int, move_destination: tuple[str, int]) -> None:
        self.folder = folder
        self.port = port
        self.move_destination = move_destination
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "qrscp.ini"
        config.write_text(
            f"""[DEFAULT]
    ae_title: {PACS_AE}
    port: {self.port}
    max_pdu: 0
    acse_timeout: 30
    dimse_timeout: 60
    network_timeout: 60
    bind_address: 127.0.0.1
    instance_location: {self.folder / "instances"}
    database_location: {self.folder / "instances.sqlite"}
    log_identifier: False

[DRIMBOX]
    address: {self.move_destination[0]}
    port: {self.move_destination[1]}
""",
            encoding="utf-8",
        )
        self.log = open(self.folder / "qrscp.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.folder,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DrimboxError(f"the demo PACS exited; see {self.folder / 'qrscp.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise DrimboxError("the demo PACS did not start listening within 20 s")

    def load(self, files: list[Path]) -> int:
        """C-STORE `files` into the demo PACS; return how many it accepted."""
        ae = AE(ae_title="DEMOLOADER")
        ae.requested_contexts = StoragePresentationContexts
        ae.dimse_timeout = 10
        assoc = None
        stored = 0
        try:
            for path in files:
                # pynetdicom's requestor can lose a response to its own reactor thread under load
                # (then waits dimse_timeout and aborts): associate again and resend, 3 tries.
                for _ in range(3):
                    if assoc is None or not assoc.is_established:
                        assoc = ae.associate("127.0.0.1", self.port, ae_title=PACS_AE)
                        if not assoc.is_established:
                            raise DrimboxError("the demo PACS refused the association to load samples")
                    status = assoc.send_c_store(dcmread(path))
                    if status.get("Status") is not None:
                        stored += int(status.Status == 0x0000)
                        break
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
        return stored

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process is not None:
            self.log.close()


def run_demo(data: Path, samples: Path, http_port: int, wait: bool = True) -> int:
    """Start the demo PACS and the daemon; index; serve until Ctrl-C (or return when not `wait`)."""
    files = sorted(p for p in samples.rglob("*.dcm") if p.is_file())
    if not files:
        raise DrimboxError(f"no DICOM files under {samples}; run from the repository root")
    for port in range(http_port, http_port + 4):
        _check_port_free(port)
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    dimse_port, pacs_port = free_port(), free_port()
    pki = create_pki(data / "pki", DEMO_STRUCTURE)
    dmp = DmpSandbox(data / "dmp", pki, port=http_port + 2).start()
    settings = load_settings(write_demo_config(data, http_port, dimse_port, pacs_port, pki, dmp.base_url))
    configure_logging(settings.log_level)
    pacs = DemoPacs(data / "demo-pacs", pacs_port, ("127.0.0.1", dimse_port))
    psc = PscSandbox()
    psc_served = psc.serve(port=http_port + 1)
    pacs.start()
    try:
        loaded = pacs.load(files)
        daemon = Daemon(settings, index_at_start=False)
        report = daemon.node.index_peer("demo", full=True)
        daemon.start_background()
        grants = publish_samples(daemon, settings)
        token = psc.issue_token(expires_in=12 * 3600)
        _banner(settings, data, loaded, report.studies_seen, grants, token, len(dmp.entries()))
        if not wait:
            daemon.stop()
            return 0
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a demo ends
            daemon.run()
    finally:
        pacs.stop()
        psc_served.stop()
        dmp.stop()
    print("drimbox demo stopped.", flush=True)
    return 0


def publish_samples(daemon: Daemon, settings: Settings, timeout: float = 60) -> dict[str, str]:
    """Send one report per demo study over MLLP, as the RIS would, and wait for the DMP's answers.

    Returns study → KOS SOP Instance UID of each publication the sandbox DMP accepted.
    """
    index = daemon.node.index
    messages = []
    for number, study in enumerate(sorted(index.study_uids_of_peer("demo")), start=1):
        # The demo PACS (pynetdicom's qrscp) does not return SOPClassUID in C-FIND: the box learns
        # them by retrieving the study once, as it would to serve it.
        daemon.node.retriever.retrieve(study, None, peer="demo")
        ipp, accession = index.study_keys(study) or (f"IPP{number}", "")
        demo = DemoReport(study, accession, ipp, structure_id=settings.site.structure_id)
        messages.append(mdm_t02(demo, f"DEMO{number}", f"{settings.site.structure_id}.{number}.{int(time.time())}"))
    send_messages(settings.hl7.bind, settings.hl7.port, messages, timeout=60)
    outbox = daemon.node.outbox
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.active for p in outbox.list(history=False)):
        time.sleep(0.2)
    return {p.study_uid: p.kos_sop_uid for p in outbox.list(state="published")}


def _banner(
    settings: Settings, data: Path, loaded: int, studies: int, grants: dict[str, str], token: str, entries: int
) -> None:
    config = data / "drimbox.toml"
    http_port = settings.http.port
    example_study, example_kos = next(iter(grants.items()), ("<StudyInstanceUID>", "<KOS UID>"))
    base = settings.http.public_base_url + settings.dicomweb.prefix
    print(
        f"""
drimbox demo is running.
  demo PACS      {loaded} sample instances loaded, {studies} studies indexed
  status page    http://127.0.0.1:{http_port}/status   (JSON: /status?format=json)
  data folder    {data}
  try           .venv/bin/drimbox --config {config} status
                .venv/bin/drimbox --config {config} echo demo
                .venv/bin/drimbox --config {config} index --all
                .venv/bin/drimbox --config {config} retrieve {example_study}
  publication    {len(grants)} reports sent over MLLP (port {settings.hl7.port}) → {entries} entries in the sandbox DMP
                .venv/bin/drimbox --config {config} publications
  DICOMweb       {base}  (bearer token from the Pro Santé Connect sandbox on port {http_port + 1})
                curl -H "Authorization: Bearer $TOKEN" -H "KOS-SOPInstanceUID: {example_kos}" \\
                     {base}/studies/{example_study}/metadata
                TOKEN={token}
  audit trail    .venv/bin/drimbox --config {config} audit --since today
Ctrl-C stops the daemon and the demo PACS.
""",
        flush=True,
    )

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
import uuid
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from drimbox.config import Settings, load_settings
from drimbox.errors import DrimboxError
from drimbox.logs import configure_logging
from drimbox.sandbox.oidc import PscSandbox

PACS_AE = "DEMOPACS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise DrimboxError(f"port {port} is in use; pick another one: ./run demo --http-port 9000") from None


def write_demo_config(data: Path, http_port: int, dimse_port: int, pacs_port: int) -> Path:
    """The demo's own configuration: demo mode, loopback only, the demo PACS as only peer."""
    path = data / "drimbox.toml"
    path.write_text(
        f"""# Written by `drimbox demo`; rewritten at every demo start.
mode = "demo"
log_level = "INFO"

[site]
structure_id = "000000000"
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
    from drimbox.daemon import Daemon

    files = sorted(p for p in samples.rglob("*.dcm") if p.is_file())
    if not files:
        raise DrimboxError(f"no DICOM files under {samples}; run from the repository root")
    _check_port_free(http_port)
    _check_port_free(http_port + 1)
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    dimse_port, pacs_port = free_port(), free_port()
    settings = load_settings(write_demo_config(data, http_port, dimse_port, pacs_port))
    configure_logging(settings.log_level)
    pacs = DemoPacs(data / "demo-pacs", pacs_port, ("127.0.0.1", dimse_port))
    psc = PscSandbox()
    psc_served = psc.serve(port=http_port + 1)
    pacs.start()
    try:
        loaded = pacs.load(files)
        daemon = Daemon(settings, index_at_start=False)
        report = daemon.node.index_peer("demo", full=True)
        studies = sorted(daemon.node.index.study_uids_of_peer("demo"))
        grants = {study: demo_kos_uid(study) for study in studies}
        for study, kos in grants.items():
            daemon.node.index.grant_kos(kos, study)  # stands in for publication until it exists
        token = psc.issue_token(expires_in=12 * 3600)
        _banner(settings, data, loaded, report.studies_seen, grants, token)
        if not wait:
            return 0
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a demo ends
            daemon.run()
    finally:
        pacs.stop()
        psc_served.stop()
    print("drimbox demo stopped.", flush=True)
    return 0


def demo_kos_uid(study_uid: str) -> str:
    """A stable KOS SOP Instance UID per demo study (UUID-derived, PS3.5 §B.2)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'drimbox-demo-kos:' + study_uid).int}"


def _banner(settings: Settings, data: Path, loaded: int, studies: int, grants: dict[str, str], token: str) -> None:
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
  DICOMweb       {base}  (bearer token from the Pro Santé Connect sandbox on port {http_port + 1})
                curl -H "Authorization: Bearer $TOKEN" -H "KOS-SOPInstanceUID: {example_kos}" \\
                     {base}/studies/{example_study}/metadata
                TOKEN={token}
  audit trail    {data / "audit.jsonl"}
Ctrl-C stops the daemon and the demo PACS.
""",
        flush=True,
    )

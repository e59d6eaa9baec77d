"""Publication throughput: N report messages over MLLP, each published as a KOS to the sandbox DMP.

Set-up, all on 127.0.0.1: Orthanc (Debian package) holds N one-instance studies; the sandbox DMP
(`drimbox.sandbox.dmp`, mutual TLS, every VIHF/XAdES/metadata check on) runs in this process; the
box runs as `python -m drimbox.cli serve` (demo mode, SQLite) in its own process, as in production.
Each message is the CI-SIS MDM^T02 example with its CDA naming one of the N studies.

Figures: ACK latency p50/p95/max (one MLLP connection, messages sent one after the other, as a RIS
does), ACK rate, end-to-end rate (first message sent → last KOS accepted by the DMP), the sandbox's
ITI-41 count (must equal N: nothing lost, nothing duplicated) and the box's peak RSS. The reference
beside it is the DMP side alone: the same number of ITI-41 requests sent straight to the sandbox
by our DMP client, sequentially, i.e. the ceiling publication could reach.

    .venv/bin/python -m bench.hl7_publication --messages 1000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from drimbox.config import load_settings  # noqa: E402
from drimbox.dmp.gateway import SoapDmpGateway  # noqa: E402
from drimbox.hl7 import read_message  # noqa: E402
from drimbox.hl7.client import send_messages  # noqa: E402
from drimbox.index import db  # noqa: E402
from drimbox.kos.build import encode_manifest  # noqa: E402
from drimbox.kos.model import Manifest, ManifestPatient, ManifestSeries, ReferencedInstance  # noqa: E402
from drimbox.publish.outbox import Outbox  # noqa: E402
from drimbox.publish.submission import Submission  # noqa: E402
from drimbox.report.cda import read_report  # noqa: E402
from tests.support.datasets import CT, StudySpec, write_study  # noqa: E402
from tests.support.peers import Orthanc, free_port, loopback_shim, wait_port  # noqa: E402
from tests.support.publication import ACCESSION, STUDY_UID, box_config, make_pki, message, start_dmp  # noqa: E402

RESULTS = REPO / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    n = args.messages
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="drimbox-bench-hl7-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        dmp = start_dmp(work / "dmp", pki)
        (work / "shim").mkdir()
        orthanc = Orthanc(work / "orthanc", loopback_shim(work / "shim")).start()
        try:
            studies = [(generate_uid(), f"ACC{i:07d}") for i in range(n)]
            files = []
            for i, (uid, accession) in enumerate(studies):
                spec = StudySpec(study_uid=uid, accession=accession, series=[(CT, "CT", 1)], rows=16, columns=16)
                files += write_study(spec, work / "studies" / str(i))
            orthanc.upload(files)
            raws = [message("mdm-t02-imaging-report-initial.er7", f"B{i}", **{STUDY_UID: uid, ACCESSION: acc})
                    for i, (uid, acc) in enumerate(studies)]  # fmt: skip

            hl7_port = free_port()
            config = box_config(work / "box", orthanc, dmp, pki, hl7_port=hl7_port, dmp_timeout=30)
            settings = load_settings(config)
            say(f"drimbox publication bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {n} messages")
            reference = _direct_rate(settings, raws[0], n)
            child = subprocess.Popen([sys.executable, "-m", "drimbox.cli", "--config", str(config), "serve"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                wait_port(hl7_port, child)
                before = dmp.requests["ITI-41"]
                latencies, started = _send_all(hl7_port, raws)
                acked = time.monotonic()
                outbox = Outbox(db.make_engine(settings.database_url))
                while outbox.counts().get("published", 0) < n:
                    counts = outbox.counts()
                    if counts.get("refused") or counts.get("failed"):
                        raise SystemExit(f"publications ended badly: {counts}")
                    time.sleep(0.2)
                finished = time.monotonic()
                rss = _peak_rss(child.pid)
            finally:
                child.terminate()
                child.wait(timeout=30)
            sent = dmp.requests["ITI-41"] - before
        finally:
            orthanc.stop()
            dmp.stop()
    latencies.sort()
    say(f"ACK latency     p50 {_ms(statistics.median(latencies))}  p95 {_ms(latencies[int(0.95 * n) - 1])}  "
        f"max {_ms(latencies[-1])}")  # fmt: skip
    say(f"ACK rate        {n / (acked - started):8.1f} messages/s (stored durably before each ACK)")
    say(f"end to end      {n / (finished - started):8.1f} messages/s (ACK → KOS accepted by the DMP)")
    say(f"reference       {reference:8.1f} ITI-41/s straight to the sandbox DMP (our client, sequential)")
    say(f"ITI-41 sent     {sent} for {n} messages; box peak RSS {rss / 1e6:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"hl7-publication-{datetime.now(UTC):%Y%m%d-%H%M}.txt").write_text("\n".join(lines) + "\n")


def _send_all(port: int, raws: list[bytes]) -> tuple[list[float], float]:
    latencies = []
    started = time.monotonic()
    for raw in raws:
        began = time.monotonic()
        [ack] = send_messages("127.0.0.1", port, [raw], timeout=60)
        latencies.append(time.monotonic() - began)
        if b"MSA|AA|" not in ack:
            raise SystemExit(f"not accepted: {ack!r}")
    return latencies, started


def _direct_rate(settings: object, raw: bytes, n: int) -> float:
    """ITI-41 per second sent directly by our DMP client (no MLLP, no outbox, no PACS)."""
    from drimbox.config import Settings

    assert isinstance(settings, Settings)
    report = read_report(read_message(raw).document)
    gateway = SoapDmpGateway(settings.dmp, settings.site)
    count = min(n, 200)
    started = time.monotonic()
    for _ in range(count):
        manifest = Manifest(
            sop_instance_uid=generate_uid(), series_instance_uid=generate_uid(), study_uid=generate_uid(),
            created=datetime.now(UTC), patient=ManifestPatient(report.patient.ins.extension, report.patient.ins.root,
                                                               "PAT^TROIS"),
            series=(ManifestSeries(generate_uid(), "https://db1.example.fr/dicom-web/s",
                                   (ReferencedInstance(CT, generate_uid()),), "CT"),),
        )  # fmt: skip
        gateway.provide(Submission(generate_uid(), generate_uid(), report, manifest, encode_manifest(manifest),
                                   datetime.now(UTC)))  # fmt: skip
    gateway.close()
    return count / (time.monotonic() - started)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


if __name__ == "__main__":
    main()

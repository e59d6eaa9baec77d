"""DICOMweb: our box's WADO-RS and QIDO-RS vs Orthanc + its DICOMweb plugin, same data, same run.

Both servers run as separate processes on 127.0.0.1 and are asked the same requests by the same
clients, in this process, one thread per simultaneous client, reading and discarding the body:
"raw" (a plain socket, HTTP/1.1, recv_into a 1 MiB buffer: little CPU) and "httpx" (streaming;
on 2 cores it tops out near 400 MB/s whatever the server, so the raw client measures the servers).

- Orthanc (Debian package, DICOMweb plugin, `tests.support.peers.Orthanc`) holds the studies made
  by tools/make_studies.py (FFDM 4 x ~27 MB, CT 500 x ~0.5 MB, optionally DBT 4 x ~557 MB) and
  `--qido N` tiny one-instance studies. Its storage is kept in bench/.data/orthanc-q<N>/: a rerun
  uploads nothing.
- Ours: `python -m drimbox.cli --config TOML serve` (demo mode), its PACS peer that Orthanc (C-GET);
  bearer tokens checked by introspection at the PSC sandbox (drimbox.sandbox.oidc) served from this
  process; one KOS granted per study before the server starts. The index is filled from the files'
  headers (the records a C-FIND would give; the tiny studies' index is cached in bench/.data/qido/),
  so the studies are known but not held: the first WADO-RS request of a study ("ours, cold") fetches
  it from Orthanc by C-GET while streaming it (and starts the C-GET worker processes); later cold
  runs delete the study's files from our store first, as an eviction would. Every other request is
  served from our store ("ours").

Per study kind: WADO-RS study retrieval MB/s with 1 client and 8 simultaneous clients (Accept:
multipart/related; type="application/dicom"; transfer-syntax=*, which both accept), time to first
body byte, /studies/{uid}/metadata (identity and gzip), frame 1 of the first instance; the servers'
peak RSS (VmHWM, reset through /proc/PID/clear_refs before each phase) and CPU seconds per GB; and
the machine's limit, measured interleaved with the servers: the same files sent over loopback by
`socket.sendfile` from a tiny HTTP server process. Then QIDO-RS p50/p95 over 200 study queries
(PatientID, a 7-day StudyDate range, PatientName prefix*) at N studies, on our daemon (answers
scoped to the KOS's study, DRIM-M A8), on the same app with the scope lifted (a bench-only process),
and on Orthanc. A route answering 404 prints "n/a". The benchmark prints figures, asserts nothing,
and writes its output to bench/results/wado-<date>.txt too.

Run from the repository root:

    .venv/bin/python -m bench.wado_vs_orthanc --size sample --qido 200 --repeat 1   # smoke run (~30 s)
    .venv/bin/python -m bench.wado_vs_orthanc --qido 2000                           # FFDM + CT, full size
    .venv/bin/python bench/wado_vs_orthanc.py --dbt --repeat 1                      # also DBT (2.2 GB)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import httpx
from pydicom import dcmread

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `bench` and `tests.support` importable
    sys.path.insert(0, str(REPO))

from bench.cget_throughput import DATA, GENERATOR, RESULTS, Study, ensure_data, python  # noqa: E402
from drimbox.index import db  # noqa: E402
from drimbox.index.records import InstanceRecord, SeriesRecord, StudyRecord  # noqa: E402
from drimbox.index.repository import IndexRepository  # noqa: E402
from drimbox.sandbox.oidc import PscSandbox, SandboxClient  # noqa: E402
from tests.support.peers import Orthanc, free_port, loopback_shim, stop_process, wait_port  # noqa: E402

PEER = "bench"
CLIENT_ID, CLIENT_SECRET = "drimbox-bench", "drimbox-bench-secret"
KOS_ROOT = "1.2.250.1.999.77"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
IDENTITY = {"Accept-Encoding": "identity"}  # retrieve and frames: no gzip of pixel data on loopback
CONCURRENT = 8
QIDO_QUERIES = 200
QIDO_LIMIT = 100
TIMEOUT = httpx.Timeout(900, connect=30)
MB = 1e6


class BenchError(RuntimeError):
    """A request failed or delivered the wrong amount of data."""


# --- processes: memory and CPU from /proc ---------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [pid], [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(child) for child in children.read_text().split()]
                found += kids
                todo += kids
    return found


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    """Reset the peak RSS (VmHWM) of `pid` and its descendants to their current RSS (Linux >= 4.0)."""
    for each in tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{each}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants."""
    ticks = 0
    for each in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """Peak RSS (MB) of the main process and summed over its descendants, and CPU seconds, of one phase."""

    rss_mb: float
    children_mb: float
    cpu_s: float


class Phase:
    """Measures one server process over a phase: reset VmHWM at the start, read it at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        reset_peak(pid)
        self.cpu0 = cpu_seconds(pid)

    def end(self) -> Usage:
        kids = [p for p in tree(self.pid) if p != self.pid]
        return Usage(
            _status_kib(self.pid, "VmHWM") / 1024,
            sum(_status_kib(p, "VmHWM") for p in kids) / 1024,
            cpu_seconds(self.pid) - self.cpu0,
        )


# --- the clients ------------------------------------------------------------------------------
#
# Every transfer is read by two clients: httpx (streaming; what a Python DICOMweb client uses) and
# a plain socket reading into a preallocated buffer ("raw": recv_into, little CPU). On this 2-core
# VM httpx tops out near 400 MB/s whatever the server (h11 handles every 64 KiB read), which is
# below Orthanc and far below sendfile: the raw client is the one that measures the servers.

CLIENTS = ("raw", "httpx")


@dataclass
class Fetch:
    """One GET read to the end."""

    status: int
    size: int  # body bytes (after removing chunked framing)
    ttfb: float  # seconds from sending the request to the first body byte
    seconds: float
    head: bytes = b""
    content_type: str = ""
    text: str = ""


def fetch(client: httpx.Client, url: str, headers: dict[str, str], keep_head: bool = False) -> Fetch:
    """GET `url` with httpx, streaming: read the body as it comes and discard it."""
    began = time.perf_counter()
    first = 0.0
    size = 0
    head = b""
    with client.stream("GET", url, headers=headers) as response:
        for chunk in response.iter_raw():
            if not first:
                first = time.perf_counter()
                if keep_head:
                    head = chunk[:2048]
            size += len(chunk)
            if response.status_code != 200 and size < 4096:
                head += chunk
        ended = time.perf_counter()
        text = head.decode("latin-1")[:300] if response.status_code != 200 else ""
        kind = response.headers.get("content-type", "")
    return Fetch(response.status_code, size, (first or ended) - began, ended - began, head, kind, text)


class _Reader:
    """Buffered reads from a socket; `skip` and `drain` read straight into a scratch buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.filled_at = 0.0

    def fill(self) -> int:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):
            size = self.end - self.start
            self.buf[:size] = self.buf[self.start : self.end]
            self.start, self.end = 0, size
        n = self.sock.recv_into(self.view[self.end :])
        self.filled_at = time.perf_counter()
        self.end += n
        return n

    def until(self, separator: bytes) -> bytes:
        while True:
            found = self.buf.find(separator, self.start, self.end)
            if found >= 0:
                data = bytes(self.buf[self.start : found])
                self.start = found + len(separator)
                return data
            if not self.fill():
                raise BenchError("connection closed in the middle of a header")

    def skip(self, count: int) -> None:
        held = min(count, self.end - self.start)
        self.start += held
        count -= held
        while count:
            n = self.sock.recv_into(self.view, min(count, len(self.buf)))
            if not n:
                raise BenchError("connection closed in the middle of the body")
            count -= n

    def drain(self) -> int:
        total = self.end - self.start
        self.start = self.end = 0
        while n := self.sock.recv_into(self.view):
            total += n
        return total


def raw_fetch(url: str, headers: dict[str, str], keep_head: bool = False) -> Fetch:
    """GET `url` on a plain socket (HTTP/1.1, Connection: close), the body read and discarded with recv_into."""
    target = httpx.URL(url)
    with socket.create_connection((target.host, target.port or 80), timeout=TIMEOUT.read) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"GET {target.raw_path.decode('ascii')} HTTP/1.1", f"Host: {target.netloc.decode('ascii')}"]
        lines += ["Connection: close", *(f"{name}: {value}" for name, value in headers.items())]
        began = time.perf_counter()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        reader = _Reader(sock)
        head = reader.until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in head[1:])}
        if reader.start == reader.end:
            reader.fill()
        ttfb = reader.filled_at - began
        sample = bytes(reader.buf[reader.start : min(reader.end, reader.start + 2048)])
        if "chunked" in fields.get("transfer-encoding", "").lower():
            size = 0
            while count := int(reader.until(b"\r\n").split(b";")[0], 16):
                reader.skip(count)
                reader.until(b"\r\n")
                size += count
            while reader.until(b"\r\n"):  # trailers, up to the empty line
                pass
        elif "content-length" in fields:
            size = int(fields["content-length"])
            reader.skip(size)
        else:
            size = reader.drain()
        ended = time.perf_counter()
    text = sample.decode("latin-1")[:300] if status != 200 else ""
    return Fetch(status, size, ttfb, ended - began, sample if keep_head else b"", fields.get("content-type", ""), text)


def get(kind: str, client: httpx.Client | None, url: str, headers: dict[str, str], keep_head: bool = False) -> Fetch:
    """One GET by the `kind` client ("raw" or "httpx", the latter on `client`)."""
    if kind == "raw" or client is None:
        return raw_fetch(url, headers, keep_head)
    return fetch(client, url, headers, keep_head)


def fetch_many(kind: str, url: str, headers: dict[str, str], clients: int) -> tuple[float, list[Fetch]]:
    """`clients` simultaneous GETs of `url`, one thread and connection each; (wall seconds, fetches)."""
    barrier = threading.Barrier(clients + 1)
    results: list[Fetch | BaseException] = [BenchError("not run")] * clients

    def one(number: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:  # made before the start, for both kinds
            barrier.wait()
            try:
                results[number] = get(kind, client, url, headers)
            except BaseException as exc:  # reported below, with the others
                results[number] = exc

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} of {clients} {kind} clients failed: {errors[0]!r}")
    return wall, [r for r in results if isinstance(r, Fetch)]


def check_body(server: str, study: Study, got: Fetch) -> None:
    """Status 200 and a multipart body as large as the files plus a few hundred bytes of headers per part."""
    if got.status != 200:
        raise BenchError(f"{server}: {study.kind} retrieve answered HTTP {got.status}: {got.text}")
    if not study.bytes <= got.size <= study.bytes + 2048 * study.instances + 1024:
        raise BenchError(f"{server}: {study.kind} retrieve sent {got.size} bytes for {study.bytes} bytes of files")


# --- the machine's limit: sendfile over loopback ----------------------------------------------

SENDFILE_SERVER = r"""
import json, os, socket, sys, threading
files = json.load(open(sys.argv[1]))
total = sum(os.path.getsize(f) for f in files)
head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n".encode()
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)

def serve(conn):
    with conn:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
            pending = pending.partition(b"\r\n\r\n")[2]
            conn.sendall(head)
            for name in files:
                with open(name, "rb") as handle:
                    conn.sendfile(handle)

while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@contextlib.contextmanager
def sendfile_server(files: list[Path], work: Path) -> Iterator[tuple[str, int]]:
    """A tiny HTTP server process answering every GET with the concatenated `files`, by sendfile; (URL, pid)."""
    listing = work / "sendfile-files.json"
    listing.write_text(json.dumps([str(p) for p in files]))
    process = subprocess.Popen([sys.executable, "-c", SENDFILE_SERVER, str(listing)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}", process.pid
    finally:
        stop_process(process)


# --- data: studies, tiny QIDO studies, Orthanc's cached storage --------------------------------


def ensure_tiny(count: int) -> list[Path]:
    """The first `count` tiny studies of tools/make_studies.py in bench/.data/qido/ (one file each)."""
    folder = DATA / "qido"
    manifest = folder / "manifest.json"
    done = 0
    if manifest.exists():
        batches = sorted(json.loads(manifest.read_text(encoding="utf-8")).get("tiny_batches", []),
                         key=lambda b: int(b["start"]))  # fmt: skip
        for batch in batches:
            if int(batch["start"]) == done:
                done += int(batch["count"])
    if done < count:
        cmd = [python(), str(GENERATOR), str(folder), "--ffdm", "0", "--dbt", "0", "--ct", "0",
               "--tiny", str(count - done), "--tiny-start", str(done), "-q"]  # fmt: skip
        print(f"generating {count - done} tiny studies: {' '.join(cmd[1:])}", flush=True)
        began = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)
    files = sorted(p for p in (folder / "tiny").glob("*/*.dcm") if int(p.stem) < count)
    if len(files) != count:
        raise BenchError(f"{folder}: {len(files)} tiny studies found, {count} expected")
    return files


def start_orthanc(qido: int, work: Path) -> Orthanc:
    """Orthanc with the DICOMweb plugin, its storage kept in bench/.data/orthanc-q<N>/ across runs."""
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        raise BenchError("the DICOMweb plugin is missing: apt-get install orthanc-dicomweb")
    dicomweb = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
    return Orthanc(DATA / f"orthanc-q{qido}", loopback_shim(work), extra={"DicomWeb": dicomweb}).start()


def orthanc_study_id(client: httpx.Client, study_uid: str) -> str | None:
    found = client.post("/tools/lookup", content=study_uid).json()
    return next((item["ID"] for item in found if item["Type"] == "Study"), None)


def upload_study(orthanc: Orthanc, study: Study) -> None:
    """Upload `study` unless Orthanc already holds it as generated (same count and size)."""
    with httpx.Client(base_url=orthanc.url, timeout=600) as client:
        found = orthanc_study_id(client, study.uid)
        if found:
            stats = client.get(f"/studies/{found}/statistics").json()
            size = int(stats.get("DiskSize", 0))
            if int(stats["CountInstances"]) == study.instances and abs(size - study.bytes) < 0.01 * study.bytes:
                return
            client.delete(f"/studies/{found}").raise_for_status()  # another --size made the same UIDs
    began = time.perf_counter()
    orthanc.upload(study.files())
    seconds = time.perf_counter() - began
    print(f"uploaded {study.kind} to Orthanc: {study.instances} files in {seconds:.1f} s", flush=True)


def upload_tiny(orthanc: Orthanc, files: list[Path]) -> None:
    """Upload the tiny studies Orthanc does not have yet (a marker file counts those it has), 4 at a time."""
    marker = orthanc.folder / "tiny-uploaded.json"
    done = json.loads(marker.read_text())["count"] if marker.exists() else 0
    if done >= len(files):
        return
    print(f"uploading {len(files) - done} tiny studies to Orthanc (4 at a time)...", flush=True)
    began = time.perf_counter()
    with httpx.Client(base_url=orthanc.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:

        def post(path: Path) -> None:
            client.post("/instances", content=path.read_bytes()).raise_for_status()

        for start in range(done, len(files), 1000):
            list(pool.map(post, files[start : start + 1000]))
            marker.write_text(json.dumps({"count": min(start + 1000, len(files))}))
    print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)


def index_files(repo: IndexRepository, files: list[Path]) -> None:
    """Index `files` as our indexer would from C-FIND answers: study, series, instance records."""
    by_series: dict[str, list[InstanceRecord]] = {}
    studies: dict[str, tuple[StudyRecord, dict[str, SeriesRecord]]] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        study = StudyRecord.from_dataset(ds)
        series = SeriesRecord.from_dataset(ds)
        entry = studies.setdefault(study.study_uid, (study, {}))
        entry[1][series.series_uid] = series
        syntax = str(ds.file_meta.TransferSyntaxUID)
        by_series.setdefault(series.series_uid, []).append(InstanceRecord.from_dataset(ds, syntax))
    for record, its_series in studies.values():
        modalities = "\\".join(sorted({s.modality for s in its_series.values()}))
        count = sum(len(by_series[uid]) for uid in its_series)
        repo.upsert_study(replace(record, modalities=modalities, series_count=len(its_series), instance_count=count),
                          PEER)  # fmt: skip
        repo.upsert_series(record.study_uid,
                           [replace(s, instance_count=len(by_series[u])) for u, s in its_series.items()])  # fmt: skip
        for uid in its_series:
            repo.upsert_instances(uid, by_series[uid])
        repo.mark_indexed(record.study_uid)


def tiny_index(files: list[Path]) -> Path:
    """A SQLite index holding the tiny studies, built once per count and schema revision."""
    path = DATA / "qido" / f"index-{len(files)}-{db.head_revision()}.db"
    if not path.exists():
        print(f"indexing {len(files)} tiny studies into {path.relative_to(REPO)}...", flush=True)
        began = time.perf_counter()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        engine = db.make_engine(f"sqlite:///{partial}")
        db.upgrade(engine)
        index_files(IndexRepository(engine), files)
        engine.dispose()
        partial.rename(path)
        print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)
    return path


# --- our box ------------------------------------------------------------------------------------


@dataclass
class Box:
    """Our server process and what a request needs."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    kos: dict[str, str]
    log: Path
    config: Path
    database: Path

    def headers(self, study_uid: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "KOS-SOPInstanceUID": self.kos[study_uid], **extra}

    def evict(self, study_uid: str) -> int:
        """Delete the study's files from our store, as the cache's eviction would; the next request fetches
        it again. Its index rows stay (the server sees the files are gone). Returns the files removed."""
        engine = db.make_engine(f"sqlite:///{self.database}")
        try:
            held = IndexRepository(engine).held(study_uid)
        finally:
            engine.dispose()
        for instance in held:
            Path(instance.path).unlink(missing_ok=True)
        return len(held)


def write_config(folder: Path, orthanc: Orthanc, introspection_url: str, workers: int) -> tuple[Path, int]:
    http = free_port()
    text = f"""mode = "demo"
log_level = "WARNING"
[site]
structure_id = "000000000"
name = "Benchmark"
[http]
bind = "127.0.0.1"
port = {http}
public_base_url = "http://127.0.0.1:{http}"
[dimse]
bind = "127.0.0.1"
port = {free_port()}
ae_title = "DRIMBOX"
[store]
folder = "{folder / "data"}"
[index]
interval_minutes = 0
[dicomweb]
workers = {workers}
[auth]
verifier = "introspection"
introspection_url = "{introspection_url}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
[hl7]
enabled = false
[publication]
enabled = false
[pacs.{PEER}]
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
retrieve = "c-get"
"""
    path = folder / "drimbox.toml"
    path.write_text(text, encoding="utf-8")
    return path, http


def start_box(work: Path, orthanc: Orthanc, psc: PscSandbox, psc_port: int, studies: list[Study],
              tiny: list[Path], workers: int) -> Box:  # fmt: skip
    """Index, KOS grants, then `drimbox serve` as a child process."""
    folder = work / "box"
    (folder / "data").mkdir(parents=True)
    config, port = write_config(folder, orthanc, f"http://127.0.0.1:{psc_port}/token/introspect", workers)
    database = folder / "data" / "drimbox.db"
    if tiny:
        shutil.copyfile(tiny_index(tiny), database)
    engine = db.make_engine(f"sqlite:///{database}")
    db.upgrade(engine)
    repo = IndexRepository(engine)
    began = time.perf_counter()
    index_files(repo, [f for s in studies for f in s.files()])
    kos: dict[str, str] = {}
    for number, uid in enumerate([s.uid for s in studies] + ([_tiny_uid(tiny[0])] if tiny else []), 1):
        kos[uid] = f"{KOS_ROOT}.{number}"
        repo.grant_kos(kos[uid], uid)
    engine.dispose()
    seconds = time.perf_counter() - began
    print(f"our index: {len(studies)} studies indexed and {len(kos)} KOS granted in {seconds:.1f} s")
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([python(), "-m", "drimbox.cli", "--config", str(config), "serve"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        wait_port(port, process, timeout=60)
    except RuntimeError as exc:
        raise BenchError(f"drimbox serve did not start: {exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    token = psc.issue_token(client_id=CLIENT_ID, expires_in=24 * 3600)
    return Box(process, f"http://127.0.0.1:{port}/dicom-web", token, kos, log, config, database)


def _tiny_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def stop_box(box: Box) -> None:
    if box.process.poll() is None:
        box.process.send_signal(signal.SIGTERM)
        try:
            box.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            box.process.kill()
            box.process.wait()


# --- measurements ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    pid: int
    url: str
    headers: Callable[..., dict[str, str]]
    evict: Callable[[str], int] | None = None


@dataclass
class Figures:
    """Everything measured for one study kind. Servers: "ours", "orthanc", "ours-cold"."""

    mbps: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)  # (client kind, clients, server)
    ttfb: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (client kind, server), 1 client
    usage: dict[tuple[int, str], Usage] = field(default_factory=dict)  # (clients, server)
    sent: dict[tuple[int, str], int] = field(default_factory=dict)  # bytes sent in the phase
    metadata_first: dict[str, float | None] = field(default_factory=dict)
    metadata: dict[str, list[float]] = field(default_factory=dict)
    metadata_gzip: dict[str, list[float]] = field(default_factory=dict)
    metadata_note: dict[str, str] = field(default_factory=dict)
    frame: dict[str, list[float] | None] = field(default_factory=dict)
    frame_note: dict[str, str] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)


def first_instance(study: Study) -> tuple[str, str]:
    ds = dcmread(study.files()[0], stop_before_pixels=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _first_part(head: bytes) -> str:
    lines = head.partition(b"\r\n\r\n")[0].decode("latin-1").splitlines()
    return "; ".join(line for line in lines if line.lower().startswith("content-type"))


def measure_retrieve(study: Study, ours: Server, orthanc: Server, work: Path, fig: Figures,
                     args: argparse.Namespace) -> None:  # fmt: skip
    """WADO-RS study retrieval: cold through our box, then 1 client and `CONCURRENT` clients, both client kinds,
    interleaved with the sendfile server on the same files (the machine's limit, measured at the same moments)."""
    path = f"/studies/{study.uid}"
    mb = study.bytes / MB

    def headers(server: Server) -> dict[str, str]:
        return server.headers(study.uid, Accept=ACCEPT_DICOM, **IDENTITY)

    # cold: through our box, which fetches the study from Orthanc by C-GET while streaming it. The first
    # time also starts the C-GET worker processes (a study of >= 32 instances); later times the study's
    # files were deleted from our store first, as an eviction would.
    phase = Phase(ours.pid)
    for i in range(args.repeat):
        if i and ours.evict is not None:
            ours.evict(study.uid)
        os.sync()
        cold = raw_fetch(ours.url + path, headers(ours), keep_head=True)
        check_body("ours (cold)", study, cold)
        fig.mbps.setdefault(("raw", 1, "ours-cold"), []).append(mb / cold.seconds)
        fig.ttfb.setdefault(("raw", "ours-cold"), []).append(cold.ttfb)
        print(f"  ours    cold #{i + 1} (C-GET from Orthanc while streaming): {cold.seconds:.2f} s, "
              f"{mb / cold.seconds:.1f} MB/s, first byte {cold.ttfb * 1000:.0f} ms", flush=True)  # fmt: skip
    usage = fig.usage[(1, "ours-cold")] = phase.end()
    print(f"  ours    cold: peak RSS {usage.rss_mb:.0f} MB (+ {usage.children_mb:.0f} MB in child processes)")

    with sendfile_server(study.files(), work) as (limit_url, limit_pid):
        limit = Server("sendfile", limit_pid, limit_url, lambda _uid, **extra: {})
        servers = [ours, orthanc, limit]
        # warm-up, and what the first part looks like
        for server in servers:
            got = raw_fetch(server.url + path, headers(server), keep_head=True)
            check_body(server.name, study, got)
            fig.parts[server.name] = _first_part(got.head)

        # 1 client, the servers interleaved
        clients = {s.name: httpx.Client(timeout=TIMEOUT) for s in servers}
        phases = {s.name: Phase(s.pid) for s in servers}
        try:
            for i in range(args.repeat):
                for kind in CLIENTS:
                    for server in servers if i % 2 == 0 else servers[::-1]:
                        os.sync()
                        got = get(kind, clients[server.name], server.url + path, headers(server))
                        check_body(server.name, study, got)
                        fig.mbps.setdefault((kind, 1, server.name), []).append(mb / got.seconds)
                        fig.ttfb.setdefault((kind, server.name), []).append(got.ttfb)
                        fig.sent[(1, server.name)] = fig.sent.get((1, server.name), 0) + got.size
                        rate = f"{mb / got.seconds:7.1f} MB/s, first byte {got.ttfb * 1000:.1f} ms"
                        print(
                            f"  {server.name:8} 1 client, {kind:5} #{i + 1}: {got.seconds:7.3f} s, {rate}", flush=True
                        )
        finally:
            for client in clients.values():
                client.close()
        fig.usage.update({(1, name): phase.end() for name, phase in phases.items()})

        # CONCURRENT simultaneous clients, one server at a time (its peak RSS is that phase's)
        for i in range(args.repeat):
            for server in servers if i % 2 == 0 else servers[::-1]:
                phase = Phase(server.pid)
                for kind in CLIENTS:
                    os.sync()
                    wall, fetches = fetch_many(kind, server.url + path, headers(server), CONCURRENT)
                    for got in fetches:
                        check_body(server.name, study, got)
                    fig.mbps.setdefault((kind, CONCURRENT, server.name), []).append(CONCURRENT * mb / wall)
                    sent = sum(got.size for got in fetches)
                    fig.sent[(CONCURRENT, server.name)] = fig.sent.get((CONCURRENT, server.name), 0) + sent
                    print(f"  {server.name:8} {CONCURRENT} clients, {kind:5} #{i + 1}: {wall:7.3f} s, "
                          f"{CONCURRENT * mb / wall:7.1f} MB/s in all", flush=True)  # fmt: skip
                usage = phase.end()
                before = fig.usage.get((CONCURRENT, server.name))
                if before is not None:  # the peak over the repeats, the CPU summed
                    usage = Usage(max(usage.rss_mb, before.rss_mb), max(usage.children_mb, before.children_mb),
                                  usage.cpu_s + before.cpu_s)  # fmt: skip
                fig.usage[(CONCURRENT, server.name)] = usage


def measure_metadata_and_frame(study: Study, servers: list[Server], fig: Figures, args: argparse.Namespace) -> None:
    """/metadata (first call, then identity and gzip) and frame 1 of the first instance, with httpx."""
    path = f"/studies/{study.uid}"
    series_uid, sop_uid = first_instance(study)
    frame_path = f"{path}/series/{series_uid}/instances/{sop_uid}/frames/1"
    for server in servers:
        with httpx.Client(timeout=TIMEOUT) as client:
            url = server.url + path + "/metadata"
            plain = server.headers(study.uid, Accept="application/dicom+json", **IDENTITY)
            zipped = server.headers(study.uid, Accept="application/dicom+json", **{"Accept-Encoding": "gzip"})
            began = time.perf_counter()
            response = client.get(url, headers=plain)
            fig.metadata_first[server.name] = time.perf_counter() - began
            if response.status_code != 200:
                fig.metadata_first[server.name] = None
                fig.metadata_note[server.name] = f"HTTP {response.status_code}"
            else:
                items = len(response.json())
                encoding = "?"
                for headers, into in ((plain, fig.metadata), (zipped, fig.metadata_gzip)):
                    for _ in range(max(5, args.repeat)):
                        began = time.perf_counter()
                        response = client.get(url, headers=headers)
                        _ = response.content
                        into.setdefault(server.name, []).append(time.perf_counter() - began)
                        encoding = response.headers.get("content-encoding", "identity")
                fig.metadata_note[server.name] = (f"{items} items, {len(response.content) / 1e3:.0f} kB JSON, "
                                                  f"sent as {encoding} when gzip is accepted")  # fmt: skip

            headers = server.headers(study.uid, Accept=ACCEPT_FRAME, **IDENTITY)
            got = fetch(client, server.url + frame_path, headers)
            if got.status != 200:
                fig.frame[server.name] = None
                fig.frame_note[server.name] = f"HTTP {got.status}"
                continue
            times = []
            for _ in range(max(5, args.repeat)):
                got = fetch(client, server.url + frame_path, headers)
                times.append(got.seconds)
            fig.frame[server.name] = times
            fig.frame_note[server.name] = f"{got.size / 1e3:.0f} kB, {got.content_type[:90]}"


def measure_study(study: Study, ours: Server, orthanc: Server, work: Path, args: argparse.Namespace) -> Figures:
    fig = Figures()
    measure_retrieve(study, ours, orthanc, work, fig, args)
    measure_metadata_and_frame(study, [ours, orthanc], fig, args)
    return fig


# --- QIDO -------------------------------------------------------------------------------------


@dataclass
class QidoResult:
    times: dict[str, list[float]] = field(default_factory=dict)  # by query kind, seconds
    matches: dict[str, list[int]] = field(default_factory=dict)
    note: str = ""


def qido_queries(tiny: list[Path], count: int, seed: int = 7) -> list[tuple[str, dict[str, str]]]:
    """A fixed mix of study-level queries: PatientID, a one-week StudyDate range, PatientName prefix*."""
    rng = random.Random(seed)
    sample = [dcmread(p, stop_before_pixels=True) for p in rng.sample(tiny, min(len(tiny), 300))]
    ids = [str(ds.PatientID) for ds in sample]
    dates = sorted({str(ds.StudyDate) for ds in sample})
    prefixes = []
    for ds in sample:
        family = str(ds.PatientName).split("^")[0]
        ascii_start = re.match(r"[A-Z]+", family)
        if ascii_start and len(ascii_start[0]) >= 2:
            prefixes.append(ascii_start[0][:3] + "*")
    queries = []
    for number in range(count):
        if number % 3 == 0:
            queries.append(("PatientID", {"PatientID": rng.choice(ids)}))
        elif number % 3 == 1:
            start = datetime.strptime(rng.choice(dates), "%Y%m%d")
            end = start.fromordinal(start.toordinal() + 6)
            queries.append(("StudyDate range", {"StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}"}))
        else:
            queries.append(("PatientName prefix*", {"PatientName": rng.choice(prefixes)}))
    return queries


UNSCOPED_SERVER = r"""
import sys
from pathlib import Path

import uvicorn

import drimbox.daemon
from drimbox.config import load_settings
from drimbox.dicomweb.access import AccessScope
from drimbox.ports import Principal


class Anyone:
    def verify(self, token):
        return Principal(subject="bench")


def unscoped():
    return AccessScope(None, "bench")


made = []


def no_kos_guard(*args, **kwargs):
    made.append(1)
    return unscoped


drimbox.daemon.kos_guard = no_kos_guard  # build_app's `authorize`: every study visible
app = drimbox.daemon.build_app(drimbox.daemon.build_node(load_settings(Path(sys.argv[1]))), Anyone())
print(len(made), flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=None, log_level="warning", access_log=False)
"""


@contextlib.contextmanager
def unscoped_server(box: Box) -> Iterator[Server | None]:
    """Our daemon's app on the same configuration and index, with the KOS scope lifted (every study
    visible, as QIDO at N studies needs): `build_app` with `kos_guard` replaced by an open scope."""
    port = free_port()
    log = box.log.with_name("unscoped.log")
    with log.open("wb") as out:
        process = subprocess.Popen([python(), "-c", UNSCOPED_SERVER, str(box.config), str(port)],
                                   stdout=subprocess.PIPE, stderr=out, cwd=REPO)  # fmt: skip
    server: Server | None = None
    try:
        assert process.stdout is not None
        guards = process.stdout.readline().strip()
        if guards in (b"", b"0"):
            raise RuntimeError("build_app no longer calls kos_guard")
        wait_port(port, process, timeout=60)
        server = Server("ours-unscoped", process.pid, f"http://127.0.0.1:{port}/dicom-web", lambda _uid, **kw: kw)
    except RuntimeError as exc:
        print(f"  unscoped server not available: {exc}; {log.read_text(errors='replace')[-500:]}")
    try:
        yield server
    finally:
        stop_process(process)


def measure_qido(server: Server, queries: list[tuple[str, dict[str, str]]], headers: dict[str, str]) -> QidoResult:
    result = QidoResult()
    with httpx.Client(timeout=TIMEOUT) as client:

        def url(params: dict[str, str]) -> str:
            # `*` unescaped: Orthanc's plugin does not decode %2A
            return f"{server.url}/studies?{urlencode({**params, 'limit': QIDO_LIMIT}, safe='*^')}"

        probe = client.get(url(queries[0][1]), headers=headers)
        if probe.status_code != 200:
            result.note = f"HTTP {probe.status_code}: {probe.text[:150]}"
            return result
        for _, params in queries[:10]:  # warm-up
            client.get(url(params), headers=headers)
        for kind, params in queries:
            began = time.perf_counter()
            response = client.get(url(params), headers=headers)
            answer = response.json() if response.status_code == 200 else []
            result.times.setdefault(kind, []).append(time.perf_counter() - began)
            result.matches.setdefault(kind, []).append(len(answer))
            if response.status_code != 200:
                result.note = f"some queries answered HTTP {response.status_code}: {response.text[:150]}"
    return result


# --- reporting ----------------------------------------------------------------------------------


def _best(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{max(values):.1f} ({statistics.median(values):.1f})"


def _ms(values: list[float] | None) -> str:
    return f"{statistics.median(values) * 1000:.1f}" if values else "n/a"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}" if ours and theirs else "-"


def _median(values: list[float] | None, scale: float = 1.0) -> float | None:
    return statistics.median(values) * scale if values else None


ROW = "{:<52} {:>16} {:>16} {:>9}"


def print_study_table(study: Study, fig: Figures) -> None:
    largest = max(p.stat().st_size for p in study.files()) / MB
    print(f"\n{study.kind}: {study.instances} instances, {study.bytes / MB:.1f} MB of files (largest {largest:.1f} MB)")
    print(ROW.format("metric", "ours", "Orthanc", "ours/Orth"))

    def row(label: str, ours: str, theirs: str, ratio: str) -> None:
        print(ROW.format(label, ours, theirs, ratio))

    def best(values: list[float] | None) -> float | None:
        return max(values) if values else None

    for kind in CLIENTS:
        for n in (1, CONCURRENT):
            o, t = fig.mbps.get((kind, n, "ours")), fig.mbps.get((kind, n, "orthanc"))
            label = f"retrieve MB/s, {n} client{'s' if n > 1 else ''}{', in all' if n > 1 else ''}, {kind}"
            row(label, _best(o), _best(t), _ratio(best(o), best(t)))
    cold, t1 = fig.mbps.get(("raw", 1, "ours-cold"), []), fig.mbps.get(("raw", 1, "orthanc"))
    row("retrieve MB/s, raw: ours cold, 1st (vs Orthanc)", _best(cold[:1]), _best(t1), _ratio(best(cold[:1]), best(t1)))
    if len(cold) > 1:
        row("retrieve MB/s, raw: ours cold, next (vs Orthanc)", _best(cold[1:]), _best(t1),
            _ratio(best(cold[1:]), best(t1)))  # fmt: skip
    ot, tt = fig.ttfb.get(("raw", "ours")), fig.ttfb.get(("raw", "orthanc"))
    row("time to first byte ms, raw", _ms(ot), _ms(tt), _ratio(_median(ot), _median(tt)))
    ct = fig.ttfb.get(("raw", "ours-cold"), [])
    row("time to first byte ms, raw: ours cold, 1st", _ms(ct[:1]), _ms(tt), _ratio(_median(ct[:1]), _median(tt)))
    if len(ct) > 1:
        row("time to first byte ms, raw: ours cold, next", _ms(ct[1:]), _ms(tt), _ratio(_median(ct[1:]), _median(tt)))
    mf = fig.metadata_first
    first = {name: f"{value * 1000:.1f}" if (value := mf.get(name)) else f"n/a ({fig.metadata_note.get(name, '')})"
             for name in ("ours", "orthanc")}  # fmt: skip
    row("metadata ms, first call", first["ours"], first["orthanc"], _ratio(mf.get("ours"), mf.get("orthanc")))
    for label, data in (("identity", fig.metadata), ("Accept-Encoding: gzip", fig.metadata_gzip)):
        o, t = data.get("ours"), data.get("orthanc")
        row(f"metadata ms, {label}", _ms(o), _ms(t), _ratio(_median(o), _median(t)))
    of, tf = fig.frame.get("ours"), fig.frame.get("orthanc")
    row("frame 1 ms",
        _ms(of) if of else f"n/a ({fig.frame_note.get('ours', '')})",
        _ms(tf) if tf else f"n/a ({fig.frame_note.get('orthanc', '')})",
        _ratio(_median(of), _median(tf)))  # fmt: skip
    for n in (1, CONCURRENT):
        uo, ut = fig.usage.get((n, "ours")), fig.usage.get((n, "orthanc"))
        ours_rss = (f"{uo.rss_mb:.0f}" + (f" (+{uo.children_mb:.0f})" if uo.children_mb else "")) if uo else "-"
        ours_all = uo.rss_mb + uo.children_mb if uo else None
        row(f"server peak RSS MB, {n} client{'s' if n > 1 else ''}", ours_rss, f"{ut.rss_mb:.0f}" if ut else "-",
            _ratio(ours_all, ut.rss_mb if ut else None))  # fmt: skip
    cu = fig.usage.get((1, "ours-cold"))
    if cu:
        row("server peak RSS MB, ours cold (+ child processes)", f"{cu.rss_mb:.0f} (+{cu.children_mb:.0f})", "-", "-")
    for n in (1, CONCURRENT):
        cpu: dict[str, float | None] = {}
        for name in ("ours", "orthanc"):
            sent = fig.sent.get((n, name), 0) / 1e9
            cpu[name] = fig.usage[(n, name)].cpu_s / sent if (n, name) in fig.usage and sent else None
        row(f"server CPU s per GB sent, {n} client{'s' if n > 1 else ''}",
            f"{cpu['ours']:.2f}" if cpu["ours"] is not None else "-",
            f"{cpu['orthanc']:.2f}" if cpu["orthanc"] is not None else "-",
            _ratio(cpu["ours"], cpu["orthanc"]))  # fmt: skip
    print("MB/s: best (median) of the repeats; ms: median; RSS: VmHWM of the server process during the phase,")
    print("(+N): summed VmHWM of its child processes (C-GET workers, HTTP workers); CPU: server process tree")
    for name, part in fig.parts.items():
        if name != "sendfile":
            print(f"first part of the body, {name}: {part}")
    for name in ("ours", "orthanc"):
        if fig.metadata_note.get(name) and fig.metadata_first.get(name):
            print(f"metadata, {name}: {fig.metadata_note[name]}")
        if fig.frame.get(name):
            print(f"frame 1, {name}: {fig.frame_note[name]}")
    limit = {(kind, n): max(fig.mbps[(kind, n, "sendfile")]) for kind in CLIENTS for n in (1, CONCURRENT)}
    print(f"sendfile limit (loopback), MB/s: raw client {limit[('raw', 1)]:.0f} (1), "
          f"{limit[('raw', CONCURRENT)]:.0f} ({CONCURRENT}); httpx client {limit[('httpx', 1)]:.0f} (1), "
          f"{limit[('httpx', CONCURRENT)]:.0f} ({CONCURRENT})")  # fmt: skip
    for kind in CLIENTS:
        shares = []
        for name, label in (("ours", "ours"), ("orthanc", "Orthanc"), ("ours-cold", "ours cold")):
            one, many = best(fig.mbps.get((kind, 1, name))), best(fig.mbps.get((kind, CONCURRENT, name)))
            if one is None:
                continue
            text = f"{label} {100 * one / limit[(kind, 1)]:.0f}%"
            shares.append(text + (f" / {100 * many / limit[(kind, CONCURRENT)]:.0f}%" if many else ""))
        print(f"as % of the sendfile limit, {kind} client (1 client / {CONCURRENT} clients): {', '.join(shares)}")


def print_qido_table(count: int, queries: int, ours: QidoResult, unscoped: QidoResult, theirs: QidoResult) -> None:
    print(f"\nQIDO-RS /studies at {count} tiny studies (+ the studies above): {queries} queries, limit={QIDO_LIMIT}, "
          "1 client; p50 / p95 ms")  # fmt: skip
    row = "{:<20} {:>15} {:>15} {:>15} {:>10} {:>18}"
    print(row.format("query", "ours (KOS)", "ours unscoped", "Orthanc", "unsc./Orth", "matches (3 cols)"))
    kinds = list(theirs.times) or list(unscoped.times) or list(ours.times)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    def cell(result: QidoResult, kind: str | None) -> tuple[str, float | None]:
        values = [t for k, ts in result.times.items() if kind in (None, k) for t in ts]
        if not values:
            return "n/a", None
        return f"{pct(values, 0.5):.1f} / {pct(values, 0.95):.1f}", pct(values, 0.5)

    def matches(result: QidoResult, kind: str | None) -> str:
        found = [m for k, ms in result.matches.items() if kind in (None, k) for m in ms]
        return f"{statistics.mean(found):.1f}" if found else "-"

    for kind in [*kinds, None]:
        (o, _), (u, up50), (t, tp50) = cell(ours, kind), cell(unscoped, kind), cell(theirs, kind)
        found = " / ".join(matches(r, kind) for r in (ours, unscoped, theirs))
        print(row.format((kind or "all").removesuffix(" prefix*").removesuffix(" range"), o, u, t,
                         _ratio(up50, tp50), found))  # fmt: skip
    print("ours (KOS) = the daemon as deployed: answers scoped to the study of the request's KOS (DRIM-M A8);")
    print("ours unscoped = the same app, index and configuration with the KOS scope lifted (a bench-only process);")
    print("matches = mean number of studies answered; PatientName queries are a prefix*, StudyDate ranges 7 days")
    for name, result in (("ours", ours), ("ours unscoped", unscoped), ("Orthanc", theirs)):
        if result.note:
            print(f"QIDO {name}: {result.note}")


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy for the results file."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def environment(args: argparse.Namespace, orthanc: Orthanc) -> dict[str, Any]:
    packages = subprocess.run(["dpkg-query", "-W", "orthanc", "orthanc-dicomweb"], capture_output=True, text=True)
    system = httpx.get(f"{orthanc.url}/system", timeout=10).json()
    plugin = httpx.get(f"{orthanc.url}/plugins/dicom-web", timeout=10).json()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "drimbox"], capture_output=True, text=True, cwd=REPO)
    versions = {}
    for name in ("uvicorn", "starlette", "httpx", "h11", "httptools", "uvloop"):
        try:
            versions[name] = __import__("importlib.metadata").metadata.version(name)
        except Exception:
            versions[name] = "absent"
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "orthanc": system.get("Version"),
        "dicomweb_plugin": plugin.get("Version"),
        "debian_packages": " ".join(packages.stdout.split()),
        "python": sys.version.split()[0],
        "server_stack": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "drimbox_commit": commit.stdout.strip() + (" + uncommitted changes in drimbox/" if dirty.stdout else ""),
        "size": args.size,
        "scale": args.scale,
        "repeat": args.repeat,
        "qido_studies": args.qido,
    }


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size", choices=["full", "sample"], default="full", help="generator image sizes (default full)")
    ap.add_argument("--scale", type=float, default=1.0, help="generator --scale: multiplies CT slices (default 1)")
    ap.add_argument("--dbt", action="store_true", help="also one DBT study (4 views x 60 frames, ~2.2 GB at full)")
    ap.add_argument("--qido", type=int, default=20_000, metavar="N", help="tiny studies for QIDO (default 20000)")
    ap.add_argument("--workers", type=int, default=1, metavar="N", help="our dicomweb.workers (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (our store, index and log)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.qido < 0:
        ap.error("--repeat must be at least 1 and --qido at least 0")
    return args


def bench(args: argparse.Namespace, work: Path) -> None:
    kinds = ["ffdm", "ct", *(["dbt"] if args.dbt else [])]
    studies = ensure_data(args.size, args.scale, kinds)
    tiny = ensure_tiny(args.qido) if args.qido else []
    orthanc = start_orthanc(args.qido, work)
    psc = PscSandbox(clients=[SandboxClient(CLIENT_ID, CLIENT_SECRET)])
    served = psc.serve()
    box: Box | None = None
    try:
        env = environment(args, orthanc)
        print("; ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
        for study in studies:
            upload_study(orthanc, study)
        upload_tiny(orthanc, tiny)
        box = start_box(work, orthanc, psc, served.port, studies, tiny, args.workers)
        assert orthanc.process is not None
        ours = Server("ours", box.process.pid, box.url, box.headers, box.evict)
        theirs = Server("orthanc", orthanc.process.pid, orthanc.url + "/dicom-web", lambda _uid, **extra: dict(extra))
        figures: dict[str, Figures] = {}
        for study in studies:
            print(f"\n{study.kind}: {study.instances} instances, {study.bytes / MB:.1f} MB", flush=True)
            figures[study.kind] = measure_study(study, ours, theirs, work, args)
        qido: tuple[QidoResult, QidoResult, QidoResult] | None = None
        if tiny:
            print(f"\nQIDO-RS: {QIDO_QUERIES} queries on each server", flush=True)
            queries = qido_queries(tiny, QIDO_QUERIES)
            scoped = box.headers(_tiny_uid(tiny[0]), Accept="application/dicom+json")
            plain = {"Accept": "application/dicom+json"}
            unscoped = QidoResult(note="the unscoped server did not start")
            with unscoped_server(box) as server:
                if server is not None:
                    unscoped = measure_qido(server, queries, plain)
            qido = (measure_qido(ours, queries, scoped), unscoped, measure_qido(theirs, queries, plain))
        server_log = box.log.read_text(errors="replace")
        print("\n" + "=" * 100)
        print("; ".join(f"{k}: {v}" for k, v in env.items()))
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print("ours = `drimbox serve` (one process) serving from its store; ours cold = its first request for the")
        print("study, fetched from Orthanc by C-GET while streaming; Orthanc = 1.10 + DICOMweb plugin, its storage")
        print("in page cache; clients in this process, one thread each: raw = plain socket + recv_into, httpx =")
        print("httpx streaming; both read and discard the body; ratio = ours / Orthanc")
        for study in studies:
            print_study_table(study, figures[study.kind])
        if qido:
            print_qido_table(len(tiny), QIDO_QUERIES, *qido)
        problems = [line for line in server_log.splitlines() if re.search(r"ERROR|Traceback|WARNING", line)]
        print(f"\nour server's log: {len(server_log.splitlines())} lines, {len(problems)} warnings/errors")
        for line in problems[:10]:
            print(f"  {line[:300]}")
    finally:
        if box is not None:
            stop_box(box)
        served.stop()
        orthanc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("Orthanc") is None:
        print("needs Orthanc and its DICOMweb plugin: apt-get install orthanc orthanc-dicomweb", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="drimbox-wado-bench-"))
    tee = Tee(sys.stdout)
    status = 0
    try:
        with contextlib.redirect_stdout(tee):
            bench(args, work)
    except BenchError as exc:
        print(f"\nFAILED: {exc}\n(work folder {work})", file=sys.stderr)
        tee.copy.write(f"\nFAILED: {exc}\n")
        args.keep = True
        status = 1
    finally:
        RESULTS.mkdir(parents=True, exist_ok=True)
        result = RESULTS / f"wado-{datetime.now().strftime('%Y%m%d-%H%M%S')}.txt"
        result.write_text(tee.copy.getvalue(), encoding="utf-8")
        print(f"\nresults: {result.relative_to(REPO)}")
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

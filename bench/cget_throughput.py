"""C-GET throughput: drimbox's retrieval vs DCMTK getscu, from the same Orthanc, in the same run.

What it measures, per study kind (FFDM 4 x ~27 MB, CT 500 x ~0.5 MB, optionally DBT 4 x ~557 MB):

- getscu: `getscu -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=UID -od DIR` (TCP_NODELAY=1),
  the reference: wall time of the process and its peak RSS.
- ours: `python -m drimbox.cli --config TOML retrieve UID` (demo mode, one [pacs.bench] peer =
  the Orthanc, retrieve = "c-get"), in a fresh data folder (fresh SQLite index) each time. The
  study is indexed first (`drimbox index --all --quiet`, untimed) so the C-GET knows the SOP
  classes. Reported twice: the wall time of the retrieve process (includes Python start-up and
  imports) and the in-process figure our CLI prints ("N instances stored (X MB in Y s, Z MB/s)";
  the seconds are derived as X / Z for precision).

Both tools run as child processes under GNU time (`/usr/bin/time -f %M`), which gives the peak
RSS (ru_maxrss) of the tool's largest process; the summed PSS of all its processes (drimbox may
use C-GET worker processes) is sampled every 50 ms as well. A third row, `ours-warm`, times
retrievals in one long-lived process (bench/warm_retrieve.py), as the daemon makes them. Each
tool retrieves each study once untimed first (warms Orthanc's cache), then `--repeat` rounds of
one run per tool, each after `settle_disk()`; rates use the best time. The received files are
counted (and their transfer syntax compared with the source, to catch transcoding), moved aside
after each run and deleted once the study is done (see bench/README.md: deleting them at once
made the next run's file creations slow on this VM). The benchmark prints figures; it asserts
nothing. The issue's target: our throughput >= 80 % of getscu's, and our peak RSS independent
of the study size.

Data comes from tools/make_studies.py into bench/.data/<size>-x<scale>/ (generated once, then
reused); a throw-away Orthanc (tests.support.peers.Orthanc, 127.0.0.1 only) serves it. Results
also go to bench/results/cget-<timestamp>.json.

Run from the repository root:

    .venv/bin/python -m bench.cget_throughput                        # FFDM + CT, full size, 3 repeats
    .venv/bin/python -m bench.cget_throughput --size sample --repeat 1   # quick smoke run
    .venv/bin/python bench/cget_throughput.py --dbt --orthanc-pdu 131072
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(REPO))

from drimbox.config import DimseSettings  # noqa: E402
from tests.support.peers import Orthanc, free_port, loopback_shim  # noqa: E402

DATA = REPO / "bench" / ".data"
RESULTS = REPO / "bench" / "results"
GENERATOR = REPO / "tools" / "make_studies.py"
ORTHANC_DEFAULT_PDU = 16384  # Orthanc 1.10's MaximumPduLength default
GETSCU_DEFAULT_PDU = 16384  # getscu's --max-pdu default
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None  # apt-get install time
STORED = re.compile(r"(\d+) instances stored \(([\d.]+) MB in ([\d.]+) s, ([\d.]+) MB/s\)")


@dataclass(frozen=True)
class Study:
    """One generated study, as the generator's manifest describes it."""

    kind: str
    uid: str
    folder: Path
    instances: int
    bytes: int
    transfer_syntax: str

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


@dataclass
class Child:
    """One measured child process."""

    rc: int
    seconds: float
    max_rss_kib: int
    tree_pss_kib: int
    stdout: Path
    stderr: Path

    def tail(self, lines: int = 15) -> str:
        text = self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Run:
    """One timed retrieval of one study by one tool."""

    tool: str
    study: str
    files: int
    bytes: int
    seconds: float
    max_rss_kib: int
    tree_pss_kib: int
    transfer_syntaxes: list[str] = field(default_factory=list)
    inproc_seconds: float | None = None  # ours only: from the CLI's report line
    index_rss_kib: int | None = None  # ours only: the untimed `index` child


class BenchError(RuntimeError):
    """A retrieval failed or delivered the wrong number of instances."""


# --- child processes ----------------------------------------------------------------------


def run_child(cmd: Sequence[str], logs: Path, name: str, env: dict[str, str] | None = None) -> Child:
    """Run `cmd` to completion: wall time around it, peak RSS of its largest process, peak PSS of all.

    The RSS comes from GNU time (`-f %M`, the ru_maxrss its wait4() returns: the largest single
    process, worker processes included). Our own wait4() would overstate it: Linux carries the
    forking process's RSS high-water mark over exec (Python spawns with vfork, so the bench's own
    peak, ~200 MB after uploading, would show for every child). Since drimbox may retrieve with
    worker processes, the summed PSS of the whole process tree is also sampled (TreeMemory).
    """
    out, err, rss = logs / f"{name}.out", logs / f"{name}.err", logs / f"{name}.rss"
    timed = [GNU_TIME, "-f", "%M", "-o", str(rss), *cmd] if GNU_TIME else list(cmd)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        began = time.perf_counter()
        process = subprocess.Popen(timed, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
        sampler = TreeMemory(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - began
        sampler.finish()
    process.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
    max_rss = int(rss.read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return Child(process.returncode, seconds, max_rss, sampler.peak_kib, out, err)


class TreeMemory(threading.Thread):
    """Samples the summed PSS of every descendant of `root` every 50 ms; keeps the peak (KiB)."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(pid) for pid in _descendants(self.root)))
            self._done.wait(self.interval)

    def finish(self) -> None:
        self._done.set()
        self.join()


def _descendants(root: int) -> list[int]:
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                kids = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _pss_kib(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    line = next((line for line in rollup.splitlines() if line.startswith("Pss:")), "Pss: 0 kB")
    return int(line.split()[1])


def received(folder: Path) -> tuple[int, int, list[str]]:
    """Count, total size and transfer syntaxes of the DICOM files under `folder`."""
    sidecars = (".meta.gz", ".frames.json", ".part")  # our metadata and frame index beside each instance
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(sidecars)]
    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files[:3]}
    return len(files), sum(p.stat().st_size for p in files), sorted(syntaxes)


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --- data and Orthanc ---------------------------------------------------------------------


def ensure_data(size: str, scale: float, kinds: list[str]) -> list[Study]:
    """Generate the studies into bench/.data/<size>-x<scale>/ unless they are already there."""
    folder = DATA / f"{size}-x{scale:g}"
    wanted = {"ffdm": ["--ffdm", "1"], "ct": ["--ct", "1"], "dbt": ["--dbt", "1"]}
    missing = [kind for kind in kinds if not _study(folder, kind)]
    if missing:
        counts = [arg for kind in ("ffdm", "dbt", "ct") for arg in wanted[kind] if kind in missing]
        zeros = [arg for kind in ("ffdm", "dbt", "ct") if kind not in missing for arg in (f"--{kind}", "0")]
        cmd = [python(), str(GENERATOR), str(folder), "--size", size, "--scale", f"{scale:g}", *counts, *zeros, "-q"]
        print(f"generating {', '.join(missing)}: {' '.join(cmd[1:])}", flush=True)
        began = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)
    else:
        print(f"reusing {folder.relative_to(REPO)}", flush=True)
    studies = [_study(folder, kind) for kind in kinds]
    return [s for s in studies if s is not None]


def _study(folder: Path, kind: str) -> Study | None:
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return None
    for entry in json.loads(manifest.read_text(encoding="utf-8"))["studies"]:
        if entry["label"] == f"{kind}-000":
            where = folder / entry["dir"]
            files = sorted(where.glob("*.dcm"))
            if len(files) != entry["instances"]:
                return None
            syntax = str(dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
            return Study(kind, entry["StudyInstanceUID"], where, entry["instances"], entry["bytes"], syntax)
    return None


def start_orthanc(work: Path, pdu: int | None) -> Orthanc:
    extra: dict[str, object] = {"MaximumPduLength": pdu} if pdu else {}
    shim = loopback_shim(work)
    return Orthanc(work / "orthanc", shim, extra=extra).start()


def upload(orthanc: Orthanc, studies: list[Study]) -> None:
    for study in studies:
        began = time.perf_counter()
        orthanc.upload(study.files())
        print(f"uploaded {study.kind}: {study.instances} files in {time.perf_counter() - began:.1f} s", flush=True)


# --- the two tools ------------------------------------------------------------------------


def getscu_once(orthanc: Orthanc, study: Study, work: Path, name: str, pdu: int | None) -> Run:
    target = work / name
    target.mkdir()
    cmd = [
        "getscu",
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.uid}",
        "-aec",
        orthanc.ae_title,
        "-aet",
        "GETSCU",
        "-od",
        str(target),
    ]
    if pdu:
        cmd += ["--max-pdu", str(pdu)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    settle_disk(work)
    child = run_child([*cmd, "127.0.0.1", str(orthanc.dicom_port)], work / "logs", name, env)
    try:
        files, size, syntaxes = received(target)
        if child.rc != 0 or files != study.instances:
            raise BenchError(f"getscu ({study.kind}): rc {child.rc}, {files}/{study.instances} files\n{child.tail()}")
        return Run("getscu", study.kind, files, size, child.seconds, child.max_rss_kib, child.tree_pss_kib, syntaxes)
    finally:
        retire(target, work)


SPLIT_BY = "series"  # [pacs.bench] split_by, set from --split-by


def write_config(folder: Path, orthanc: Orthanc) -> Path:
    """A demo-mode configuration with one C-GET peer, the bench's Orthanc."""
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
[auth]
introspection_url = "http://127.0.0.1:9/introspect"
[pacs.bench]
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
retrieve = "c-get"
split_by = "{SPLIT_BY}"
"""
    path = folder / "drimbox.toml"
    path.write_text(text, encoding="utf-8")
    return path


def ours_once(orthanc: Orthanc, study: Study, work: Path, name: str) -> Run:
    box = work / name
    box.mkdir()
    config = write_config(box, orthanc)
    cli = [python(), "-m", "drimbox.cli", "--config", str(config)]
    logs = work / "logs"
    try:
        index = run_child([*cli, "index", "--all", "--quiet"], logs, f"{name}-index")
        if index.rc != 0:
            raise BenchError(f"drimbox index: rc {index.rc}\n{index.tail()}")
        settle_disk(work)
        child = run_child([*cli, "retrieve", study.uid], logs, name)
        report = STORED.search(child.stdout.read_text(errors="replace"))
        stored, mb, rate = (int(report[1]), float(report[2]), float(report[4])) if report else (-1, 0.0, 0.0)
        files, size, syntaxes = received(box / "data" / "store")
        if child.rc != 0 or stored != study.instances or files != study.instances:
            raise BenchError(
                f"drimbox retrieve ({study.kind}): rc {child.rc}, reported {stored}, {files} files, "
                f"expected {study.instances}\n{child.tail()}"
            )
        run = Run("ours", study.kind, files, size, child.seconds, child.max_rss_kib, child.tree_pss_kib, syntaxes)
        run.inproc_seconds = mb / rate if rate else None
        run.index_rss_kib = index.max_rss_kib
        return run
    finally:
        retire(box, work)


class WarmProcess:
    """Our retrievals in one long-lived process after a warm-up, as the daemon makes them
    (bench/warm_retrieve.py): one timed retrieval per `run()`, so they interleave with the rest."""

    def __init__(self, orthanc: Orthanc, study: Study, work: Path) -> None:
        self.study = study
        self.work = work
        box = work / f"ours-warm-{study.kind}"
        box.mkdir()
        config = write_config(box, orthanc)
        self.stderr = (work / "logs" / f"ours-warm-{study.kind}.err").open("wb")
        cmd = [python(), "-m", "bench.warm_retrieve", str(config), study.uid, str(retired_folder(work))]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, cwd=REPO)  # fmt: skip
        self._answer()  # {"ready": true} once warmed up

    def run(self) -> float:
        settle_disk(self.work)
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        result = self._answer()
        if result["stored"] != self.study.instances:
            raise BenchError(f"warm retrieval ({self.study.kind}): {result['stored']} of {self.study.instances} stored")
        return float(result["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.close()
            tail = "\n".join(Path(self.stderr.name).read_text(errors="replace").splitlines()[-15:])
            raise BenchError(f"warm retrieval ({self.study.kind}): rc {self.process.returncode}\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        return answer


def retired_folder(work: Path) -> Path:
    folder = work / "retired"
    folder.mkdir(exist_ok=True)
    return folder


_DROPPED: set[Path] = set()


def settle_disk(work: Path) -> None:
    """Before each run: no writeback of earlier runs' files during it (`sync`), and their pages
    out of the page cache (POSIX_FADV_DONTNEED, once clean). Kept files would otherwise fill
    memory run after run, and this VM reclaims cache early (~4 GB of 24 in use): every tool got
    slower with each round (CT getscu 0.6 s at the first, 1.2-1.5 s by the sixth)."""
    os.sync()
    for path in (work / "retired").rglob("*"):
        if path in _DROPPED or not path.is_file():
            continue
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        _DROPPED.add(path)


def retire(path: Path, work: Path) -> None:
    """Move a run's files aside; `measure` deletes them all once the study is done (README:
    on an ext4 without journal, creating files right after deleting many is slow)."""
    if path.exists():
        path.rename(retired_folder(work) / f"{path.name}-{time.monotonic_ns()}")


# --- measuring and reporting --------------------------------------------------------------


def measure(orthanc: Orthanc, study: Study, work: Path, args: argparse.Namespace) -> dict[str, list[Run]]:
    """One untimed warm-up per tool, then `repeat` rounds of one timed run per tool, interleaved.

    Received files are moved aside after each run and deleted once the study is done.
    """
    runs: dict[str, list[Run]] = {"getscu": [], "ours": [], "warm": []}
    warm_process = None
    try:
        warm = [
            getscu_once(orthanc, study, work, f"getscu-{study.kind}-warm", args.getscu_pdu),
            ours_once(orthanc, study, work, f"ours-{study.kind}-warm"),
        ]
        for run in warm:
            syntaxes = ", ".join(run.transfer_syntaxes)
            print(f"  warm-up {run.tool}: {run.seconds:.2f} s (untimed), received TS {syntaxes}")
        warm_process = WarmProcess(orthanc, study, work)
        print("  warm-up ours (warm process): done (untimed)", flush=True)
        for i in range(args.repeat):
            for result in (
                getscu_once(orthanc, study, work, f"getscu-{study.kind}-{i}", args.getscu_pdu),
                ours_once(orthanc, study, work, f"ours-{study.kind}-{i}"),
            ):
                runs[result.tool].append(result)
                extra = f", in-process {result.inproc_seconds:.2f} s" if result.inproc_seconds else ""
                memory = f"peak RSS {result.max_rss_kib / 1024:.0f} MB, tree PSS {result.tree_pss_kib / 1024:.0f} MB"
                print(f"  {result.tool} #{i + 1}: {result.seconds:.2f} s{extra}, {memory}", flush=True)
            seconds = warm_process.run()
            runs["warm"].append(replace(runs["ours"][0], tool="warm", seconds=seconds))
            print(f"  ours (warm process) #{i + 1}: {seconds:.2f} s", flush=True)
    finally:
        if warm_process is not None:
            warm_process.close()
        shutil.rmtree(work / "retired", ignore_errors=True)
        shutil.rmtree(work / f"ours-warm-{study.kind}", ignore_errors=True)
    return runs


def summarize(runs: list[Run], seconds: list[float], label: str, instances: int) -> dict[str, Any]:
    best, median = min(seconds), statistics.median(seconds)
    mb = runs[0].bytes / 1e6
    return {
        "tool": label,
        "MB": mb,
        "s_best": best,
        "s_median": median,
        "MBps_best": mb / best,
        "MBps_median": mb / median,
        "inst_per_s": instances / best,
        "peak_rss_MB": max(r.max_rss_kib for r in runs) / 1024,
        "tree_pss_MB": max(r.tree_pss_kib for r in runs) / 1024,
    }


def rows_for(study: Study, runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """One row per tool; ours also with their ratios to getscu run by run (the same round's runs,
    made within seconds of each other: steadier than best times on a VM whose speed drifts)."""
    ours = runs["ours"]
    reference = [r.seconds for r in runs["getscu"]]
    timed: list[tuple[str, list[Run], list[float]]] = [("ours-wall", ours, [r.seconds for r in ours])]
    inproc = [r.inproc_seconds for r in ours if r.inproc_seconds]
    if len(inproc) == len(ours):
        timed.append(("ours-inproc", ours, inproc))
    if runs.get("warm"):
        timed.append(("ours-warm", runs["warm"], [r.seconds for r in runs["warm"]]))
    rows = [summarize(runs["getscu"], reference, "getscu", study.instances)]
    for label, tool_runs, seconds in timed:
        row = summarize(tool_runs, seconds, label, study.instances)
        row["paired_ratios"] = [theirs / mine for theirs, mine in zip(reference, seconds, strict=True)]
        rows.append(row)
    return rows


ROW = "{:<6}  {:<11} {:>7} {:>8} {:>9} {:>7} {:>9} {:>7} {:>10} {:>11}"


def print_table(study: Study, rows: list[dict[str, Any]]) -> None:
    print(f"\n{study.kind}: {study.instances} instances, {study.bytes / 1e6:.1f} MB of source files")
    print(
        ROW.format(
            "study", "tool", "MB", "s(best)", "s(median)", "MB/s", "MB/s(med)", "inst/s", "peakRSS_MB", "treePSS_MB"
        )
    )
    for r in rows:
        figures = [f"{r['MB']:.1f}", f"{r['s_best']:.3f}", f"{r['s_median']:.3f}", f"{r['MBps_best']:.1f}"]
        figures += [f"{r['MBps_median']:.1f}", f"{r['inst_per_s']:.1f}", f"{r['peak_rss_MB']:.1f}"]
        figures += [f"{r['tree_pss_MB']:.1f}" if r["tree_pss_MB"] else "-"]  # too short to sample
        print(ROW.format(study.kind, r["tool"], *figures))
    ref = rows[0]["MBps_best"]
    ratios = ", ".join(f"{r['tool'].removeprefix('ours-')} {100 * r['MBps_best'] / ref:.0f}%" for r in rows[1:])
    print(f"ours/getscu throughput ({study.kind}, best times): {ratios}  (target >= 80%)")
    paired = ", ".join(
        f"{r['tool'].removeprefix('ours-')} {100 * statistics.median(r['paired_ratios']):.0f}%"
        f" ({100 * min(r['paired_ratios']):.0f}-{100 * max(r['paired_ratios']):.0f}%)"
        for r in rows[1:]
        if r.get("paired_ratios")
    )
    print(f"ours/getscu throughput ({study.kind}, run by run in each round, median (range)): {paired}")


def print_rss_note(results: dict[str, dict[str, Any]]) -> None:
    def peak(tool: str, attr: str) -> dict[str, float]:
        return {kind: max(getattr(r, attr) or 0 for r in res["runs"][tool]) / 1024 for kind, res in results.items()}

    def show(values: dict[str, float]) -> str:
        return ", ".join(f"{kind} {value:.1f} MB" for kind, value in values.items())

    ours, tree = peak("ours", "max_rss_kib"), peak("ours", "tree_pss_kib")
    print("\npeakRSS_MB = ru_maxrss of the largest single process (GNU time); treePSS_MB = peak of the")
    print("summed PSS of all the tool's processes (worker processes included), sampled every 50 ms")
    print(f"ours, peak RSS (largest process): {show(ours)}; spread {max(ours.values()) - min(ours.values()):.1f} MB")
    print(f"ours, peak PSS (all processes): {show(tree)}; spread {max(tree.values()) - min(tree.values()):.1f} MB")
    print(f"ours, `index` process (same imports, no retrieval), peak RSS: {show(peak('ours', 'index_rss_kib'))}")
    print(f"getscu, peak RSS: {show(peak('getscu', 'max_rss_kib'))}")
    print(f"largest instance: {show({kind: res['largest_instance_MB'] for kind, res in results.items()})}")


def environment(args: argparse.Namespace, orthanc: Orthanc) -> dict[str, Any]:
    dcmtk = subprocess.run(["getscu", "--version"], capture_output=True, text=True).stdout.splitlines()
    packages = subprocess.run(["dpkg-query", "-W", "orthanc", "dcmtk"], capture_output=True, text=True).stdout
    system = httpx.get(f"{orthanc.url}/system", timeout=10).json()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "drimbox"], capture_output=True, text=True, cwd=REPO)
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "orthanc": system.get("Version"),
        "dcmtk": dcmtk[0].strip(" $").removeprefix("dcmtk: ") if dcmtk else "?",
        "debian_packages": " ".join(packages.split()),
        "python": sys.version.split()[0],
        "drimbox_commit": commit.stdout.strip() + (" + uncommitted changes in drimbox/" if dirty.stdout else ""),
        "peak_rss_from": "GNU time -f %M" if GNU_TIME else "os.wait4 (overstated: includes the bench's own peak)",
        "orthanc_max_pdu": args.orthanc_pdu or f"default ({ORTHANC_DEFAULT_PDU})",
        "getscu_max_pdu": args.getscu_pdu or f"default ({GETSCU_DEFAULT_PDU})",
        "ours_max_pdu": f"{DimseSettings().max_pdu} (drimbox default)",
        "ours_split_by": SPLIT_BY,
        "size": args.size,
        "scale": args.scale,
        "repeat": args.repeat,
    }


def save(env: dict[str, Any], results: dict[str, dict[str, Any]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"cget-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "environment": env,
        "studies": {
            kind: {
                **{k: v for k, v in res.items() if k != "runs"},
                "runs": {tool: [asdict(r) for r in runs] for tool, runs in res["runs"].items()},
            }
            for kind, res in results.items()
        },
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--size", choices=["full", "sample"], default="full", help="generator image sizes (default full)")
    ap.add_argument("--scale", type=float, default=1.0, help="generator --scale: multiplies CT slices (default 1)")
    ap.add_argument("--dbt", action="store_true", help="also one DBT study (4 views x 60 frames, ~2.2 GB at full)")
    ap.add_argument(
        "--studies", default="ffdm,ct", help="comma-separated study kinds among ffdm, ct, dbt (default ffdm,ct)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool and study (default 3)")
    ap.add_argument("--orthanc-pdu", type=int, metavar="N", help="Orthanc MaximumPduLength (default: Orthanc's)")
    ap.add_argument("--getscu-pdu", type=int, metavar="N", help="getscu --max-pdu (default: getscu's, 16384)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (Orthanc, logs) for inspection")
    ap.add_argument(
        "--split-by", choices=["series", "instances"], default="series", help="our peer's split_by (default: series)"
    )
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.kinds = [kind for kind in args.studies.split(",") if kind] + (["dbt"] if args.dbt else [])
    if not args.kinds or set(args.kinds) - {"ffdm", "ct", "dbt"}:
        ap.error("--studies takes ffdm, ct and dbt, comma-separated")
    args.kinds = list(dict.fromkeys(args.kinds))
    return args


def bench(args: argparse.Namespace, work: Path) -> None:
    studies = ensure_data(args.size, args.scale, args.kinds)
    (work / "logs").mkdir()
    orthanc = start_orthanc(work, args.orthanc_pdu)
    try:
        env = environment(args, orthanc)
        print("; ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
        upload(orthanc, studies)
        results: dict[str, dict[str, Any]] = {}
        for study in studies:
            print(f"\n{study.kind}: one untimed retrieval per tool to warm Orthanc's cache, then {args.repeat} timed")
            runs = measure(orthanc, study, work, args)
            largest = max(p.stat().st_size for p in study.files()) / 1e6
            results[study.kind] = {
                "instances": study.instances,
                "source_MB": study.bytes / 1e6,
                "source_transfer_syntax": study.transfer_syntax,
                "largest_instance_MB": largest,
                "rows": rows_for(study, runs),
                "runs": runs,
            }
        print("\n" + "=" * 100)
        print("; ".join(f"{k}: {v}" for k, v in env.items()))
        print("rates use the best time; ours-wall = retrieve process wall time (Python start-up included),")
        print("ours-inproc = the CLI's own figure; indexing before each retrieval is untimed;")
        print("ours-warm = retrievals in one long-lived process after a warm-up, as the daemon makes them")
        for study in studies:
            print_table(study, results[study.kind]["rows"])
            _print_syntaxes(study, results[study.kind]["runs"])
        print_rss_note(results)
        load = env["loadavg_1min_at_start"]
        print(f"load average (1 min) before the run: {load:.2f} on {env['cpus']} CPUs (other work skews the figures)")
        print(f"\nresults: {save(env, results).relative_to(REPO)}")
    finally:
        orthanc.stop()


def _print_syntaxes(study: Study, runs: dict[str, list[Run]]) -> None:
    for tool, tool_runs in runs.items():
        got = sorted({ts for r in tool_runs for ts in r.transfer_syntaxes})
        if got != [study.transfer_syntax]:
            print(f"  NOTE {tool} received {got}, source files are {study.transfer_syntax} (transcoded?)")


def main(argv: Sequence[str] | None = None) -> int:
    global SPLIT_BY
    args = parse_args(argv)
    SPLIT_BY = args.split_by
    if shutil.which("getscu") is None or shutil.which("Orthanc") is None:
        print("needs DCMTK (getscu) and Orthanc: apt-get install dcmtk orthanc orthanc-gdcm", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-"))
    try:
        bench(args, work)
    except BenchError as exc:
        print(f"\nFAILED: {exc}\n(logs in {work}/logs and {work}/orthanc/orthanc.log)", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

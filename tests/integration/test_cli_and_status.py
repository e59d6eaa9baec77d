"""The `drimbox` command and the status pages, as an operator uses them (real processes and sockets)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import pytest

from drimbox.config import load_settings
from drimbox.daemon import Daemon
from drimbox.index import db
from tests.conftest import NodeFactory, orthanc_peer, write_config
from tests.support.datasets import MG, StudySpec, write_study
from tests.support.peers import Orthanc, free_port

REPO = Path(__file__).parents[2]


def drimbox(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drimbox.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


@pytest.fixture
def study_in_orthanc(orthanc: Orthanc, tmp_path: Path) -> StudySpec:
    spec = StudySpec(series=[(MG, "MG", 4)], accession="ACC42")
    orthanc.upload(write_study(spec, tmp_path / "mg"))
    return spec


def test_echo_index_retrieve_status_commands(orthanc: Orthanc, study_in_orthanc: StudySpec, tmp_path: Path) -> None:
    config = write_config(tmp_path, peers={"main": orthanc_peer(orthanc)}, dimse_port=free_port(),
                          http_port=free_port())  # fmt: skip
    echo = drimbox("--config", str(config), "echo", "main")
    assert echo.returncode == 0 and "C-ECHO ok" in echo.stdout

    index = drimbox("--config", str(config), "index", "--since", "2026-11-01", "--until", "2026-11-30", "--quiet")
    assert index.returncode == 0, index.stderr
    assert "main: 1 studies seen — 1 new" in index.stdout

    retrieve = drimbox("--config", str(config), "retrieve", study_in_orthanc.study_uid)
    assert retrieve.returncode == 0, retrieve.stderr
    assert retrieve.stdout.startswith("4 instances stored") and "by C-GET from main" in retrieve.stdout
    assert "retrieving: 100%" in retrieve.stderr and "4/4" in retrieve.stderr  # the progress bar

    status = drimbox("--config", str(config), "status", "--json")
    state = json.loads(status.stdout)
    assert state["index"]["instances_held"] == 4 and state["peers"][0]["reachable"] is True

    upgrade = drimbox("--config", str(config), "db", "upgrade")
    assert upgrade.returncode == 0 and f"revision {db.head_revision()}" in upgrade.stdout


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, peers={}, dimse_port=free_port(), http_port=free_port())
    unknown = drimbox("--config", str(config), "echo", "nowhere")
    assert unknown.returncode == 1
    assert (
        unknown.stderr.strip()
        == "drimbox: error: unknown PACS peer 'nowhere' (known: none configured); see [pacs.<name>]"
    )

    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("port = ", "port = -", 1))
    refused = drimbox("--config", str(bad), "status")
    assert refused.returncode == 1
    assert "http.port: Input should be greater than or equal to 1" in refused.stderr
    assert "Traceback" not in refused.stderr

    bad_uid = drimbox("--config", str(config), "retrieve", "1.2.abc")
    assert bad_uid.returncode == 1 and "not a valid DICOM UID" in bad_uid.stderr


def test_status_pages_over_http(orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    daemon = Daemon(load_settings(node.config_path))  # type: ignore[attr-defined]
    node.scp.stop()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    base = daemon.settings.http.public_base_url
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                state = httpx.get(f"{base}/status", headers={"Accept": "application/json"}, timeout=2).json()
                if state["peers"][0]["reachable"] is not None:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert state["version"] and state["mode"] == "demo" and state["peers"][0]["reachable"] is True
        assert set(state["index"]) >= {"patients", "studies", "series", "instances", "instances_held"}
        page = httpx.get(f"{base}/status", timeout=5)
        assert page.headers["content-type"].startswith("text/html")
        assert "PACS peers" in page.text and "reachable" in page.text
        health = httpx.get(f"{base}/health", timeout=5).json()
        assert health["status"] == "ok"
    finally:
        assert daemon.server is not None
        daemon.server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()


def _four_free_ports() -> int:
    """A port p with p..p+3 free: the demo listens on HTTP, then PSC, DMP and MLLP sandboxes."""
    for _ in range(50):
        port = free_port()
        if port + 3 > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(4):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise AssertionError("no four consecutive free ports")


def test_demo_runs_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _four_free_ports()
    child = subprocess.Popen(
        [sys.executable, "-m", "drimbox.cli", "demo", "--data", str(tmp_path / "demo"), "--http-port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        state: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                state = httpx.get(f"http://127.0.0.1:{port}/status?format=json", timeout=2).json()
                break
            except httpx.HTTPError:
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                time.sleep(0.2)
        assert state["index"] == state["index"] | {"studies": 3, "series": 3, "instances": 29}  # type: ignore[operator]
        banner = _banner_of(child)
        # The printed example works: a sandbox PSC token and a demo KOS open a study over DICOMweb,
        # fetched on demand from the demo PACS.
        token = re.search(r"TOKEN=(\S+)", banner)
        example = re.search(r'KOS-SOPInstanceUID: ([0-9.]+)".*?\n\s+(http://\S+/metadata)', banner, re.S)
        assert token and example, banner
        metadata = httpx.get(example[2], timeout=60, headers={
            "Authorization": f"Bearer {token[1]}", "KOS-SOPInstanceUID": example[1]})  # fmt: skip
        assert metadata.status_code == 200, metadata.text
        assert metadata.json() and all("0020000D" in item for item in metadata.json())
        refused = httpx.get(example[2], timeout=10, headers={"KOS-SOPInstanceUID": example[1]})
        assert refused.status_code == 401
    finally:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "status page    http://127.0.0.1:" in banner + out
    pacs_log = tmp_path / "demo" / "demo-pacs" / "qrscp.log"
    assert pacs_log.exists()
    qrscp = subprocess.run(["pgrep", "-f", str(tmp_path / "demo" / "demo-pacs" / "qrscp.ini")], capture_output=True)
    assert qrscp.returncode == 1, "the demo PACS must be stopped with the demo"


def _banner_of(child: subprocess.Popen[str]) -> str:
    """The demo's banner, read line by line up to its last line."""
    assert child.stdout is not None
    lines: list[str] = []
    while not lines or "Ctrl-C stops" not in lines[-1]:
        line = child.stdout.readline()
        assert line, "the demo ended before printing its banner"
        lines.append(line)
    return "".join(lines)


def test_index_summary_dates(orthanc: Orthanc, study_in_orthanc: StudySpec, make_node: NodeFactory) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    outside = node.index_peer("main", date(2026, 10, 1), date(2026, 10, 31))
    assert outside.studies_seen == 0
    inside = node.index_peer("main", date(2026, 11, 20), date(2026, 11, 20))
    assert inside.studies_seen == 1


def test_demo_on_a_busy_port_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = drimbox("demo", "--data", str(tmp_path / "demo"), "--http-port", str(port))
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"drimbox: error: port {port} is in use; pick another one: ./run demo --http-port 9000"
    )

"""Real peers for integration tests: Orthanc, DCMTK dcmqrscp, a throw-away PostgreSQL.

Each runs as a child process on free 127.0.0.1 ports with a configuration written by the test.
Orthanc and dcmqrscp bind 0.0.0.0 and have no option against it; `loopback_bind.so` (built
from tests/support/loopback_bind.c) rewrites their wildcard binds to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text

from drimbox.index import db

SUPPORT = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def loopback_shim(build_dir: Path) -> Path:
    """Compile the LD_PRELOAD shim once per test session."""
    target = build_dir / "loopback_bind.so"
    if not target.exists():
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(target), str(SUPPORT / "loopback_bind.c"), "-ldl"],
            check=True,
        )
    return target


def _env(shim: Path) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": str(shim), "TCP_NODELAY": "1"}


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Orthanc:
    """An Orthanc server from the Debian package, with its DICOMweb and GDCM plugins."""

    def __init__(
        self,
        folder: Path,
        shim: Path,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        self.folder = folder
        self.shim = shim
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = "ORTHANC"
        self.modalities = modalities or {}
        self.extra = extra or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        plugins = [
            p
            for p in (
                "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                "/usr/share/orthanc/plugins/libOrthancGdcm.so",
            )
            if Path(p).exists()
        ]
        config = {
            "Name": "test-orthanc",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": plugins,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "StorageCompression": False,
            **self.extra,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["Orthanc", str(path)], stdout=self.log, stderr=subprocess.STDOUT, env=_env(self.shim)
        )
        wait_port(self.http_port, self.process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        wait_port(self.dicom_port, self.process)
        return self

    def upload(self, files: list[Path]) -> list[str]:
        """POST files to /instances; return the Orthanc instance ids."""
        ids = []
        with httpx.Client(base_url=self.url, timeout=120) as client:
            for path in files:
                response = client.post("/instances", content=path.read_bytes())
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids

    def delete_instance(self, sop_uid: str) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            found = client.post("/tools/lookup", content=sop_uid).json()
            for item in found:
                client.delete(f"/instances/{item['ID']}").raise_for_status()

    def clear(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for patient in client.get("/patients").json():
                client.delete(f"/patients/{patient}").raise_for_status()

    def study_uids(self) -> set[str]:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            studies = client.get("/studies", params={"expand": ""}).json()
            return {s["MainDicomTags"]["StudyInstanceUID"] for s in studies}

    def sop_uids(self) -> set[str]:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            instances = client.get("/instances", params={"expand": ""}).json()
            return {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
            self.log.close()


class DcmQrScp:
    """DCMTK's dcmqrscp as a second PACS implementation, with its files indexed by dcmqridx."""

    def __init__(
        self, folder: Path, shim: Path, destinations: dict[str, tuple[str, str, int]], options: tuple[str, ...] = ()
    ) -> None:
        # dcmqrscp cannot encode JPEG 2000: `+xv -xv` (needed to serve J2K files) makes it
        # negotiate J2K for uncompressed files too, then fail to convert (0xA702). Options follow the data.
        self.options = options
        self.folder = folder
        self.shim = shim
        self.port = free_port()
        self.ae_title = "QRSCP"
        self.destinations = destinations
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, files: list[Path]) -> DcmQrScp:
        db = self.folder / "db"
        db.mkdir(parents=True, exist_ok=True)
        copies = []
        for number, path in enumerate(files):
            target = db / f"f{number:05d}.dcm"
            shutil.copyfile(path, target)
            copies.append(str(target))
        subprocess.run(["dcmqridx", str(db), *copies], check=True, capture_output=True)
        hosts = "\n".join(f"{name} = ({aet}, {host}, {port})" for name, (aet, host, port) in self.destinations.items())
        config = self.folder / "dcmqrscp.cfg"
        config.write_text(
            f"""NetworkTCPPort  = {self.port}
MaxPDUSize      = 16384
MaxAssociations = 16
HostTable BEGIN
{hosts}
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{self.ae_title}  {db}  RW  (1000, 1024mb)  ANY
AETable END
"""
        )
        self.log = open(self.folder / "dcmqrscp.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["dcmqrscp", *self.options, "-c", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=_env(self.shim),
        )
        wait_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
            self.log.close()


class Postgres:
    """A throw-away PostgreSQL cluster (Debian's server binaries), also when running as root."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
        self.bin = bins[-1]
        self.folder = Path(tempfile.mkdtemp(prefix="drimbox-pg-"))
        self.port = free_port()

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        os.chmod(self.folder, 0o700)
        data = self.folder / "data"
        subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                       check=True, capture_output=True)  # fmt: skip
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "log"),
                                      "-w", "-t", "60", "-o", options, "start"),
                       check=True, capture_output=True)  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database in this cluster; its URL."""
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        admin = db.make_engine(self.url())
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.url(name)

    def stop(self) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                           capture_output=True)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)

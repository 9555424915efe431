"""Everything an online run needs, started in order and stopped in reverse — also on Ctrl-C, SIGTERM or error.

The stack, bottom up:

1. the **platform** (Tansu + SeaweedFS): given explicitly (tests), or the ``cutalign up`` one — reused when it
   is already running (and then left running), else started here and stopped at the end;
2. a **run namespace**: a fresh bucket ``cutalign-run-<id>`` and topics ``cutalign.<id>.*``, so a run never
   sees another run's iterations, prompts or judgments on a persistent platform;
3. the **policy server** (the embedded KServe server, a subprocess) serving the base model, hot-reloaded by
   each iteration's promotion;
4. the **generator, judge and target builder** services, each in a thread of this process through its
   in-process ``run``/``serve``; a service that fails ends the run with its error.

The pipeline's tasks (KFP local runner subprocesses) and the trainer read their settings from the environment,
so while the stack is up ``os.environ`` carries the run's ``CUTALIGN_KAFKA_*``/``CUTALIGN_S3_*`` settings; the
previous environment is restored on exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from cutalign.builder import TargetBuilder
from cutalign.bus import provision_topics
from cutalign.config import (
    BuilderSettings,
    GeneratorSettings,
    JudgeSettings,
    KafkaSettings,
    PolicySettings,
    S3Settings,
)
from cutalign.generator.service import run as run_generator
from cutalign.iteration.task import Task
from cutalign.judging.service import run as run_judge
from cutalign.platform import LocalPlatform
from cutalign.policy.launcher import PolicyServerProcess, start_policy_server
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


class ServiceFailed(RuntimeError):
    """A service thread stopped with an error; the run cannot go on."""


@dataclass(frozen=True)
class StackSettings:
    """How the services of a run are configured (the rest comes from each service's defaults)."""

    run_id: str
    work_dir: Path
    template: str = "plain"
    max_new_tokens: int = 64
    judge: str = "counting"
    judge_options_json: str = "{}"
    align_p_ratio: float | None = 0.25  # builder's Align-P downsampling (None: keep every positive)
    server_threads: int = 1
    server_batch_size: int = 32
    poll_interval_s: float = 0.5
    env: dict[str, str] = field(default_factory=dict)  # extra environment for pipeline tasks

    def for_task(self, task: Task, align_p_ratio: float | None) -> StackSettings:
        """These settings with the task's decoding and judge, and the run's Align-P downsampling."""
        return dataclasses.replace(
            self,
            template=task.decoding.template,
            max_new_tokens=task.decoding.max_new_tokens,
            judge=task.judge,
            judge_options_json=json.dumps(dict(task.judge_options)),
            align_p_ratio=align_p_ratio,
        )


@dataclass
class Stack:
    """A running stack: what clients of the run need."""

    kafka: KafkaSettings
    s3: S3Settings
    store: ArtifactStore  # the run's bucket
    server: PolicyServerProcess
    builder_url: str
    services: ServiceThreads
    platform_started: bool


class ServiceThreads:
    """Each service's blocking loop in a daemon thread; ``check`` re-raises the first failure.

    A service that stops with an error (or returns before ``stop`` is set) also writes its error to
    ``abort_file``: the pipeline's wait step (``CUTALIGN_ITERATION_ABORT_FILE``) fails as soon as it appears,
    so the run ends with the service's error instead of waiting for judgments that will never come.
    """

    def __init__(self, abort_file: Path | None = None) -> None:
        self.stop = threading.Event()
        self.abort_file = abort_file
        self.errors: list[tuple[str, BaseException]] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                target()
                if not self.stop.is_set():
                    raise ServiceFailed(f"the {name} service stopped on its own")
            except BaseException as e:  # handed to the main thread by check()
                log.exception("service %s failed", name)
                self.errors.append((name, e))
                if self.abort_file is not None and not self.stop.is_set():
                    self.abort_file.write_text(f"the {name} service failed: {e}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def check(self) -> None:
        if self.errors:
            name, error = self.errors[0]
            raise ServiceFailed(f"the {name} service failed: {error}") from error

    def close(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("service thread %s did not stop within %.0f s", thread.name, timeout_s)


def new_run_id() -> str:
    """``20261127-013045-a1b2``: sortable by start time, unique across concurrent runs."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def run_bucket(run_id: str) -> str:
    return f"cutalign-run-{run_id}"


def run_topics(kafka: KafkaSettings, run_id: str) -> KafkaSettings:
    prefix = f"cutalign.{run_id}"
    return kafka.model_copy(
        update={
            "topic_prompts": f"{prefix}.prompts",
            "topic_samples": f"{prefix}.samples",
            "topic_judgments": f"{prefix}.judgments",
            "topic_deadletter": f"{prefix}.deadletter",
        }
    )


def settings_env(kafka: KafkaSettings, s3: S3Settings) -> dict[str, str]:
    """The ``CUTALIGN_KAFKA_*``/``CUTALIGN_S3_*`` variables that make ``KafkaSettings()``/``S3Settings()``
    in a child process equal to these."""
    access, secret = s3.credentials()
    return {
        "CUTALIGN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CUTALIGN_KAFKA_TOPIC_PROMPTS": kafka.topic_prompts,
        "CUTALIGN_KAFKA_TOPIC_SAMPLES": kafka.topic_samples,
        "CUTALIGN_KAFKA_TOPIC_JUDGMENTS": kafka.topic_judgments,
        "CUTALIGN_KAFKA_TOPIC_DEADLETTER": kafka.topic_deadletter,
        "CUTALIGN_S3_ENDPOINT": s3.endpoint,
        "CUTALIGN_S3_ACCESS_KEY": access,
        "CUTALIGN_S3_SECRET_KEY": secret,
        "CUTALIGN_S3_SECURE": str(s3.secure).lower(),
        "CUTALIGN_S3_REGION": s3.region,
        "CUTALIGN_S3_BUCKET": s3.bucket,
    }


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ``; restore the previous values (or absence) on exit."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so ``finally`` blocks stop what was started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def platform_session(
    kafka: KafkaSettings | None, s3: S3Settings | None
) -> Iterator[tuple[KafkaSettings, S3Settings, bool]]:
    """(kafka, s3, started here): explicit settings as given, else the ``cutalign up`` platform."""
    if kafka is not None and s3 is not None:
        yield kafka, s3, False
        return
    platform = LocalPlatform.from_env()
    state = platform.status()
    running = [name for name, info in state.items() if info["running"] and info["listening"]]
    if len(running) == len(state):
        log.info(
            "reusing the running platform (kafka :%s, s3 :%s)",
            platform.settings.kafka_port,
            platform.settings.s3_port,
        )
        yield platform.kafka_settings, platform.s3, False
        return
    platform.up()
    try:
        yield platform.kafka_settings, platform.s3, not running
    finally:
        if not running:  # started here: stop it (data stays for the next run)
            platform.down()
        else:
            log.warning("left %s running: it was running before this run started", ", ".join(running))


@contextmanager
def local_stack(
    settings: StackSettings,
    base_model_uri: Callable[[ArtifactStore], str],
    *,
    kafka: KafkaSettings | None = None,
    s3: S3Settings | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Iterator[Stack]:
    """Start the stack (see module doc) and yield it; stop everything it started on exit.

    ``base_model_uri(store)`` is called once the platform is up with a store on the default bucket, and
    returns the policy to serve first (e.g. after building or fetching the demo's base model).
    """
    stage = on_stage or (lambda name: None)
    with ExitStack() as stack:
        stack.enter_context(interrupt_on_sigterm())
        stage("platform")
        kafka_base, s3_base, started = stack.enter_context(platform_session(kafka, s3))
        base_uri = base_model_uri(ArtifactStore(s3_base))
        run_kafka = run_topics(kafka_base, settings.run_id)
        run_s3 = s3_base.model_copy(update={"bucket": run_bucket(settings.run_id)})
        store = ArtifactStore(run_s3)
        store.ensure_bucket()
        provision_topics(run_kafka)
        abort_file = _mkdir(settings.work_dir) / "services-failed.txt"
        abort_file.unlink(missing_ok=True)
        env = {
            **settings_env(run_kafka, run_s3),
            "CUTALIGN_ITERATION_POLL_INTERVAL_S": str(settings.poll_interval_s),
            "CUTALIGN_ITERATION_ABORT_FILE": str(abort_file),
            "TMPDIR": str(_mkdir(settings.work_dir / "tmp")),  # the local runner leaves a dir per task
            **settings.env,
        }
        stack.enter_context(patched_environ(env))

        stage("policy server")
        server = start_policy_server(
            base_uri,
            env=dict(os.environ) | {"OMP_NUM_THREADS": str(settings.server_threads)},
            log_path=settings.work_dir / "policy-server.log",
            torch_threads=settings.server_threads,
            max_batch_size=settings.server_batch_size,
            policy_model_id="base",
        )
        stack.callback(server.stop)
        # the pipeline's promote step hot-reloads each release through the server's admin route
        stack.enter_context(patched_environ({"CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN": server.admin_token}))

        stage("services")
        services = ServiceThreads(abort_file)
        stack.callback(services.close)
        policy = PolicySettings(
            url=server.url,
            model_name=server.model_name,
            template=settings.template,  # type: ignore[arg-type]
            max_new_tokens=settings.max_new_tokens,
            max_in_flight=settings.server_batch_size,
        )
        generator = GeneratorSettings(
            group_id=f"{settings.run_id}-generator", batch_size=64, poll_timeout_s=0.2
        )
        services.start(
            "generator", lambda: run_generator(run_kafka, policy, generator, services.stop, store=store)
        )
        judge = JudgeSettings(
            judge=settings.judge,
            options_json=settings.judge_options_json,
            group_id=f"{settings.run_id}-judge",
            http_port=0,
        )
        services.start("judge", lambda: run_judge(run_kafka, judge, stop_event=services.stop))
        builder = TargetBuilder(
            run_kafka,
            run_s3,
            BuilderSettings(
                iteration=1,
                http_port=0,
                http_host="127.0.0.1",
                shard_max_seconds=0.5,
                align_p_ratio=settings.align_p_ratio,
                group_id=f"{settings.run_id}-builder",
            ),
            store=store,
        )
        services.start("builder", lambda: builder.serve(services.stop))
        stack.enter_context(patched_environ({"CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN": builder.admin_token}))
        deadline = time.monotonic() + 60
        while not builder.ready.is_set():
            services.check()
            if time.monotonic() > deadline:
                raise ServiceFailed("the target builder did not become ready within 60 s")
            time.sleep(0.05)
        yield Stack(
            kafka=run_kafka,
            s3=run_s3,
            store=store,
            server=server,
            builder_url=f"http://127.0.0.1:{builder.http_port}",
            services=services,
            platform_started=started,
        )
        services.check()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

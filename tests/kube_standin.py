"""STAND-IN for the Kubernetes API server and the Training Operator (neither can run here).

It serves the custom-objects REST endpoints the real ``kubernetes`` client calls for PyTorchJobs — create
(POST, 409 on a duplicate name), get, list by ``labelSelector``, delete — on 127.0.0.1, with a kubeconfig
pointing at it. Like the Training Operator it then runs the job: the Master replica's ``pytorch`` container
(command, args and env resolved as the kubelet would, Secrets from the installation; see
``release_support``) as a local process, with one process per node (no GPUs here), and reports the
operator's status conditions (Created, Running, Succeeded or Failed with the exit code). Deleting a job kills
its process. Other job kinds answer 404, as on a cluster without their CRD.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cutalign.policy.launcher import free_port
from release_support import Cluster, Rewrites, base_env, container_env, local_command

_PATH = re.compile(
    r"^/apis/kubeflow\.org/v1/namespaces/(?P<ns>[^/]+)/pytorchjobs(?:/(?P<name>[^/?]+))?(?:\?(?P<q>.*))?$"
)


@dataclass
class Job:
    body: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None

    def status(self) -> dict[str, Any]:
        code = None if self.process is None else self.process.poll()
        condition = {None: "Running", 0: "Succeeded"}.get(code, "Failed")
        reason = f"exit code {code}" if code else ""
        return {
            "conditions": [
                {"type": "Created", "status": "True"},
                {"type": condition, "status": "True", "reason": reason},
            ]
        }


class KubernetesStandIn:
    """``with KubernetesStandIn(cluster, rewrites, work_dir) as api:`` (``KUBECONFIG=api.kubeconfig``)."""

    def __init__(self, cluster: Cluster, rewrites: Callable[[], Rewrites], work_dir: Path) -> None:
        self.cluster, self.rewrites, self.work_dir = cluster, rewrites, work_dir
        self.jobs: dict[tuple[str, str], Job] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.kubeconfig = str(work_dir / "kubeconfig")
        server = f"http://127.0.0.1:{self.server.server_port}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": server}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }
        Path(self.kubeconfig).write_text(json.dumps(config))

    def __enter__(self) -> KubernetesStandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        for job in self.jobs.values():
            if job.process is not None and job.process.poll() is None:
                job.process.kill()
                job.process.wait()

    def _run(self, body: dict[str, Any]) -> subprocess.Popen[bytes]:
        """The operator's part: start the Master's container with one process per node."""
        pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the operator wires up only this container
        command = [re.sub(r"^--nproc-per-node=\d+$", "--nproc-per-node=1", a) for a in container["command"]]
        env = self.rewrites().apply(container_env(container, self.cluster))
        log = self.work_dir / f"{body['metadata']['name']}.log"
        return subprocess.Popen(
            local_command(command + container.get("args", [])),
            env={**base_env(), **env, **self._rendezvous()},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
        )

    @staticmethod
    def _rendezvous() -> dict[str, str]:
        """The torchrun env the Training Operator sets on a one-node job (``PET_*``), on a free local port."""
        port = str(free_port())
        return {
            "PET_NNODES": "1",
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": port,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> re.Match[str] | None:
                match = _PATH.match(self.path)
                if match is None:
                    self._reply(
                        404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": self.path}
                    )
                return match

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if (m := self._route()) is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = (m["ns"], body["metadata"]["name"])
                with api._lock:
                    if key in api.jobs:
                        self._reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                        return
                    api.created.append(body)
                    api.jobs[key] = Job(body, api._run(body))
                self._reply(201, body)

            def do_GET(self) -> None:  # noqa: N802
                if (m := self._route()) is None:
                    return
                if m["name"]:
                    job = api.jobs.get((m["ns"], m["name"]))
                    if job is None:
                        self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    else:
                        self._reply(200, {**job.body, "status": job.status()})
                    return
                selector = dict(
                    p.split("=", 1) for p in _query(m["q"]).get("labelSelector", "").split(",") if p
                )
                items = [
                    {**j.body, "status": j.status()}
                    for (ns, _), j in api.jobs.items()
                    if ns == m["ns"] and selector.items() <= j.body["metadata"].get("labels", {}).items()
                ]
                self._reply(200, {"kind": "PyTorchJobList", "items": items})

            def do_DELETE(self) -> None:  # noqa: N802
                if (m := self._route()) is None:
                    return
                job = api.jobs.pop((m["ns"], m["name"]), None)
                if job is None:
                    self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                if job.process is not None and job.process.poll() is None:
                    job.process.kill()
                api.deleted.append(m["name"])
                self._reply(200, {"kind": "Status", "status": "Success"})

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _query(query: str | None) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query or ""))

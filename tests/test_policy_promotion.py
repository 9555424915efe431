"""Promotion and hot reload: releases in the store (immutable per iteration, a mutable current pointer), the
admin load route of a running server, and a server that follows ``policy/current.json`` in real S3."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import SecretStr

from cutalign.config import PolicySettings
from cutalign.policy.admin import resolve_admin_token
from cutalign.policy.client import PolicyClient
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.launcher import PolicyServerProcess, free_port, start_policy_server
from cutalign.policy.loading import load_policy
from cutalign.policy.promotion import build_release, current_release, promote, rollback, validate_release
from cutalign.policy.version import dir_sha256
from cutalign.store import ArtifactStore, ManifestExists
from cutalign.store.layout import CURRENT_POLICY_KEY, release_key
from cutalign.v1 import training_pb2
from policy_support import admin_load, http_json, tiny_policy

torch.set_num_threads(1)

PROMPT = "Q: name a colour\nA: "


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("promotion")
    return tiny_policy(root / "policy-a", seed=0), tiny_policy(root / "policy-b", seed=1)


def served_sha(server: PolicyServerProcess) -> str:
    status, body = http_json("GET", f"{server.url}/v1/policy/version")
    assert status == 200
    return str(body["policy"]["checkpoint_sha256"])


def test_promote_records_each_iteration_once_and_moves_current(
    store: ArtifactStore, checkpoints: tuple
) -> None:
    a, b = checkpoints
    assert current_release(store) is None
    first = build_release(
        a, uri="s3://x/models/a", iteration=0, model_id="tiny", eval_metrics={"eval/accuracy": 0.5}
    )
    promote(store, first)
    second = build_release(
        b,
        uri="s3://x/iterations/0001/model",
        iteration=1,
        model_id="tiny",
        manifest_key="iterations/0001/manifest.json",
    )
    promote(store, second)

    current = current_release(store)
    assert current is not None and current.version == second.version and current.promoted_at_ms > 0
    assert current.manifest_key == "iterations/0001/manifest.json"
    recorded = store.get_manifest(release_key(0), training_pb2.PolicyRelease)
    assert recorded.version.checkpoint_sha256 == dir_sha256(a)
    assert dict(recorded.eval_metrics) == {"eval/accuracy": 0.5}
    with pytest.raises(ManifestExists):
        promote(store, build_release(a, uri="s3://x/other", iteration=1, model_id="tiny"))
    assert current_release(store).version == second.version, "a refused promotion leaves current alone"

    rolled = rollback(store, 0)
    assert rolled.version == first.version
    assert store.get_manifest(CURRENT_POLICY_KEY, training_pb2.PolicyRelease).version == first.version


def test_a_release_must_name_a_sha256_and_a_uri() -> None:
    bad = training_pb2.PolicyRelease()
    bad.version.checkpoint_sha256 = "abc"
    with pytest.raises(ValueError, match="checkpoint_sha256 must be a lowercase hex sha256.*uri must name"):
        validate_release(bad)


def test_admin_route_hot_reloads_a_new_policy_and_refuses_bad_ones(
    checkpoints: tuple, tmp_path: Path
) -> None:
    a, b = checkpoints
    root = b.parent
    with start_policy_server(a, torch_threads=1, admin_token="s3cret", load_roots=[str(root)]) as server:
        body = {"uri": str(b), "iteration": 1, "model_id": "tiny-b", "expected_sha256": dir_sha256(b)}
        # without the token, or with another one, nothing is read: the same 401 either way
        assert http_json("POST", f"{server.url}/v1/policy/load", body)[0] == 401
        assert admin_load(server, body, token="nope")[0] == 401
        assert admin_load(server, {"uri": ""})[0] == 400, "a malformed body is the caller's mistake"

        status, answer = admin_load(server, {**body, "expected_sha256": "0" * 64})
        assert status == 409 and "re-export and re-promote" in answer["detail"]
        # a missing directory and a directory that holds no model get the same answer: no existence oracle
        (root / "empty").mkdir()
        gone, empty = (admin_load(server, {"uri": str(root / name)}) for name in ("gone", "empty"))
        assert gone[0] == empty[0] == 400
        assert gone[1]["detail"].replace("gone", "X") == empty[1]["detail"].replace("empty", "X")
        assert served_sha(server) == dir_sha256(a), "failed loads leave the served policy in place"

        status, answer = admin_load(server, body)
        assert status == 200, answer
        assert answer["previous"]["checkpoint_sha256"] == dir_sha256(a)
        assert answer["policy"] == {
            "model_id": "tiny-b",
            "checkpoint_sha256": dir_sha256(b),
            "iteration": 1,
            "uri": str(b),
        }
        completion = PolicyClient(PolicySettings(url=server.url, max_new_tokens=12)).complete(PROMPT)
        new = load_policy(str(b))
        assert (
            completion.text
            == generate(new.model, new.tokenizer, [PROMPT], SamplingParams(max_new_tokens=12))[0].text
        )
        assert completion.policy_sha256 == dir_sha256(b)


def test_admin_route_loads_only_under_its_roots(checkpoints: tuple, tmp_path: Path) -> None:
    a, b = checkpoints
    outside = tiny_policy(tmp_path / "outside", seed=2)
    inside = tmp_path / "releases"
    inside.mkdir()
    (inside / "escape").symlink_to(outside, target_is_directory=True)
    with start_policy_server(a, torch_threads=1, load_roots=[str(inside)]) as server:
        for uri in (str(outside), f"{inside}/../outside", str(inside / "escape"), f"file://{outside}"):
            status, answer = admin_load(server, {"uri": uri})
            assert status == 403 and "outside the roots" in answer["detail"], (uri, answer)
        status, answer = admin_load(server, {"uri": str(inside / "x"), "base_uri": str(outside)})
        assert status == 403, "an adapter's base must lie under a root too"
        assert served_sha(server) == dir_sha256(a)


def test_server_refuses_loads_to_anyone_when_no_token_is_configured(
    checkpoints: tuple, tmp_path: Path
) -> None:
    """Started by hand without a token, the server generates one it never shows: the admin route is closed."""
    a, b = checkpoints
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN"}
    argv = [sys.executable, "-m", "cutalign.policy.server", "--http_port", str(port), "--policy_uri", str(a)]
    argv += ["--torch_threads", "1", "--load_roots", str(b.parent)]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        with PolicyServerProcess(f"http://127.0.0.1:{port}", "policy", process, log, "") as server:
            server.wait_ready(120)
            for token in ("", "None", "null"):
                assert admin_load(server, {"uri": str(b)}, token=token)[0] == 401
            assert served_sha(server) == dir_sha256(a)
    assert "no admin token configured, generated one" in log.read_text()


def test_a_generated_admin_token_is_random_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        first = resolve_admin_token(None, component="test")
        second = resolve_admin_token(SecretStr(""), component="test")
    assert first != second and len(first) >= 40
    assert first not in caplog.text and second not in caplog.text and "generated" in caplog.text
    assert resolve_admin_token(SecretStr("chosen"), component="test") == "chosen"


def test_server_follows_current_json_in_s3_and_refuses_a_release_that_does_not_match(
    checkpoints: tuple, store: ArtifactStore, env_for: dict[str, str]
) -> None:
    a, b = checkpoints
    store.upload_dir("models/a/", a)
    store.upload_dir("iterations/0001/model/", b)
    with start_policy_server(
        store.uri("models/a"), env=env_for, torch_threads=1, watch_current=True, watch_interval_s=0.3
    ) as server:
        assert served_sha(server) == dir_sha256(a)
        promote(store, build_release(b, uri=store.uri("iterations/0001/model"), iteration=1, model_id="tiny"))
        deadline = time.monotonic() + 60
        while served_sha(server) != dir_sha256(b) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served_sha(server) == dir_sha256(b), f"not reloaded; log:\n{server.log_tail()}"
        status, info = http_json("GET", f"{server.url}/info")
        assert info["policy"]["iteration"] == 1 and info["model_sha"] == dir_sha256(b)

        # a release whose recorded sha256 does not match the files at its URI is never served
        forged = build_release(a, uri=store.uri("iterations/0001/model"), iteration=2, model_id="tiny")
        promote(store, forged)
        deadline = time.monotonic() + 60
        failed = 0.0
        while failed < 1 and time.monotonic() < deadline:
            metrics = http_json("GET", f"{server.url}/metrics")[1]
            match = re.search(r'^cutalign_policy_reloads_total\{outcome="failed"\} ([\d.]+)$', metrics, re.M)
            failed = float(match.group(1)) if match else 0.0
            time.sleep(0.2)
        assert failed >= 1
        assert served_sha(server) == dir_sha256(b)

"""The identity of a policy: a deterministic sha256 over the files of its checkpoint.

Every Sample records which policy produced it, and the generator refuses to generate from anything but the
expected policy; both need a digest that any machine computes identically from the same checkpoint, wherever
it was copied from (local disk, an S3 download, a volume). So the digest covers file *contents* and relative
paths only — never mtimes, permissions or the order a filesystem lists entries in.

Dotfiles and dot-directories (``.cache/`` left by ``huggingface_hub`` downloads, ``.ipynb_checkpoints``) are
not part of a checkpoint and are skipped. A LoRA policy is the pair (base, adapter): its digest combines both,
so the same adapter over a different base is a different policy.

A release is *served under* its release id (``release_id``): vLLM's model or adapter id, the directory the
model sync starts TGI on. The id carries the full sha256, so what vLLM's ``/v1/models`` or TGI's ``/info``
reports names the exact policy (``parse_release_id``) — the sync serves files only once they hash to it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cutalign.store import sha256_file
from cutalign.v1 import common_pb2


def checkpoint_files(directory: Path) -> list[Path]:
    """The files that make up a checkpoint, sorted by their relative POSIX path."""
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    files = [
        path
        for path in directory.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    ]
    if not files:
        raise FileNotFoundError(f"checkpoint directory {directory} holds no files")
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def dir_sha256(directory: Path | str) -> str:
    """sha256 over ``relative/path NUL sha256(content) LF`` for every checkpoint file, in path order."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in checkpoint_files(directory):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(path).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def policy_sha256(model_dir: Path | str, base_dir: Path | str | None = None) -> str:
    """The policy digest: of the checkpoint alone, or of (base, adapter) when ``model_dir`` is an adapter."""
    if base_dir is None:
        return dir_sha256(model_dir)
    combined = f"base:{dir_sha256(base_dir)}\nadapter:{dir_sha256(model_dir)}\n"
    return hashlib.sha256(combined.encode()).hexdigest()


def policy_version(
    model_dir: Path | str,
    *,
    model_id: str,
    iteration: int,
    uri: str,
    base_dir: Path | str | None = None,
) -> common_pb2.PolicyVersion:
    """The ``PolicyVersion`` of a local checkpoint that lives (or will live) at ``uri``."""
    return common_pb2.PolicyVersion(
        model_id=model_id,
        checkpoint_sha256=policy_sha256(model_dir, base_dir),
        iteration=iteration,
        uri=uri,
    )


def describe(version: common_pb2.PolicyVersion) -> str:
    """A one-line, human-readable name of a version for logs and error messages."""
    sha = version.checkpoint_sha256[:12] or "<no sha256>"
    return (
        f"{version.model_id or '<unnamed>'}@{sha} (iteration {version.iteration}, {version.uri or 'no uri'})"
    )


_RELEASE_ID = re.compile(r"^(?P<model_id>[A-Za-z0-9._-]+)-i(?P<iteration>\d{4,})-(?P<sha>[0-9a-f]{64})$")


def release_id(version: common_pb2.PolicyVersion) -> str:
    """``<model_id>-i<iteration>-<sha256>``: a model name and a directory name, on every server."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", version.model_id or "policy")[:64]
    return f"{model}-i{version.iteration:04d}-{version.checkpoint_sha256}"


def parse_release_id(name: str) -> common_pb2.PolicyVersion | None:
    """The version a served name (a release id, or a path ending in one) stands for; None if it is not one."""
    match = _RELEASE_ID.match(name.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        return None
    return common_pb2.PolicyVersion(
        model_id=match["model_id"], iteration=int(match["iteration"]), checkpoint_sha256=match["sha"]
    )

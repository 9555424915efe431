"""Hand the aligned model back: the run's current release as a Hugging Face directory on the user's disk.

Whatever the release is in the store — a merged model or a LoRA adapter on its base — the export is one
merged directory that ``AutoModelForCausalLM.from_pretrained`` loads, in the release's own dtype, with its
tokenizer and a ``cutalign-release.json`` naming where it came from.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from cutalign.errors import UserError
from cutalign.policy.loading import load_policy
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.v1 import training_pb2

RELEASE_FILE = "cutalign-release.json"


def export_current(store: ArtifactStore, out_dir: Path) -> training_pb2.PolicyRelease:
    """Write the current release of ``store`` to ``out_dir`` (a new or empty directory); returns it."""
    release = current_release(store)
    if release is None:
        raise UserError(f"{store.uri('')} has no release to export", "run at least one iteration")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty", "export into a new directory")
    policy = load_policy(
        release.version.uri,
        base_uri=release.base_model_uri or None,
        expected_sha256=release.version.checkpoint_sha256,
        s3=store.settings,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(out_dir)
    policy.tokenizer.save_pretrained(out_dir)
    (out_dir / RELEASE_FILE).write_text(json_format.MessageToJson(release, preserving_proto_field_name=True))
    return release

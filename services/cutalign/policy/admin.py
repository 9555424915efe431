"""The embedded policy server's admin surface: its token, the roots it may load from, and its two routes.

``POST /v1/policy/load`` makes the server serve whatever checkpoint the request names, so it is guarded:

* **a bearer token, always**: ``CUTALIGN_POLICY_SERVER_ADMIN_TOKEN`` (from a Secret on a cluster); when
  none is configured the server generates one at start-up and never prints it, so only a caller that chose
  the token (the launcher, a Secret) can load — ``watch_current`` still follows releases without one;
* **configured roots only**: the URI (and a LoRA adapter's base URI) must lie under one of ``load_roots``
  (default: the bucket's ``iterations/`` prefix, where trained candidates — the releases — are exported),
  checked before anything is read: a local path is resolved first, so ``..`` and symlinks cannot leave a root;
* **no existence oracle**: every checkpoint that cannot be served (missing, empty, not a model, no base)
  gets the same answer, the reason goes to the server's log;
* **4xx for a caller's mistake**: 401 no or wrong token, 400 a malformed body or nothing loadable there,
  403 outside the roots, 409 files that do not hash to ``expected_sha256``; 503 only when the store itself
  cannot be reached.

``GET /v1/policy/version`` (what is served) is public, like ``/info``.

``resolve_admin_token`` is the "configured, else generated" rule of every cutalign control endpoint.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from fastapi import FastAPI, HTTPException, Request
from minio.error import S3Error
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cutalign.config import PolicyServerSettings, S3Settings
from cutalign.policy.loading import PolicyChecksumMismatch, PolicyLoadError
from cutalign.policy.model import PolicyModel, json_body, parse_body, version_json
from cutalign.store import ChecksumMismatch, ObjectMissing
from cutalign.store.layout import ITERATIONS_PREFIX

log = logging.getLogger(__name__)

LOAD_ROUTE = "/v1/policy/load"


def resolve_admin_token(configured: SecretStr | None, *, component: str) -> str:
    """The configured token, else a fresh random one (logged as generated, never shown)."""
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    log.warning(
        "%s: no admin token configured, generated one for this process (not shown); set its "
        "admin_token setting from a Secret to call the admin endpoints",
        component,
    )
    return secrets.token_urlsafe(32)


def bearer_matches(request: Request, token: str) -> bool:
    sent = request.headers.get("authorization", "")
    return secrets.compare_digest(sent.encode(), f"Bearer {token}".encode())


class LoadForbidden(PolicyLoadError):
    """The URI lies outside every root this server may load from."""


@dataclass(frozen=True)
class LoadRoots:
    """URI prefixes a load may name: ``s3://bucket/prefix/`` or local directories."""

    roots: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: PolicyServerSettings, s3: S3Settings | None) -> LoadRoots:
        if settings.load_roots:
            return cls(tuple(settings.load_roots))
        return cls((f"s3://{s3.bucket}/{ITERATIONS_PREFIX}",) if s3 is not None else ())

    def allows(self, uri: str) -> bool:
        return any(_under(uri, root) for root in self.roots)

    def check(self, uri: str) -> None:
        if not self.allows(uri):
            roots = ", ".join(self.roots) or "none configured"
            raise LoadForbidden(
                f"{uri} is outside the roots this server loads from ({roots}; "
                "CUTALIGN_POLICY_SERVER_LOAD_ROOTS)"
            )


def _under(uri: str, root: str) -> bool:
    if uri.startswith("s3://") or root.startswith("s3://"):
        if not (uri.startswith("s3://") and root.startswith("s3://")):
            return False
        segments = uri.removeprefix("s3://").rstrip("/").split("/")
        if any(part in ("", ".", "..") for part in segments):
            return False  # S3 keys are not normalized: `a/../b` is its own key, and stores differ on it
        return (uri.rstrip("/") + "/").startswith(root.rstrip("/") + "/")
    path = Path(uri.removeprefix("file://")).resolve()
    return path.is_relative_to(Path(root.removeprefix("file://")).resolve())


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1)
    base_uri: str | None = None
    model_id: str | None = None
    iteration: int = Field(default=0, ge=0)
    expected_sha256: str | None = None


_CLIENT_S3_ERRORS = ("NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidBucketName", "InvalidObjectName")


def register_admin_routes(app: FastAPI, model: PolicyModel, *, token: str, roots: LoadRoots) -> None:
    """Add ``/v1/policy/version`` and the guarded ``/v1/policy/load`` to KServe's app."""

    @app.get("/v1/policy/version")
    async def policy_version() -> dict[str, Any]:
        return {"policy": version_json(model.version)}

    @app.post(LOAD_ROUTE)
    async def policy_load(request: Request) -> dict[str, Any]:
        if not bearer_matches(request, token):
            raise HTTPException(401, f"POST {LOAD_ROUTE} needs 'Authorization: Bearer <admin token>'")
        r = parse_body(LoadRequest, await json_body(request))
        try:
            for uri in filter(None, (r.uri, r.base_uri)):
                roots.check(uri)
            previous, current = await model.reload(
                r.uri,
                base_uri=r.base_uri,
                model_id=r.model_id,
                iteration=r.iteration,
                expected_sha256=r.expected_sha256,
            )
        except LoadForbidden as e:
            raise HTTPException(403, str(e)) from e
        except (ChecksumMismatch, PolicyChecksumMismatch) as e:
            raise HTTPException(409, str(e)) from e
        except S3Error as e:
            if e.code not in _CLIENT_S3_ERRORS:
                raise HTTPException(503, f"the artifact store failed ({e.code}); retry later") from e
            raise _not_loadable(r.uri) from e
        except urllib3.exceptions.HTTPError as e:
            raise HTTPException(503, "the artifact store cannot be reached; retry later") from e
        except (PolicyLoadError, ObjectMissing, FileNotFoundError) as e:
            raise _not_loadable(r.uri) from e
        return {"previous": version_json(previous), "policy": version_json(current)}


def _not_loadable(uri: str) -> HTTPException:
    """One answer whatever the reason (missing, empty, not a model, no base): no existence oracle."""
    return HTTPException(
        400, f"no servable policy checkpoint at {uri} (the reason is in the policy server's log)"
    )

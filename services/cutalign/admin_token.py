"""The bearer token of a service's control endpoints (the builder's ``POST /seal``, the policy server's load).

A control endpoint always needs a token. When the deployment gives none (a Secret on a cluster), one is
generated at start-up and written to a file only the service's user can read; the log says where, never what
("admin token generated; see <file>"), so a local operator can use it and nothing else learns it.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from pydantic import SecretStr

log = logging.getLogger(__name__)


def admin_token(configured: SecretStr | None, *, service: str, directory: Path | None = None) -> str:
    """``configured``'s value, or a new random token written to ``<directory>/cutalign-<service>-<pid>.token``
    (mode 0600; ``directory`` defaults to the temporary directory)."""
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    token = secrets.token_urlsafe(32)
    path = (directory or Path(tempfile.gettempdir())) / f"cutalign-{service}-{os.getpid()}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("admin token generated; see %s", path, extra={"service": service, "token_file": str(path)})
    return token


def bearer_matches(header: str | None, token: str) -> bool | None:
    """None without a bearer token (answer 401), else whether it is ``token`` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return None
    return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())

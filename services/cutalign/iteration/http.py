"""The HTTP call a pipeline step makes to a running service (the builder's seal).

Standard library only: the pipeline's steps run in the project image, and these calls need nothing more.
An error status becomes ``ServiceCallFailed`` carrying the service's own explanation (its response body).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ServiceCallFailed(RuntimeError):
    """A service answered with an error status, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def post_json(
    url: str, body: dict[str, Any] | None = None, *, token: str | None = None, timeout_s: float = 60.0
) -> dict[str, Any]:
    """POST ``body`` as JSON and return the JSON answer (``{}`` for an empty one)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace")[:2000]
        raise ServiceCallFailed(f"POST {url} answered {e.code}: {detail}", e.code) from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise ServiceCallFailed(f"POST {url} failed: {e}; is the service running and the URL right?") from e
    if not raw.strip():
        return {}
    answer = json.loads(raw)
    if not isinstance(answer, dict):
        raise ServiceCallFailed(f"POST {url} answered {type(answer).__name__}, expected a JSON object")
    return answer

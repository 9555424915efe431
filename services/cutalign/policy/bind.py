"""``kserve.ModelServer`` listening on a chosen address instead of always 0.0.0.0.

KServe 0.21's ``ModelServer.start()`` builds its REST server with ``uvicorn.Config(host="0.0.0.0", ...)`` and
offers no bind option. uvicorn reads ``config.host`` only when it binds, inside the event loop that
``start()`` runs after calling ``setup_event_loop()``; so that hook is where the host is set: after KServe
built the config, before anything listens. A test asserts the listening address (``test_policy_server``).
"""

from __future__ import annotations

from typing import Any

import kserve


class BoundModelServer(kserve.ModelServer):  # type: ignore[misc]
    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self) -> None:
        if self._rest_server is not None:
            self._rest_server.config.host = self.host
        super().setup_event_loop()

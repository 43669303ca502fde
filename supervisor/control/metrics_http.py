"""``GET /metrics``: the Prometheus text of the daemon, on the control socket and optionally TCP.

On the control socket the route is one of the control server's (read access to every tenant
needed). ``MetricsListener`` serves it alone on a loopback TCP address for a local scraper:
TCP carries no caller identity, so any local user can read it, and nothing else is served there.
"""

from __future__ import annotations

import json
import logging

from supervisor.config import parse_loopback_address
from supervisor.control.http import HTTPServer, Request, Response
from supervisor.metrics import CONTENT_TYPE, exposition

log = logging.getLogger(__name__)


def metrics_response() -> Response:
    """Every metric of the daemon in the Prometheus text format, collected now."""
    return Response(200, exposition(), content_type=CONTENT_TYPE)


async def _serve_metrics(request: Request) -> Response:
    if request.path != "/metrics":
        return _error(404, f"no route {request.raw_path[:80]}; only GET /metrics is served here")
    if request.method != "GET":
        return _error(405, f"method {request.method} not allowed on /metrics; use GET")
    if request.body_error is not None:
        return _error(*request.body_error)
    return metrics_response()


def _error(status: int, message: str) -> Response:
    body = json.dumps({"error": message}).encode() + b"\n"
    return Response(status, body, headers={"Allow": "GET"} if status == 405 else {})


class MetricsListener:
    """``GET /metrics`` on ``address`` (``HOST:PORT``, loopback only, from config)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._http: HTTPServer | None = None

    async def start(self) -> bool:
        """Listen; on failure log a WARNING and return False (the daemon runs on without it)."""
        host, port = parse_loopback_address(self.address)
        http = HTTPServer(
            _serve_metrics, request_timeout_s=10.0, shutdown_timeout_s=5.0, max_body_bytes=0
        )
        try:
            await http.serve_tcp(host, port)
        except OSError as exc:
            log.warning(
                "control.metrics_address %s: cannot listen (%s); /metrics stays on the control "
                "socket only; free the address and restart the daemon",
                self.address,
                exc.strerror or exc,
            )
            return False
        self._http = http
        log.info("control: serving /metrics on http://%s/metrics", self.address)
        return True

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

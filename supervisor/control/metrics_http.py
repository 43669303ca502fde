"""``GET /metrics``: the Prometheus text of the daemon, on the control socket and optionally TCP.

On the control socket the route is one of the control server's (read access to every tenant
needed). ``MetricsListener`` serves it alone on a loopback TCP address for a local scraper:
TCP carries no caller identity, so any local user can read it, and nothing else is served there.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from supervisor.config import parse_loopback_address
from supervisor.metrics import REGISTRY

log = logging.getLogger(__name__)


def metrics_response() -> web.Response:
    """Every metric of the daemon in the Prometheus text format, collected now."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _serve_metrics(_request: web.Request) -> web.Response:
    return metrics_response()


class MetricsListener:
    """``GET /metrics`` on ``address`` (``HOST:PORT``, loopback only, from config)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._runner: web.AppRunner | None = None

    async def start(self) -> bool:
        """Listen; on failure log a WARNING and return False (the daemon runs on without it)."""
        host, port = parse_loopback_address(self.address)
        app = web.Application()
        app.router.add_get("/metrics", _serve_metrics, allow_head=False)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            log.warning(
                "control.metrics_address %s: cannot listen (%s); /metrics stays on the control "
                "socket only; free the address and restart the daemon",
                self.address,
                exc.strerror or exc,
            )
            return False
        self._runner = runner
        log.info("control: serving /metrics on http://%s/metrics", self.address)
        return True

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

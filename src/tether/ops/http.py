"""The HTTP port of a tether process: health probes and Prometheus metrics, on aiohttp.

Routes:

- `GET /healthz/live`: 200 while the event loop runs. A blocked loop sends no response, and the
  probe's own timeout turns that into a failure.
- `GET /healthz/ready`: 200 while the process can serve (started, not draining, bus
  connected), else 503 with the reason as JSON.
- `GET /metrics`: Prometheus text format, from `tether.ops.metrics`.
- `/api/v1/...`: the server HTTP API for backends, behind API keys (`tether.ops.api`).
- `/admin/...`: the admin dashboard, behind admin keys (`tether.ops.dashboard`).
- `/demo/...`: the demo messenger, only when the server runs with `demo` on (`tether.demo`).

The HTTP port runs on the process's one event loop, next to the TCP and WebSocket servers, and
shares nothing with them: a client connection costs the HTTP port nothing, and a request here
only reads counters the gateway already keeps. Routes must be added before `start`, because
aiohttp freezes the router then. The server API's middleware acts only on paths under
`/api/v1`, and the dashboard's only on paths under `/admin`, so the probes and metrics keep
working without a key.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from tether.ops.api import BackendApi
from tether.ops.api_keys import ApiKeys
from tether.ops.dashboard import AdminDashboard
from tether.ops.metrics import MetricsEndpoint

if TYPE_CHECKING:
    from tether.server import TetherServer

__all__ = ["HttpPort", "create_app"]

logger = logging.getLogger("tether.http")

# Seconds `close` waits for requests in progress; probes and scrapes take milliseconds.
_SHUTDOWN_TIMEOUT = 1.0
# Bytes of request body accepted. The largest body is a server API publish: a message of up
# to max_body_bytes (32 KiB by default) as base64, or as JSON text, whose escapes such as
# \u0001 take up to 6 bytes per byte of the message.
MAX_REQUEST_BYTES = 256 * 1024


def create_app(
    server: TetherServer,
    api: BackendApi | None = None,
    dashboard: AdminDashboard | None = None,
) -> web.Application:
    """Return the application with the health and metrics routes of server, api's and
    dashboard's."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    metrics = MetricsEndpoint(server, api)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(request: web.Request) -> web.Response:
        reason = server.not_ready_reason()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        # aiohttp refuses a content_type argument with parameters, so set the header.
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/healthz/live", live)
    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/metrics", scrape)
    if api is not None:
        api.install(app)
    if dashboard is not None:
        dashboard.install(app)
    if server.config.demo:
        from tether.demo import install_demo  # only a demo server loads it

        install_demo(app, server)
    return app


class HttpPort:
    """The HTTP listener of one tether process."""

    def __init__(
        self, server: TetherServer, host: str, port: int, api_keys: tuple[str, ...] = ()
    ) -> None:
        """Prepare the listener; nothing is bound before `start`. No api_keys: API off."""
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        """Bound port once started (useful when 0 was requested)."""
        self.api = BackendApi(server, ApiKeys(api_keys))
        self.dashboard = AdminDashboard(server, ApiKeys(server.config.admin_keys))
        self.app = create_app(server, self.api, self.dashboard)
        # No access log: Kubernetes probes every few seconds would fill it. No decompression
        # of request bodies: aiohttp would inflate a gzip or deflate body on the event loop as
        # it arrives, whatever the route, the key and client_max_size. A body of a few
        # megabytes that inflates to gigabytes would then stall every client connection for
        # seconds. Routes that read a body reject a Content-Encoding (`api_input`).
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            auto_decompress=False,
        )

    async def start(self) -> None:
        """Bind host:port and serve; raises OSError when the port is taken."""
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        site = web.SockSite(self._runner, sock)
        await site.start()
        await self.api.start()
        await self.dashboard.start()
        self.port = sock.getsockname()[1]
        logger.info("http port serving health and metrics on %s:%s", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and end the open HTTP connections."""
        await self._runner.cleanup()
        await self.api.close()
        await self.dashboard.close()

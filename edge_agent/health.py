"""Liveness and readiness over HTTP for the kubelet's probes (default port 9400).

  GET /healthz  200 while the agent's event loop answers (liveness)
  GET /readyz   200 once the agent has something to serve: the hub link
                resynced at least once, or local state held from before a
                restart (edge autonomy); 503 with the reason otherwise

A few lines of asyncio: no framework, one short request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_PORT = 9400
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, port: int, ready: Callable[[], str | None], *, host: str = "0.0.0.0") -> None:
        """`ready()` returns None when ready, else why not (the 503 body)."""
        self.host = host
        self.requested_port = port
        self.ready = ready
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoints on %s:%d (/healthz, /readyz)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    def answer(self, method: str, path: str) -> tuple[int, str]:
        if method not in ("GET", "HEAD"):
            return 405, "only GET\n"
        path = path.split("?", 1)[0]
        if path in ("/healthz", "/livez"):
            return 200, "ok\n"
        if path == "/readyz":
            try:
                why = self.ready()
            except Exception as exc:  # noqa: BLE001 - a probe never crashes the agent
                why = f"readiness check failed: {exc!r}"
            return (200, "ok\n") if why is None else (503, f"not ready: {why}\n")
        return 404, "not found: try /healthz or /readyz\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                status, body = 400, "bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, body = self.answer(method, parts[1])
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(data)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

"""Graceful hand-over for a server that shares its listening socket with its successor.

On SIGUSR1 the server stops accepting (the successor, on the same socket, takes every new
connection) but keeps serving the connections it has, answering with ``Connection:
close`` so clients reconnect to the successor. The deployer sends SIGTERM a little later.
Stopping with SIGTERM alone would close connections that were accepted but whose request
had not been read yet, and their clients would see the connection drop."""

from __future__ import annotations

import asyncio
import signal

import uvicorn

from mnist_serving.body_limit import Receive, Scope, Send


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._server: uvicorn.Server | None = None

    def install(self, server: uvicorn.Server) -> None:
        """Call before the server runs, from the main thread."""
        self._server = server
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        asyncio.get_running_loop().call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.draining = True
        for listener in getattr(self._server, "servers", []):
            listener.close()

    def middleware(self, app):  # noqa: ANN001, ANN201 - an ASGI app in, one out
        """ASGI middleware: while draining, every response closes its connection."""

        async def close_when_draining(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not self.draining:
                return await app(scope, receive, send)

            async def send_closing(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                await send(message)

            return await app(scope, receive, send_closing)

        return close_when_draining

"""Listening sockets that outlive one server process, for redeploys that drop no request.

A server listens on a Unix *hand-off socket* (owner-only) and answers one request per
connection, a four-byte word:
- ``TAKE``: it sends its public listening socket (SCM_RIGHTS), for a successor to accept
  from the same kernel queue; nothing is ever queued on a socket that closes.
- ``SERV`` with a descriptor: it starts accepting on that listening socket (the public one,
  given to a candidate that passed its tests) and answers ``OK``.
A candidate starts with its private probe socket only and has no public socket to hand on
until it is given one, so it cannot take a public request before that."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

TAKE, SERVE, OK = b"TAKE", b"SERV", b"OK"
log = logging.getLogger("mnist_serving")


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; ``port=0`` picks a free port. Raises OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class HandoffSocket:
    """The server's end of the hand-off socket at ``path``. ``public`` is the listening socket
    handed to successors (None until a deployer gives one); ``serve_on(sock)`` starts accepting
    on a given one and returns once it does."""

    def __init__(self, path: Path, public: socket.socket | None, serve_on: Callable[[socket.socket], None]) -> None:
        self.path, self.public, self._serve_on = path, public, serve_on

    def start(self) -> None:
        """Answer requests in a daemon thread for the life of the process."""
        self.path.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(self.path))
        os.chmod(self.path, 0o600)
        unix.listen(4)
        threading.Thread(target=self._loop, args=(unix,), name="listener-handoff", daemon=True).start()

    def _loop(self, unix: socket.socket) -> None:
        while True:
            conn, _ = unix.accept()
            with conn, contextlib.suppress(OSError):
                try:
                    self._answer(conn)
                except Exception as exc:  # noqa: BLE001 - one bad request must not end the hand-off thread
                    log.error(f"hand-off request failed: {exc!r}")

    def _answer(self, conn: socket.socket) -> None:
        word, fds, _, _ = socket.recv_fds(conn, 4, 1)
        if word == TAKE and self.public is not None:
            socket.send_fds(conn, [b"listener"], [self.public.fileno()])
        elif word == SERVE and fds:
            listener = socket.socket(fileno=fds[0])
            self._serve_on(listener)
            self.public = listener
            conn.sendall(OK)
        else:  # a candidate asked for a socket it doesn't have yet, or a bad word
            for fd in fds:
                os.close(fd)


def take_listener(path: Path, timeout: float = 5.0) -> socket.socket:
    """Receive a running server's public listening socket from its hand-off path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(timeout)
        unix.connect(str(path))
        unix.sendall(TAKE)
        _, fds, _, _ = socket.recv_fds(unix, 16, 1)
    if not fds:
        raise OSError(f"{path} sent no listening socket")
    sock = socket.socket(fileno=fds[0])
    sock.set_inheritable(True)
    return sock


def give_listener(path: Path, listener: socket.socket, timeout: float = 10.0) -> None:
    """Make the server at hand-off ``path`` accept on ``listener``; returns once it does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(timeout)
        unix.connect(str(path))
        socket.send_fds(unix, [SERVE], [listener.fileno()])
        if unix.recv(2) != OK:
            raise OSError(f"the server at {path} did not start accepting on the socket it was given")

"""Listening sockets that outlive one server process, for redeploys that drop no request.

A server can hand its listening socket to the next server over a Unix socket
(SCM_RIGHTS). Both then accept from the same kernel queue, so stopping the old one
loses no connection: nothing is ever queued on a socket that closes."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path


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


def offer_listener(listener: socket.socket, path: Path) -> None:
    """Serve ``listener``'s descriptor to whoever connects to the Unix socket ``path``
    (owner-only permissions). Runs in a daemon thread for the life of the process."""
    path.unlink(missing_ok=True)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    os.chmod(path, 0o600)
    unix.listen(4)

    def loop() -> None:
        while True:
            conn, _ = unix.accept()
            with conn, contextlib.suppress(OSError):
                socket.send_fds(conn, [b"listener"], [listener.fileno()])

    threading.Thread(target=loop, name="listener-handoff", daemon=True).start()


def take_listener(path: Path, timeout: float = 5.0) -> socket.socket:
    """Receive a running server's listening socket from its handoff path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(timeout)
        unix.connect(str(path))
        _, fds, _, _ = socket.recv_fds(unix, 16, 1)
    if not fds:
        raise OSError(f"{path} sent no listening socket")
    sock = socket.socket(fileno=fds[0])
    sock.set_inheritable(True)
    return sock

"""A server's hold on the public socket, kept consistent with the deployer's record even
when the deployer dies at any point of a deploy.

The record is the deployer's ``endpoint.json``: it names (``pid``) the one server that
serves the endpoint; a deploy writes it right after the tested candidate starts accepting
on the public socket, and that write is the commit.

- Lease (candidates): the deployer holds the write end of the candidate's stdin. When it
  reaches end-of-file (the deployer exited or was killed: the kernel closes the pipe) and
  the record does not name this server, the server stops: a candidate whose deployer died
  before committing never stays.
- Watch (every server given the record): once the record has named this server, a record
  naming another running server means it was replaced; it drains (as on SIGUSR1: the
  successor takes every new connection) and stops, even if the deployer died before
  stopping it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("mnist_serving")
WATCH_INTERVAL_S = 0.5
DRAIN_S = 2.0
STDIN = 0


def recorded_pid(record: Path) -> int | None:
    """The pid the record names, or None (no record, or unreadable)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(record.read_text())["pid"])
    return None


def process_exists(pid: int) -> bool:
    """True while a process with ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hand_over_and_stop() -> None:
    """Drain (SIGUSR1: stop accepting, close connections after their response), then stop
    (SIGTERM). Before the server runs, SIGUSR1's default action ends the process at once."""
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(DRAIN_S)
    os.kill(os.getpid(), signal.SIGTERM)


def hold_lease_on_stdin(record: Path) -> None:
    """Stop this process when stdin closes, unless the record names it by then."""

    def wait_for_eof() -> None:
        while os.read(STDIN, 4096):  # raw reads: a buffered reader's lock would stall interpreter exit
            pass
        if recorded_pid(record) != os.getpid():
            log.warning("the deployer went away before this version was recorded; stopping")
            _hand_over_and_stop()

    threading.Thread(target=wait_for_eof, name="deployer-lease", daemon=True).start()


def watch_record(record: Path) -> None:
    """Drain and stop once a record that named this process names another running one."""

    def watch() -> None:
        named = False
        while True:
            pid = recorded_pid(record)
            if pid == os.getpid():
                named = True
            elif named and pid is not None and process_exists(pid):
                log.info(f"the record names pid {pid} now; handing over and stopping")
                _hand_over_and_stop()
                return
            time.sleep(WATCH_INTERVAL_S)

    threading.Thread(target=watch, name="record-watch", daemon=True).start()

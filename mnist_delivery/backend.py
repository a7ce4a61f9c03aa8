"""The interface every deploy backend offers, and what it hands back.

A backend puts one registry version behind the endpoint in two moves: ``candidate`` starts
the version *beside* what serves, answering only at a private address, so it can be tested
before any public request reaches it; ``promote`` then moves the public traffic to it.
Leaving the ``candidate`` block without promoting discards the candidate. ``deploy`` is both
moves without tests in between (rollback, operators). ``current`` says what serves,
``serving`` lists every server process or pod of the endpoint, and ``stop`` takes it down.
``LocalEndpoint`` and ``KubernetesEndpoint`` implement it; callers depend on this Protocol.

Invariant: at any moment the public address is answered by the one recorded version (and,
for the length of a hand-over drain, by its predecessor finishing its requests). A candidate
is recorded, and serves publicly, only after ``promote``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class DeployError(RuntimeError):
    """The endpoint could not be (re)deployed; the message says why and what to do."""


@dataclass(frozen=True)
class Endpoint:
    """One serving endpoint: where it answers and which version it serves."""

    url: str
    host: str
    port: int
    pid: int  # 0 when the server is not a local process
    version: str
    model_dir: str
    handoff_socket: str
    log_file: str
    started_at: str


@dataclass
class Candidate:
    """A version started beside the endpoint, not yet serving public traffic.

    ``url`` is its private address, for the deployment tests; ``endpoint`` is what will be
    recorded once it is promoted. ``handle`` is the backend's own (a process, object names)."""

    version: str
    url: str
    endpoint: Endpoint
    handle: object = field(default=None, repr=False)
    promoted_at: str | None = None


@dataclass(frozen=True)
class ServerProcess:
    """One running server of the endpoint (a local process or a pod) and the version it serves."""

    name: str  # "pid 1234" or a pod name
    version: str
    role: str  # "serving" (the recorded one), "candidate", "draining" or "unrecorded"


class DeployBackend(Protocol):
    def candidate(self, version_dir: Path, version: str) -> AbstractContextManager[Candidate]:
        """Start ``version_dir`` beside what serves, at a private address only. Inside the
        block, ``promote`` moves the public traffic to it; leaving the block without promoting
        stops it. One candidate per endpoint at a time: the block holds the deploy lock."""
        ...

    def promote(self, candidate: Candidate) -> Endpoint:
        """Move the public traffic to ``candidate`` (tested) and record it; the previous version
        finishes its requests and stops. Call inside the ``candidate`` block."""
        ...

    def deploy(self, version_dir: Path, version: str) -> Endpoint:
        """``candidate`` then ``promote`` with no tests between: for versions already tested."""
        ...

    def current(self) -> Endpoint | None:
        """What serves now (the recorded version), or None."""
        ...

    def serving(self) -> list[ServerProcess]:
        """Every server of this endpoint that runs, after reconciling with the record."""
        ...

    def stop(self) -> Endpoint | None:
        """Take the endpoint down; returns what was stopped, or None if nothing ran."""
        ...

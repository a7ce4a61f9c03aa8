"""The interface every deploy backend offers, and what it hands back.

A backend puts one registry version behind the endpoint (``deploy``), says what serves
now (``current``) and takes the endpoint down (``stop``). ``LocalEndpoint`` and
``KubernetesEndpoint`` implement it; callers depend on this Protocol, not on either."""

from __future__ import annotations

from dataclasses import dataclass
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


class DeployBackend(Protocol):
    def deploy(self, version_dir: Path, version: str) -> Endpoint:
        """Serve ``version_dir``; returns once it answers, the previous version serving until then."""
        ...

    def current(self) -> Endpoint | None:
        """What serves now, or None."""
        ...

    def stop(self) -> Endpoint | None:
        """Take the endpoint down; returns what was stopped, or None if nothing ran."""
        ...

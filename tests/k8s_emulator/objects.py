"""What the stand-ins share: the object type, server timestamps, ``Status`` errors, list order."""

from __future__ import annotations

import datetime
from typing import Any, TypeVar

import kmock

T = TypeVar("T")
Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """A ``Status`` error body the way the API server words it (clients read ``code``)."""
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def sort_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]

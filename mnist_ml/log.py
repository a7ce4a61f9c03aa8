"""The progress callback long-running steps take: one human-readable line per call.

``print``, Dagster's ``context.log.info`` and a list's ``append`` all fit, so code that
takes a ``Log`` runs the same in an asset, a CLI or a test."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]

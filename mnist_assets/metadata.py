"""Helpers that turn results into Dagster metadata people can read in the UI."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping

from dagster import MetadataValue


def png(image: bytes, title: str) -> MetadataValue:
    """Embed a PNG in the asset's metadata so the UI shows the picture, not a path."""
    encoded = base64.b64encode(image).decode("ascii")
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def table(rows: Mapping[str, object], key: str, value: str) -> MetadataValue:
    """A two-column Markdown table, e.g. counts per class. NaN (say, the accuracy of a class
    with no samples) shows as "n/a", not as a number."""
    lines = [f"| {key} | {value} |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows.items()]
    return MetadataValue.md("\n".join(lines))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)

"""Cutting a sequence of sized items (requests, by their images) into consecutive groups."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def consecutive_groups(items: Sequence[Item], size: Callable[[Item], int], limit: int) -> Iterator[list[Item]]:
    """``items`` in order, in groups whose sizes add up to at most ``limit``; an item larger
    than ``limit`` is a group of its own. Nothing is reordered, dropped or repeated."""
    group: list[Item] = []
    total = 0
    for item in items:
        if group and total + size(item) > limit:
            yield group
            group, total = [], 0
        group.append(item)
        total += size(item)
    if group:
        yield group

"""``labelSelector`` and ``fieldSelector`` of list and watch requests (kmock ignores both)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .objects import Obj, api_error

_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)


@dataclass(frozen=True)
class Selectors:
    """``labelSelector`` and ``fieldSelector`` of a list or watch request (kmock ignores both).
    Labels: ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``.
    Fields: ``path=v``, ``path==v``, ``path!=v`` on any dotted path (a missing field is "")."""

    labels: tuple[tuple[str, str, frozenset[str]], ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Selectors:
        return cls(_parse_labels(params.get("labelSelector", "")), _parse_fields(params.get("fieldSelector", "")))

    def match(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_label_ok(labels, *r) for r in self.labels) and all(_field_ok(obj, *f) for f in self.fields)


def _split_selector(text: str) -> list[str]:
    return [part for part in re.split(r",(?![^(]*\))", text) if part.strip()]


def _parse_labels(text: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    requirements = []
    for part in _split_selector(text):
        m = _REQUIREMENT.fullmatch(part)
        if m is None or (m["neg"] and (m["op"] or m["setop"])):
            raise api_error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append((m["key"], m["setop"], values))
        elif m["op"]:
            requirements.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["value"]])))
        else:
            requirements.append((m["key"], "!exists" if m["neg"] else "exists", frozenset()))
    return tuple(requirements)


def _label_ok(labels: Mapping[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    present, value = key in labels, labels.get(key)
    return {
        "exists": present,
        "!exists": not present,
        "=": present and value in values,
        "in": present and value in values,
        "!=": not present or value not in values,
        "notin": not present or value not in values,
    }[op]


def _parse_fields(text: str) -> tuple[tuple[str, str, str], ...]:
    fields = []
    for part in _split_selector(text):
        m = re.fullmatch(r"\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if m is None:
            raise api_error(400, "BadRequest", f"invalid field selector: {part!r}")
        fields.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
    return tuple(fields)


def _field_ok(obj: Obj, path: str, op: str, expected: str) -> bool:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    actual = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return (actual == expected) == (op == "=")

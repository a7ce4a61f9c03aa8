"""PATCH bodies applied as the API server applies them (kmock applies every dict patch as a
naive recursive merge)."""

from __future__ import annotations

import copy
from typing import Any

from .objects import Obj, api_error


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``application/merge-patch+json``): null deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the list fields of built-in types we meet (x-kubernetes-patch-merge-key).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
}
_MERGED_PRIMITIVE_LISTS = {"finalizers"}  # patchStrategy: merge on a list of strings


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch (the official Python client's default for dict
    bodies): like a merge patch, but lists with a merge key (containers, env, conditions, ...)
    merge item by item, and ``$patch: replace | delete`` directives are honoured. Other
    directives ($setElementOrder, $retainKeys, $deleteFromPrimitiveList) are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGED_PRIMITIVE_LISTS:
            result[key] = list(dict.fromkeys([*(result.get(key) or []), *value]))
        elif isinstance(value, list) and (merge_key := _merge_key(key, value)):
            result[key] = _merge_list(result.get(key) or [], value, merge_key)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_key(field_name: str, items: list) -> str | None:
    if field_name == "ports":  # container ports merge on containerPort, service ports on port
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return _MERGE_KEYS.get(field_name)


def _merge_list(current: list, items: list, key: str) -> list:
    merged = copy.deepcopy(current)
    for item in items:
        if not isinstance(item, dict) or key not in item:
            merged.append(copy.deepcopy(item))
            continue
        index = next((i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def apply_patch(obj: Obj, patch: Any, content_type: str) -> Obj:
    """Apply a PATCH body by its Content-Type, with the API server's error codes."""
    if content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise api_error(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            import jsonpatch  # a kmock dependency

            return jsonpatch.apply_patch(obj, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise api_error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise api_error(400, "BadRequest", "a merge patch must be a JSON object")
        apply = strategic_merge_patch if content_type.startswith("application/strategic") else merge_patch
        return apply(obj, patch)
    raise api_error(415, "UnsupportedMediaType", f"the emulator does not support patches of type {content_type!r}")

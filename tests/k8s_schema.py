"""Strict validation against the Kubernetes OpenAPI schemas (kubernetes-validate), listing
every error of an object rather than only the first."""

from __future__ import annotations

import re

import kubernetes_validate

K8S_VERSION = "1.30"


def _validator(obj: dict):
    """The validator kubernetes_validate.validate builds, to list every error, not just the first."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= K8S_VERSION][-1]
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    schema = utils.schema_contents(f"{schema_dir}/{obj['kind'].lower()}-{api_version}.json", K8S_VERSION)
    definitions = utils.schema_contents(f"{schema_dir}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict) -> list[str]:
    """Every error of one object against the Kubernetes 1.30 schemas (strict)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return []
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [str(exc)]
    except kubernetes_validate.ValidationError as first:
        try:
            errors = sorted(_validator(obj).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
            return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors] or [str(first)]
        except Exception:  # kubernetes_validate's internals moved: its own (first) error still counts
            return [str(first)]

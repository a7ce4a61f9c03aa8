"""deploy/dagster.yaml as the tests use it: unchanged but for how the run launcher finds the
API server (a kubeconfig file instead of the in-cluster service account, which exists only
inside a pod), pointed at a fresh database on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from postgres_server import Postgres

ROOT = Path(__file__).resolve().parents[1]
DEPLOYED_INSTANCE = ROOT / "deploy" / "dagster.yaml"


def deployed_instance(kubeconfig: Path, **launcher_overrides: object) -> dict:
    """deploy/dagster.yaml with the launcher reading ``kubeconfig``."""
    instance = yaml.safe_load(DEPLOYED_INSTANCE.read_text())
    launcher = instance["run_launcher"]["config"]
    launcher.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig), **launcher_overrides)
    return instance


def deployed_storage() -> dict:
    """deploy/dagster.yaml without its run launcher (runs start as local processes) and
    without /data (a pod's volume): Postgres storage and run monitoring, as shipped."""
    instance = yaml.safe_load(DEPLOYED_INSTANCE.read_text())
    for key in ("run_launcher", "local_artifact_storage"):
        del instance[key]
    return instance


def unused_kubeconfig(path: Path) -> Path:
    """A kubeconfig for an API server that is never called (nothing listens there)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "none", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none", "namespace": "mnist"}}],
        "current-context": "none",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def deployed_home(tmp_path: Path, server: Postgres, database: str, instance: dict | None = None) -> tuple[Path, dict]:
    """A DAGSTER_HOME holding ``instance`` (default: deploy/dagster.yaml with an unused
    kubeconfig), and the environment that points it at a fresh database on ``server``."""
    server.create_database(database)
    home = tmp_path / "dagster_home"
    home.mkdir()
    if instance is None:
        instance = deployed_instance(unused_kubeconfig(tmp_path / "kubeconfig"))
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
    return home, {**server.env, "DAGSTER_PG_DB": database, "DAGSTER_HOME": str(home)}


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process for the block, as the webserver or daemon would have it."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

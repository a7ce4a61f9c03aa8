"""Dagster's instance as it ships for the cluster (deploy/dagster.yaml, its launcher reading a
kubeconfig file: tests/instance_config.py) on a real PostgreSQL server started by the test
(tests/postgres_server.py).

Covered: ``dagster instance migrate`` on an empty database; every storage (runs, event log,
schedules and sensor state) is the checked Postgres storage and holds its tables there; the
run queue is the QueuedRunCoordinator with the one-delivery-run limit; a run
and its events written by one instance are read back by another; without a reachable database
(nothing listening, or a wrong password) every entry point (the CLI, the daemon, the
webserver, a run started from the CLI) stops within seconds with an error that names the host and the
variables to set, and no SQLAlchemy traceback.

Not covered here: runs launched on this instance (tests/test_k8s_run_launcher.py), the
webserver and daemon working on it (tests/test_ui_daemon.py), a managed database (TLS, IAM
tokens), connection limits under many pods. Run and step workers in pods (``dagster api
execute_run`` / ``execute_step``) open the instance through the same storage classes, so the
same check runs there, but they are not started without a database here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEvent, DagsterEventType, DagsterInstance, EventLogEntry
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from instance_config import deployed_home, environment
from postgres_server import free_port
from run_queue import DELIVERY_LIMIT

from resources.dagster_storage import (
    CONNECTION_ENV,
    CheckedPostgresEventLogStorage,
    CheckedPostgresRunStorage,
    CheckedPostgresScheduleStorage,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAIL_FAST_S = 20  # a bound for "at once": connect timeout 5 s, plus Python and Dagster imports


def test_migrate_then_every_storage_is_postgres(tmp_path, postgres_server):
    home, env = deployed_home(tmp_path, postgres_server, "migrate_test")
    started = time.monotonic()
    migrate = subprocess.run(
        [BIN / "dagster", "instance", "migrate"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    migrate_s = time.monotonic() - started
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    print(f"dagster instance migrate on an empty database: {migrate_s:.1f} s")

    with environment(env), DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage) is CheckedPostgresRunStorage
        assert type(instance.event_log_storage) is CheckedPostgresEventLogStorage
        assert type(instance.schedule_storage) is CheckedPostgresScheduleStorage
        assert type(instance.run_coordinator) is QueuedRunCoordinator
        assert instance.get_concurrency_config().run_queue_config.tag_concurrency_limits == [DELIVERY_LIMIT]
        run = instance.add_run(DagsterRun(job_name="mnist_training", run_id="a" * 8 + "-0000-0000-0000-000000000001"))
        instance.handle_new_event(
            EventLogEntry(
                error_info=None,
                level="INFO",
                user_message="written to postgres",
                run_id=run.run_id,
                timestamp=time.time(),
                dagster_event=DagsterEvent(DagsterEventType.RUN_START.value, "mnist_training"),
            )
        )

    with contextlib.closing(postgres_server.connect("migrate_test")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT run_id, status FROM runs")
        stored_runs = cursor.fetchall()
    assert {"runs", "event_logs", "instigators", "job_ticks", "alembic_version"} <= tables, tables
    assert stored_runs == [(run.run_id, "STARTED")]

    # A second instance (another process would do the same) reads what the first wrote.
    with environment(env), DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status.value == "STARTED"
        assert [e.user_message for e in instance.all_logs(run.run_id)] == ["written to postgres"]


def _entry_points(port: int) -> dict[str, list]:
    """Every kind of process that opens the instance, as the image runs them."""
    return {
        "cli": [BIN / "dagster", "run", "list"],
        "daemon": [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"],
        "webserver": [BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "a run": [BIN / "dagster", "job", "execute", "-m", "mnist_assets.definitions", "-j", "mnist_training"],
    }


@pytest.mark.parametrize("fault", ["nothing listens", "wrong password"])
def test_without_the_database_every_entry_point_stops_at_once_and_says_what_to_set(tmp_path, postgres_server, fault):
    home, env = deployed_home(tmp_path, postgres_server, f"unreachable_{fault.split()[0]}")
    if fault == "nothing listens":
        env["DAGSTER_PG_PORT"] = str(free_port())
        expected = "Connection refused"
    else:
        env["DAGSTER_PG_PASSWORD"] = "not-the-password"
        expected = "password authentication failed"
    where = f"{postgres_server.host}:{env['DAGSTER_PG_PORT']}"
    for name, command in _entry_points(free_port()).items():
        started = time.monotonic()
        try:
            result = subprocess.run(
                [str(part) for part in command],
                env={**os.environ, **env},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{name} still running after 60 s without a database: {exc.stdout!r} {exc.stderr!r}")
        elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{name} exited 0 without a database:\n{output[-2000:]}"
        assert elapsed < FAIL_FAST_S, f"{name} took {elapsed:.1f} s to fail"
        assert where in output and expected in output, f"{name}:\n{output[-3000:]}"
        assert all(variable in output for variable in CONNECTION_ENV), f"{name}:\n{output[-3000:]}"
        assert "sqlalchemy" not in output.lower(), f"{name} failed inside SQLAlchemy:\n{output[-3000:]}"

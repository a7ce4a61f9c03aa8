"""Monitoring runs by itself: a real Dagster webserver and daemon (tests/stack.py, SQLite
instance) load the code location with ``MNIST_MONITORING_CRON`` set to every minute; without
anyone turning anything on, the daemon's ``monitoring_automation`` sensor evaluates
production_monitoring's automation condition, a tick requests a run after the cron tick, and
that run materializes production_monitoring with its drift checks. One cron minute, so the
test takes one to two minutes.

Not covered: the freshness policy turning the asset stale (it would take two cron intervals
without a run; the policy's windows are checked on the definition here), traffic in the log
(an empty log gives zero images and "unknown" checks; tests/test_monitoring.py covers the
numbers)."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from stack import DagsterStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = AssetKey("production_monitoring")


def test_definition_declares_the_cron_condition_and_freshness():
    from mnist_assets.definitions import defs

    node = defs.resolve_asset_graph().get(KEY)
    assert "every tick of" in node.automation_condition.get_label()
    interval = timedelta(minutes=15)  # the default cron, */15
    assert node.freshness_policy.fail_window.to_timedelta() == 4 * interval
    assert node.freshness_policy.warn_window.to_timedelta() == 2 * interval
    sensor = defs.get_sensor_def("monitoring_automation")
    assert sensor.default_status.value == "RUNNING"


def test_the_daemon_materializes_production_monitoring_on_its_cron(tmp_path):
    (tmp_path / "data" / "processed").mkdir(parents=True)
    np.savez(tmp_path / "data" / "processed" / "mnist.npz", y_train=np.repeat(np.arange(10), 10))
    env = {
        "MNIST_DATA_ROOT": str(tmp_path / "data"),
        "MNIST_REGISTRY_ROOT": str(tmp_path / "models"),
        "MNIST_SERVING_STATE_DIR": str(tmp_path / "serving"),
        "MNIST_MONITORING_CRON": "* * * * *",
        "MNIST_DRIFT_SENSOR_INTERVAL_S": "5",  # also the automation sensor's interval
        "MNIST_NEW_DATA_SENSOR_INTERVAL_S": "3600",
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    DagsterInstance.from_config(str(home)).dispose()  # SQLite storage made once, not raced by two processes
    with DagsterStack(home, env) as stack:
        deadline = time.monotonic() + 180
        event = None
        while event is None and time.monotonic() < deadline:
            with stack.instance() as instance:
                event = instance.get_latest_materialization_event(KEY)
            time.sleep(1)
        assert event is not None, stack.log("daemon")[-3000:]
        with stack.instance() as instance:
            run = instance.get_run_by_id(event.run_id)
            checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [check for check in _check_keys()]
            )
        assert run.tags.get("dagster/sensor_name") == "monitoring_automation", run.tags
        assert event.asset_materialization.metadata["images"].value == 0
        assert {key.name for key in checks} == {
            "ood_rate",
            "class_psi",
            "estimated_accuracy_drop",
            "confidence_distribution",
            "concept_score_distribution",
        }


def _check_keys():
    from mnist_assets.checks import MONITORING_CHECK_SPECS

    return [spec.key for spec in MONITORING_CHECK_SPECS]

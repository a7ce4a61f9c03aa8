"""The README's main command path: `dg launch` on run_config.yaml (as `make run`),
multi-process, with a persistent DAGSTER_HOME, on the real data with one epoch per model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from quick_config import quick_environment

from mnist_assets.assets.models import run_model_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _execute(tmp_path: Path, override: dict) -> subprocess.CompletedProcess:
    """`make run`'s command (dg launch, run_config.yaml, an override file merged over it),
    with data and serving state under ``tmp_path`` through the MNIST_* settings."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "override.yaml").write_text(json.dumps(override))
    command = [Path(sys.executable).parent / "dg", "launch", "--job", "mnist_training"]
    command += ["-c", ROOT / "run_config.yaml", "-c", tmp_path / "override.yaml"]
    venv = str(Path(sys.executable).parents[1])  # dg wants its project's venv active
    env = {**os.environ, **quick_environment(tmp_path), "DAGSTER_HOME": str(home), "VIRTUAL_ENV": venv}
    return subprocess.run(
        [str(part) for part in command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def _overlap(a, b) -> bool:
    return a.start_time < b.end_time and b.start_time < a.end_time


def test_job_runs_steps_in_parallel_and_succeeds(tmp_path, real_mirrors):
    quick = {"epochs": 1}
    result = _execute(
        tmp_path,
        {
            "mnist": {"mirrors": real_mirrors["mnist"]},
            "notmnist": {"mirrors": real_mirrors["notmnist"]},
            "classifier": {**quick, "min_test_accuracy": 0.9},
            "concept_model": {**quick, "min_detection_rate": 0.5, "max_false_positive_rate": 0.05},
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        steps = {s.step_key: s for s in instance.get_run_step_stats(run.run_id)}
    assert set(steps) == {
        "mnist_dataset",
        "notmnist_dataset",
        "production_labels",
        "mnist_classifier",
        "mnist_concept_model",
    }
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: the multiprocess executor runs one step at a time")
    assert _overlap(steps["mnist_dataset"], steps["notmnist_dataset"]), "downloads did not run in parallel"
    assert _overlap(steps["mnist_classifier"], steps["mnist_concept_model"]), "trainings did not run in parallel"
    if os.cpu_count() == 2:  # two slots for three ready steps: the critical path's go first (step_order)
        first = min(steps["mnist_dataset"].end_time, steps["production_labels"].end_time)
        assert steps["notmnist_dataset"].start_time >= first, "the notMNIST download took a critical-path slot"
    assert (tmp_path / "data" / run_model_dir(run.run_id, "classifier") / "saved_model.pb").exists()


def test_bad_value_fails_before_any_step(tmp_path):
    result = _execute(tmp_path, {"classifier": {"learning_rate": -0.001}})
    assert result.returncode != 0
    assert "classifier.learning_rate" in result.stderr
    assert "greater than 0" in result.stderr
    assert not (tmp_path / "data").exists(), "a step ran despite the bad config"
    with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert instance.get_runs() == []

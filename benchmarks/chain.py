"""Benchmark: a job end to end, as the README's main command runs it.

Runs `dg launch` (as `make run`) with run_config.yaml in a fresh data folder, registry and
DAGSTER_HOME (downloads from the mirror included, installs warm), samples the whole
process tree's memory, and reports each step's time and share of the wall time.

    python benchmarks/chain.py --job mnist_training --mirror ../shared/data
    python benchmarks/chain.py --job mnist_pipeline --mirror ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from dagster import AssetKey, DagsterInstance
from report import publish, table

from mnist_assets.assets.models import run_model_dir
from mnist_delivery.local_endpoint import LocalEndpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from quick_config import quick_environment  # noqa: E402

MODEL_TARGETS = {
    "classifier_test_accuracy": (0.985, "min"),
    "concept_roc_auc": (0.995, "min"),
    "concept_detection_rate": (0.95, "min"),
    "concept_false_positive_rate": (0.02, "max"),
}
TARGETS = {
    "mnist_training": {"wall_seconds": (90.0, "max"), "peak_pss_gb": (3.0, "max"), **MODEL_TARGETS},
    "mnist_pipeline": {
        "wall_seconds": (150.0, "max"),
        "orchestration_overhead_seconds": (8.0, "max"),
        "deployment_test_seconds": (10.0, "max"),
        "publish_onnx_export_and_parity_seconds": (5.0, "max"),
        **MODEL_TARGETS,
    },
}


def _tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) summed over the process tree. PSS splits shared pages (TensorFlow's
    libraries, mapped by every step process) among their users, so its sum is the
    memory the job really holds; the RSS sum counts shared pages once per process."""
    pss = rss = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = p.memory_full_info()
            pss, rss = pss + info.pss, rss + info.rss
    return pss, rss


def run_job(
    job: str, work: Path, mirror: Path | None, instance: str = "telemetry:\n  enabled: false\n", env: dict | None = None
) -> tuple[float, tuple[int, int]]:
    """Run the job on the ``instance`` (dagster.yaml text; default SQLite in the run's
    DAGSTER_HOME) with ``env`` added; return wall seconds and the peak tree (PSS, RSS) in bytes."""
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance)
    override = {}
    if mirror:
        url = mirror.resolve().as_uri()
        override |= {"mnist": {"mirrors": [f"{url}/mnist/"]}, "notmnist": {"mirrors": [f"{url}/notmnist/"]}}
    (work / "override.yaml").write_text(json.dumps(override))
    command = [str(Path(sys.executable).parent / "dg"), "launch", "--job", job]  # as `make run`
    command += ["-c", str(ROOT / "run_config.yaml"), "-c", str(work / "override.yaml")]
    venv = str(Path(sys.executable).parents[1])  # dg wants its project's venv active
    env = {**os.environ, **quick_environment(work), **(env or {}), "DAGSTER_HOME": str(home), "VIRTUAL_ENV": venv}
    with (work / "run.log").open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        watched, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            pss, rss = _tree_memory(watched)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.1)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"job failed (exit {proc.returncode}); log:\n{(work / 'run.log').read_text()[-4000:]}")
    return wall, (peak_pss, peak_rss)


def run_facts(home: Path) -> tuple[str, dict[str, float], dict[str, float]]:
    """The run's id, seconds per step, and, if the job ran them, the deployment tests' own
    timing and the publish step's added cost (ONNX export and parity, from the manifest)."""
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(limit=1)
        steps = {s.step_key: round(s.end_time - s.start_time, 1) for s in instance.get_run_step_stats(run.run_id)}
        tests = instance.fetch_materializations(AssetKey("deployment_test_results"), limit=1).records
        published = instance.fetch_materializations(AssetKey("uploaded_model"), limit=1).records
    facts = {}
    tested = tests[0].asset_materialization.metadata.get("test_seconds") if tests else None
    if tested:
        facts["deployment_test_seconds"] = round(tested.value, 1)
    if published:
        onnx = published[0].asset_materialization.metadata["manifest"].value.get("onnx", {})
        facts["publish_onnx_export_and_parity_seconds"] = onnx.get("export_and_parity_s", float("nan"))
    return run.run_id, steps, facts


def orchestration_overhead(job: str, wall: float, steps: dict[str, float]) -> tuple[float, list[str]]:
    """Wall time not spent inside a step on the critical path (the chain of steps, following the
    job's dependencies, whose own times add up the most): launching step processes, importing
    the code location, writing events, starting and ending the run. With the critical path."""
    from dagster._core.execution.api import create_execution_plan

    from mnist_assets.definitions import defs

    deps = create_execution_plan(defs.resolve_job_def(job)).get_executable_step_deps()
    longest: dict[str, tuple[float, list[str]]] = {}

    def path_to(step: str) -> tuple[float, list[str]]:
        if step not in longest:
            before = max((path_to(up) for up in deps[step]), default=(0.0, []), key=lambda found: found[0])
            longest[step] = (before[0] + steps.get(step, 0.0), [*before[1], step])
        return longest[step]

    compute, path = max((path_to(step) for step in deps), key=lambda found: found[0])
    return round(wall - compute, 1), path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=sorted(TARGETS), default="mnist_pipeline")
    parser.add_argument("--mirror", type=Path, help="local mirror folder with mnist/ and notmnist/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.job}-") as tmp:
        work = Path(tmp)
        try:
            wall, peak = run_job(args.job, work, args.mirror)
            run_id, steps, facts = run_facts(work / "dagster_home")
        finally:
            LocalEndpoint(work / "serving").stop()
        clf, concept = (
            json.loads((work / "data" / f"{run_model_dir(run_id, model)}.metrics.json").read_text())
            for model in ("classifier", "concept_model")
        )
    overhead, critical_path = orchestration_overhead(args.job, wall, steps)
    measured = {"wall_seconds": round(wall, 1), "orchestration_overhead_seconds": overhead}
    measured |= {"peak_pss_gb": round(peak[0] / 1e9, 2), **facts}
    measured |= {
        "classifier_test_accuracy": round(clf["test_accuracy"], 4),
        "concept_roc_auc": round(concept["notmnist"]["roc_auc"], 5),
        "concept_detection_rate": round(concept["notmnist"]["detection_rate"], 4),
        "concept_false_positive_rate": round(concept["notmnist"]["false_positive_rate"], 4),
    }
    ok = publish(
        args.job,
        table(measured, TARGETS[args.job]),
        {
            "steps": steps,
            "critical_path": critical_path,
            "peak_rss_sum_gb": round(peak[1] / 1e9, 2),
            "noisy_mnist": concept["noisy_mnist"],
        },
    )
    print(f"(RSS summed over processes, shared pages counted per process: {peak[1] / 1e9:.2f} GB)")
    print(f"critical path: {' -> '.join(critical_path)}")
    print("\nstep seconds and share of wall time (two steps run at once where the graph allows):")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {step:45} {seconds:>6}  {seconds / wall:>5.0%}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Benchmark: the `mnist_training` job end to end, as the README's main command runs it.

Runs `dagster job execute` in a fresh data folder and DAGSTER_HOME (downloads from the
mirror included, installs warm), samples the whole process tree's memory, then reads
the models' metrics. Prints a table and writes benchmarks/results/training_chain.json.

    python benchmarks/training_chain.py --mirror ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from dagster import DagsterInstance

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # name: (target, "max" or "min")
    "wall_seconds": (90.0, "max"),
    "peak_pss_gb": (3.0, "max"),
    "classifier_test_accuracy": (0.98, "min"),
    "concept_roc_auc": (0.995, "min"),
    "concept_detection_rate": (0.95, "min"),
    "concept_false_positive_rate": (0.02, "max"),
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


def run_job(work: Path, mirror: Path | None) -> tuple[float, tuple[int, int], str]:
    """Run the job; return wall seconds, peak tree (PSS, RSS) in bytes and DAGSTER_HOME."""
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    override = {"data_dir": str(work / "data")}
    if mirror:
        url = mirror.resolve().as_uri()
        override |= {"mnist": {"mirrors": [f"{url}/mnist/"]}, "notmnist": {"mirrors": [f"{url}/notmnist/"]}}
    (work / "override.yaml").write_text(json.dumps(override))
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "mnist_assets.definitions"]
    command += ["-j", "mnist_training", "-c", str(ROOT / "run_config.yaml"), "-c", str(work / "override.yaml")]
    env = {**__import__("os").environ, "DAGSTER_HOME": str(home)}
    log = (work / "run.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    watched, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        pss, rss = _tree_memory(watched)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    log.close()
    if proc.returncode != 0:
        sys.exit(f"job failed (exit {proc.returncode}); log:\n{(work / 'run.log').read_text()[-4000:]}")
    return wall, (peak_pss, peak_rss), str(home)


def step_seconds(home: str) -> dict[str, float]:
    with DagsterInstance.from_config(home) as instance:
        (run,) = instance.get_runs(limit=1)
        return {s.step_key: round(s.end_time - s.start_time, 1) for s in instance.get_run_step_stats(run.run_id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, help="local mirror folder with mnist/ and notmnist/")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_chain.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        wall, peak, home = run_job(work, args.mirror)
        steps = step_seconds(home)
        clf = json.loads((work / "data" / "models" / "classifier.metrics.json").read_text())
        concept = json.loads((work / "data" / "models" / "concept_model.metrics.json").read_text())
    measured = {
        "wall_seconds": round(wall, 1),
        "peak_pss_gb": round(peak[0] / 1e9, 2),
        "classifier_test_accuracy": round(clf["test_accuracy"], 4),
        "concept_roc_auc": round(concept["notmnist"]["roc_auc"], 5),
        "concept_detection_rate": round(concept["notmnist"]["detection_rate"], 4),
        "concept_false_positive_rate": round(concept["notmnist"]["false_positive_rate"], 4),
    }
    rows = []
    for name, value in measured.items():
        target, kind = TARGETS[name]
        ok = value <= target if kind == "max" else value >= target
        rows.append(
            {"metric": name, "measured": value, "target": f"{'<=' if kind == 'max' else '>='} {target}", "ok": ok}
        )
    print(f"{'metric':30} {'measured':>10} {'target':>10}  ok")
    for row in rows:
        print(f"{row['metric']:30} {row['measured']:>10} {row['target']:>10}  {'yes' if row['ok'] else 'NO'}")
    print(f"(RSS summed over processes, shared pages counted per process: {peak[1] / 1e9:.2f} GB)")
    print("\nstep wall seconds (steps overlap: two run at once):")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {step:45} {seconds:>6}")
    extra = {
        "peak_rss_sum_gb": round(peak[1] / 1e9, 2),
        "noisy_mnist": concept["noisy_mnist"],
        "training_seconds": {
            "classifier": round(clf["training_seconds"], 1),
            "concept_model": round(concept["training_seconds"], 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "steps": steps, **extra, "cpus": psutil.cpu_count()}, indent=2))
    print(f"\nwrote {args.out}")
    sys.exit(0 if all(row["ok"] for row in rows) else 1)


if __name__ == "__main__":
    main()

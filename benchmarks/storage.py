"""Benchmark: Dagster's storage on PostgreSQL (the shipped instance) against the local
default, SQLite, for one training run, side by side in one session.

Starts a real PostgreSQL server (Debian's package; tests/postgres_server.py), times
`dagster instance migrate` on an empty database, then runs `mnist_training` (run_config.yaml,
fresh data folder each time, downloads from the mirror included) alternately on SQLite and on
deploy/dagster.yaml's Postgres storages, `--repeats` times each, and reports the median wall
time of each and their ratio.

    python benchmarks/storage.py --mirror ../shared/data
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from chain import run_job
from report import publish, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from instance_config import deployed_storage  # noqa: E402
from postgres_server import PostgresServer, find_bin_dir  # noqa: E402

TARGETS = {"postgres_over_sqlite_wall": (1.1, "max")}


def migrate_seconds(env: dict[str, str], work: Path) -> float:
    home = work / "migrate_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(deployed_storage()))
    started = time.perf_counter()
    subprocess.run(
        [Path(sys.executable).parent / "dagster", "instance", "migrate"],
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, help="local mirror folder with mnist/ and notmnist/")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    walls: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    with PostgresServer(bin_dir) as server, tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        server.create_database("migrate")
        migrate = migrate_seconds({**server.env, "DAGSTER_PG_DB": "migrate"}, Path(tmp))
        postgres_instance = yaml.safe_dump(deployed_storage())
        for attempt in range(args.repeats):
            for storage in ("sqlite", "postgres"):
                work = Path(tmp) / f"{storage}-{attempt}"
                work.mkdir()
                if storage == "sqlite":
                    wall, _ = run_job("mnist_training", work, args.mirror)
                else:
                    database = f"run_{attempt}"
                    server.create_database(database)
                    env = {**server.env, "DAGSTER_PG_DB": database}
                    wall, _ = run_job("mnist_training", work, args.mirror, postgres_instance, env)
                walls[storage].append(wall)
                print(f"{storage:8} run {attempt + 1}: {wall:.1f} s", flush=True)
    sqlite, postgres = statistics.median(walls["sqlite"]), statistics.median(walls["postgres"])
    measured = {
        "migrate_seconds": round(migrate, 1),
        "sqlite_training_wall_seconds": round(sqlite, 1),
        "postgres_training_wall_seconds": round(postgres, 1),
        "postgres_over_sqlite_wall": round(postgres / sqlite, 3),
    }
    ok = publish("storage", table(measured, TARGETS), {"walls": walls})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

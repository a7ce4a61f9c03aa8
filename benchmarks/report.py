"""Shared by the benchmarks: compare measurements with targets, print a table, write JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(measured: dict[str, float], targets: dict[str, tuple[float, str]]) -> list[dict]:
    """One row per measurement; ``targets`` maps a name to (bound, "max" or "min")."""
    rows = []
    for name, value in measured.items():
        bound, kind = targets.get(name, (None, ""))
        ok = None if bound is None else (value <= bound if kind == "max" else value >= bound)
        target = "" if bound is None else f"{'<=' if kind == 'max' else '>='} {bound}"
        rows.append({"metric": name, "measured": value, "target": target, "ok": ok})
    return rows


def publish(name: str, rows: list[dict], extra: dict) -> bool:
    """Print the table, write ``results/<name>.json``; True when every target is met."""
    print(f"{'metric':38} {'measured':>12} {'target':>12}  ok")
    for row in rows:
        ok = {True: "yes", False: "NO", None: ""}[row["ok"]]
        print(f"{row['metric']:38} {row['measured']:>12} {row['target']:>12}  {ok}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"rows": rows, **extra, "cpus": os.cpu_count()}, indent=2))
    print(f"\nwrote {out}")
    return all(row["ok"] is not False for row in rows)

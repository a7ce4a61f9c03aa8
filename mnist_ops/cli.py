"""``mnist-ops``: the operator's command (installed by the package, ``[project.scripts]``).

    mnist-ops list                 versions: aliases, failed marks, training metrics
    mnist-ops status               what serves where: the endpoint and every server process/pod
    mnist-ops promote VERSION      serve VERSION (a number or an alias), then make it production
    mnist-ops rollback             production goes back to `previous`, which then serves
    mnist-ops predict IMAGE.png    send one 28x28 image (or --digit N) to the endpoint
    mnist-ops stop                 stop the endpoint

Settings are the code location's: ``MNIST_REGISTRY_ROOT``, ``MNIST_SERVING_*``,
``MNIST_DATA_ROOT`` and the others in the README's settings table. Each command prints a table,
or JSON with ``--json``; progress lines from the deployer go to stderr. Exit status: 0 done,
1 refused or failed (the message, on stderr, says what to do; with ``--json`` also
``{"error": ...}`` on stdout), 2 a usage error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mnist_delivery.backend import DeployError
from mnist_ml.registry import RegistryError
from mnist_ops.operations import Deployed, Operator, OperatorError, Prediction, VersionRow, read_png

PROG = "mnist-ops"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        operator = Operator.from_environment(log=lambda line: print(line, file=sys.stderr))
        result, text = args.command(operator, args)
    except (OperatorError, RegistryError, DeployError, ValueError) as exc:
        print(f"{PROG} {args.name}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


Outcome = tuple[Any, str]  # (what --json prints, what a person reads)
Command = Callable[[Operator, argparse.Namespace], Outcome]


def list_versions(operator: Operator, args: argparse.Namespace) -> Outcome:
    rows = operator.versions()
    if not rows:
        text = f"no versions in {operator.repository.model_dir}: publish one with `make run`"
        return {"versions": [], "aliases": {}}, text
    table = _table(
        ["version", "status", "created", "test acc", "notMNIST det", "clean FPR", "parity"],
        [
            [
                str(row.version),
                _status(row),
                row.created_at[:19].replace("T", " "),
                _rate(row.test_accuracy),
                _rate(row.detection_rate),
                _rate(row.false_positive_rate),
                "-" if row.parity is None else json.dumps(row.parity)[:40],
            ]
            for row in rows
        ],
    )
    return {"versions": [asdict(row) for row in rows], "aliases": operator.repository.aliases()}, table


def status(operator: Operator, args: argparse.Namespace) -> Outcome:
    endpoint, servers = operator.where()
    production = operator.production()
    result = {
        "endpoint": asdict(endpoint) if endpoint else None,
        "servers": [asdict(server) for server in servers],
        "registry_production": production,
    }
    if endpoint is None:
        lines = ["no endpoint is running: start one with `mnist-ops promote <version>`"]
    else:
        lines = [
            f"version {endpoint.version} serves at {endpoint.url}"
            + (f" (pid {endpoint.pid}, log {endpoint.log_file})" if endpoint.pid else "")
        ]
    lines.append(f"registry production: {production if production is not None else 'none'}")
    if endpoint and production is not None and endpoint.version != str(production):
        lines.append(f"warning: the endpoint serves {endpoint.version}, not the production version {production}")
    if servers:
        lines += ["", _table(["server", "version", "role"], [[s.name, s.version, s.role] for s in servers])]
    return result, "\n".join(lines)


def promote(operator: Operator, args: argparse.Namespace) -> Outcome:
    return _deployed(operator.promote(args.version), "promoted")


def rollback(operator: Operator, args: argparse.Namespace) -> Outcome:
    return _deployed(operator.rollback(), "rolled back")


def predict(operator: Operator, args: argparse.Namespace) -> Outcome:
    if args.digit is not None:
        image, source = operator.test_digit(args.digit)
    else:
        image, source = read_png(args.image), str(args.image)
    answer: Prediction = operator.predict(image, source, url=args.url)
    probabilities = _table(["class", "probability"], [[str(c), f"{p:.4f}"] for c, p in enumerate(answer.probabilities)])
    text = (
        f"image: {answer.image}\n"
        f"version {answer.version} at {answer.url} says: {answer.class_id}\n"
        f"concept score {answer.concept_score:.5f}: "
        + ("OUT OF DISTRIBUTION (flagged)" if answer.is_ood else "in distribution")
        + f"\n\n{probabilities}"
    )
    return asdict(answer), text


def stop(operator: Operator, args: argparse.Namespace) -> Outcome:
    stopped = operator.stop()
    if stopped is None:
        return {"stopped": None}, "no endpoint was running; nothing to stop"
    return {"stopped": asdict(stopped)}, f"stopped version {stopped.version} at {stopped.url}; nothing serves now"


def _deployed(done: Deployed, verb: str) -> Outcome:
    previous = done.aliases.get("previous")
    text = (
        f"{verb}: version {done.version} serves at {done.endpoint.url}"
        + (f" (pid {done.endpoint.pid})" if done.endpoint.pid else "")
        + f"\nproduction: {done.version} (was {done.replaced if done.replaced is not None else 'none'}), "
        f"previous: {previous if previous is not None else 'none'}"
    )
    result = {"version": done.version, "endpoint": asdict(done.endpoint), "aliases": done.aliases}
    return {**result, "replaced": done.replaced}, text


def _status(row: VersionRow) -> str:
    words = list(row.aliases)
    if row.failed is not None:
        words.append(f"FAILED: {row.failed}")
    return ", ".join(words) or "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns; a long last column (a failure reason) is not padded."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [[h.upper() for h in header], *rows]
    padded = ("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in padded)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="command")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(command=run, name=name)
        return sub

    command("list", list_versions, "registry versions: aliases, failed marks and training metrics")
    command("status", status, "what serves where: the endpoint and every server process or pod")
    command(
        "promote", promote, "deploy VERSION beside what serves, move traffic to it, then make it production"
    ).add_argument("version", help="a version number, or an alias such as candidate")
    command("rollback", rollback, "make the previous production version production again and serve it")
    send = command("predict", predict, "send one test image to the endpoint (as test traffic: not logged)")
    image = send.add_mutually_exclusive_group(required=True)
    image.add_argument("image", nargs="?", type=Path, help="a 28x28 grayscale PNG, white digit on black")
    image.add_argument(
        "--digit", type=int, choices=range(10), help="an MNIST test image of this digit (drawn if no data)"
    )
    send.add_argument("--url", help="send to this address instead of the recorded endpoint (e.g. a port-forward)")
    command("stop", stop, "stop the endpoint (every server process or pod)")
    return parser

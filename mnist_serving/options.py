"""What the model server can be told when it starts, declared once.

``ServerOptions`` is the one declaration of the server's tunable options: the server's
command line is generated from it (``add_arguments`` / ``from_arguments``), and both
deployers (a local process, a Kubernetes Deployment) pass it as ``argv()``. Deployments set
an option through ``$MNIST_SERVER_<OPTION>`` (``from_environment``). Adding an option means
adding a field here and using it in the server; nothing else changes.

Where the server listens and what it serves (model folder, host, port, inherited sockets,
request-log folder) are not options: each deployer decides them. Secrets are not options
either: they would show in the command line (``ps``, the pod spec). The server reads its one
secret, the feedback route's bearer token, from ``$MNIST_FEEDBACK_TOKEN`` only
(``FEEDBACK_TOKEN_ENV``; on Kubernetes from a Secret), never from a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 8080
ENV_PREFIX = "MNIST_SERVER_"
FEEDBACK_TOKEN_ENV = "MNIST_FEEDBACK_TOKEN"  # the feedback route's bearer token; unset: feedback refused


def _option(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word for it
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerOptions:
    max_batch: int = _option(1024, "most images per request")
    max_body_bytes: int = _option(16 * 1024 * 1024, "largest request body in bytes")
    request_log: bool = _option(True, "log every prediction (needs --request-log-dir)")
    input_sample_rate: float = _option(0.05, "share of inputs kept as pixels in the log; flagged ones always are")
    log_max_file_mb: float = _option(64.0, "rotate request log files at this size")
    log_max_files: int = _option(20, "request log files kept; the oldest go first")

    def __post_init__(self) -> None:
        """Refuse values the server cannot work with, naming the option."""
        problems = [
            f"{name} must be {rule}"
            for name, ok, rule in (
                ("max_batch", self.max_batch >= 1, "at least 1"),
                ("max_body_bytes", self.max_body_bytes >= 4096, "at least 4096"),
                ("input_sample_rate", 0 <= self.input_sample_rate <= 1, "between 0 and 1"),
                ("log_max_file_mb", self.log_max_file_mb > 0, "above 0"),
                ("log_max_files", self.log_max_files >= 1, "at least 1"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def _types(cls) -> dict[str, type]:
        return typing.get_type_hints(cls)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--option-name`` per field, typed, with the field's default and help."""
        types = cls._types()
        for option in dataclasses.fields(cls):
            flag = "--" + option.name.replace("_", "-")
            kind, help_text = types[option.name], f"{option.metadata['help']} (default {option.default})"
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=option.default, help=help_text)
            else:
                parser.add_argument(flag, type=kind, default=option.default, help=help_text)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ServerOptions:
        return cls(**{option.name: getattr(args, option.name) for option in dataclasses.fields(cls)})

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ServerOptions:
        """Fields from ``$MNIST_SERVER_<FIELD>`` where set (booleans: true/false, 1/0, yes/no)."""
        types, values = cls._types(), {}
        for option in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + option.name.upper())
            if raw is None:
                continue
            kind = types[option.name]
            try:
                values[option.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"${ENV_PREFIX}{option.name.upper()}={raw!r}: {exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"server options from ${ENV_PREFIX}*: {exc}") from None

    def argv(self) -> list[str]:
        """The command-line arguments that give a server exactly these options."""
        args = []
        for option in dataclasses.fields(self):
            value, flag = getattr(self, option.name), option.name.replace("_", "-")
            args += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
        return args


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")

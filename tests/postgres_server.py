"""A real PostgreSQL server for the tests: its own cluster in a temporary folder, on a free
port on 127.0.0.1, stopped (by PID if it has to be) and deleted afterwards.

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it when missing).
PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` system
user and its commands run through ``runuser``; as anyone else they run as that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

USER = "dagster"
DATABASE = "dagster"
# Test-only credentials for a throwaway cluster that listens on 127.0.0.1 alone.
PASSWORD = "test-only-not-a-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them out of PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@dataclass(frozen=True)
class Postgres:
    """Where the server listens and how to log in: the ``DAGSTER_PG_*`` variables that
    deploy/dagster.yaml reads."""

    host: str
    port: int

    @property
    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": DATABASE,
            "DAGSTER_PG_USERNAME": USER,
            "DAGSTER_PG_PASSWORD": PASSWORD,
        }

    def connect(self, database: str = DATABASE):
        return psycopg2.connect(
            host=self.host, port=self.port, user=USER, password=PASSWORD, dbname=database, connect_timeout=5
        )

    def create_database(self, name: str) -> None:
        """A fresh empty database, so each test's instance starts from nothing."""
        with contextlib.closing(self.connect("postgres")) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}" OWNER {USER}')


class PostgresServer:
    """``with PostgresServer(bin_dir) as pg:`` runs a fresh cluster until the block ends."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.folder = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
        self.data, self.socket_dir = self.folder / "data", self.folder / "socket"
        self.port = free_port()
        self.pid: int | None = None

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def __enter__(self) -> Postgres:
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return Postgres("127.0.0.1", self.port)

    def _start(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
            "--encoding=UTF8", "--no-instructions",
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        server = Postgres("127.0.0.1", self.port)
        with contextlib.closing(server.connect("postgres")) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-t", "30", "-w", "stop")
            self._kill_if_alive(self.pid)
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _kill_if_alive(pid: int) -> None:
        """The postmaster takes its backends with it; SIGKILL only if it outlived ``stop``."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

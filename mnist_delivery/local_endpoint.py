"""Run the endpoint as a local background process, and replace it without dropping requests.

Deploying starts the new server on the *same* listening socket (taken over from the
running server, or bound fresh), waits until it answers ready on a private probe port,
records it as the endpoint, and only then stops the old server gracefully. The server
outlives the process that deployed it; ``endpoint.json`` in the state folder says which
process serves which version where.

One deploy or stop at a time: each holds an exclusive lock on ``deploy.lock`` in the state
folder (``flock``: the kernel releases it when the holder dies, even by SIGKILL), so two runs
deploying at once take turns instead of both taking over the same server."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import requests

from mnist_delivery.backend import DeployError, Endpoint
from mnist_ml.atomic import write_text_atomic
from mnist_ml.log import Log
from mnist_serving.options import DEFAULT_PORT, ServerOptions
from mnist_serving.sockets import bind_listener, take_listener


def _alive(pid: int) -> bool:
    """True for a running server process; reaps it if it is our exited child."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"mnist_serving" in cmdline.read_bytes()


DEFAULT_OPTIONS = ServerOptions()


class LocalEndpoint:
    """A ``DeployBackend``: one endpoint (host, port) whose server process is managed through
    ``state_dir``, started with ``options`` and, if given, logging requests to ``request_log``.
    ``port=0`` picks a free port on the first deploy and keeps it after."""

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        options: ServerOptions = DEFAULT_OPTIONS,
        request_log: Path | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        drain_seconds: float = 2.0,
        lock_timeout: float = 600.0,
        log: Log = print,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host, self.port = host, port
        self.options, self.request_log = options, request_log
        self.startup_timeout, self.stop_timeout, self.drain_seconds = startup_timeout, stop_timeout, drain_seconds
        self.lock_timeout = lock_timeout
        self.log = log
        self.state_file = self.state_dir / "endpoint.json"

    def current(self) -> Endpoint | None:
        """The endpoint recorded in the state folder, if its process still runs. Stale state
        (a dead or foreign PID) is reported and cleared."""
        if not self.state_file.exists():
            return None
        endpoint = Endpoint(**json.loads(self.state_file.read_text()))
        if _alive(endpoint.pid):
            return endpoint
        self.log(f"stale endpoint state: pid {endpoint.pid} (version {endpoint.version}) is not running; clearing it")
        self._clear(endpoint)
        return None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the state folder's deploy lock; wait for another deploy or stop to finish."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "deploy.lock").open("a") as lock:
            deadline, waiting = time.monotonic() + self.lock_timeout, False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DeployError(
                            f"another deploy or stop of the endpoint in {self.state_dir} has held its lock for "
                            f"{self.lock_timeout:.0f}s; let it finish, or stop the process that holds "
                            f"{self.state_dir / 'deploy.lock'}"
                        ) from None
                    if not waiting:
                        self.log("another deploy of this endpoint is under way; waiting for it to finish")
                        waiting = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def deploy(self, version_dir: Path, version: str) -> Endpoint:
        """Serve ``version_dir`` at this endpoint. Returns once the new server is live and
        the previous one (if any) has stopped. Waits for a deploy or stop under way."""
        with self._exclusive():
            return self._deploy(Path(version_dir), version)

    def _deploy(self, version_dir: Path, version: str) -> Endpoint:
        old = self.current()
        if old and (old.host != self.host or self.port not in (0, old.port)):
            raise DeployError(
                f"an endpoint already runs at {old.url} (pid {old.pid}), not at {self.host}:{self.port}; "
                "stop it first or deploy to the same host and port"
            )
        listener = self._take_over(old) if old else self._bind()
        probe = bind_listener("127.0.0.1", 0)
        port, probe_port = listener.getsockname()[1], probe.getsockname()[1]
        try:
            endpoint, process = self._start(version_dir, version, port, listener, probe)
        finally:  # the server holds its own copies now
            listener.close()
            probe.close()
        self._wait_ready(endpoint, process, probe_port)
        self._write(endpoint)
        if old:
            self._stop_process(old, drain=True)
            self._clear_files(old)
            self.log(f"stopped version {old.version} (pid {old.pid})")
        return endpoint

    def stop(self) -> Endpoint | None:
        """Stop the endpoint's server, if one runs; returns what was stopped."""
        with self._exclusive():
            endpoint = self.current()
            if endpoint:
                self._stop_process(endpoint)
                self._clear(endpoint)
                self.log(f"stopped the endpoint at {endpoint.url} (version {endpoint.version}, pid {endpoint.pid})")
            return endpoint

    def _bind(self) -> socket.socket:
        try:
            return bind_listener(self.host, self.port)
        except OSError as exc:
            raise DeployError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror}): another process uses the port and "
                f"no endpoint of ours is recorded in {self.state_file}. Stop that process or configure another port."
            ) from exc

    def _take_over(self, old: Endpoint) -> socket.socket:
        try:
            return take_listener(Path(old.handoff_socket))
        except OSError as exc:
            raise DeployError(
                f"the endpoint at {old.url} (pid {old.pid}) runs but does not hand over its socket at "
                f"{old.handoff_socket} ({exc}); stop it (kill {old.pid}) and deploy again"
            ) from exc

    def _start(
        self, model_dir: Path, version: str, port: int, listener: socket.socket, probe: socket.socket
    ) -> tuple[Endpoint, subprocess.Popen]:
        handoff = self.state_dir / f"handoff-{uuid.uuid4().hex[:12]}.sock"
        log_file = self.state_dir / f"server-v{version}.log"
        command = [sys.executable, "-m", "mnist_serving", "--model-dir", str(model_dir)]
        command += ["--fd", str(listener.fileno()), "--fd", str(probe.fileno()), "--handoff-socket", str(handoff)]
        command += self.options.argv()
        if self.request_log is not None:
            command += ["--request-log-dir", str(self.request_log)]
        with log_file.open("ab") as out:
            process = subprocess.Popen(
                command,
                pass_fds=(listener.fileno(), probe.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # keeps serving after the deploying process exits
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        endpoint = Endpoint(
            url=f"http://{host}:{port}",
            host=self.host,
            port=port,
            pid=process.pid,
            version=str(version),
            model_dir=str(model_dir),
            handoff_socket=str(handoff),
            log_file=str(log_file),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.log(f"started version {version} (pid {process.pid}); log: {log_file}")
        return endpoint, process

    def _wait_ready(self, endpoint: Endpoint, process: subprocess.Popen, probe_port: int) -> None:
        url = f"http://127.0.0.1:{probe_port}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DeployError(
                    f"version {endpoint.version} exited with code {process.returncode} before it was ready; "
                    f"the endpoint keeps serving what it served. Last log lines:\n{_tail(endpoint.log_file)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    self.log(f"version {endpoint.version} is ready")
                    return
            time.sleep(0.2)
        self._stop_process(endpoint)
        self._clear_files(endpoint)
        raise DeployError(
            f"version {endpoint.version} was not ready after {self.startup_timeout:.0f}s and was stopped; "
            f"the endpoint keeps serving what it served. Last log lines:\n{_tail(endpoint.log_file)}"
        )

    def _stop_process(self, endpoint: Endpoint, drain: bool = False) -> None:
        """SIGTERM (finish requests in flight, then exit), SIGKILL after stop_timeout. With
        ``drain``, SIGUSR1 first: the successor takes all new connections while this one
        answers the ones it holds."""
        if drain:
            with contextlib.suppress(ProcessLookupError):
                os.kill(endpoint.pid, signal.SIGUSR1)
            time.sleep(self.drain_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.kill(endpoint.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while _alive(endpoint.pid):
            if time.monotonic() > deadline:
                self.log(f"pid {endpoint.pid} ignored SIGTERM for {self.stop_timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(endpoint.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)

    def _write(self, endpoint: Endpoint) -> None:
        write_text_atomic(self.state_file, json.dumps(asdict(endpoint), indent=2))

    def _clear(self, endpoint: Endpoint) -> None:
        self.state_file.unlink(missing_ok=True)
        self._clear_files(endpoint)

    @staticmethod
    def _clear_files(endpoint: Endpoint) -> None:
        Path(endpoint.handoff_socket).unlink(missing_ok=True)


def _tail(path: str, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def main() -> None:
    """``python -m mnist_delivery.local_endpoint status|stop [--state-dir var/serving]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mnist_delivery.local_endpoint", description=main.__doc__)
    parser.add_argument("action", choices=["status", "stop"])
    parser.add_argument("--state-dir", type=Path, default=Path("var/serving"))
    args = parser.parse_args()
    local = LocalEndpoint(args.state_dir)
    if args.action == "stop":
        if local.stop() is None:
            print(f"no endpoint is running in {args.state_dir}")
        return
    endpoint = local.current()
    print(json.dumps(asdict(endpoint), indent=2) if endpoint else f"no endpoint is running in {args.state_dir}")


if __name__ == "__main__":
    main()

"""Run the endpoint as local background processes, and replace a version only after its
successor passed its tests, without dropping a request.

A deploy has two moves (``DeployBackend``). ``candidate`` starts the new version beside
the one serving, listening on a private probe port only: the deployment tests run there.
``promote`` hands it the public listening socket (taken over from the running server, or
bound fresh), records it in ``endpoint.json`` (the commit), then drains and stops the old
server. The server outlives the process that deployed it.

Crash safety (see ``mnist_serving.lease``): a candidate holds a lease on its stdin, a pipe
from the deployer, and stops if the deployer dies before the record names it; a recorded
server that finds another one recorded drains and stops by itself. Every deploy, status and
stop first reconciles: it finds every server process of this endpoint (by the record path
in its command line, not only the recorded pid), stops the ones not recorded and, for
status, restarts the recorded version if its process died. So whatever is killed when,
the public socket ends up answered by the one recorded version.

One deploy or stop at a time: each holds an exclusive lock on ``deploy.lock`` in the state
folder (``flock``: the kernel releases it when the holder dies, even by SIGKILL)."""

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from mnist_delivery.backend import Candidate, DeployError, Endpoint, ServerProcess
from mnist_ml.atomic import write_text_atomic
from mnist_ml.log import Log
from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.lease import process_exists
from mnist_serving.options import DEFAULT_PORT, ServerOptions
from mnist_serving.sockets import bind_listener, give_listener, take_listener

# The points of a deploy, in order; ``on_step`` is called as each is reached.
CANDIDATE_READY = "candidate ready on its private port"
SOCKET_HANDED_OVER = "public socket handed to the candidate"
RECORDED = "candidate recorded as the endpoint"
DRAINING = "previous version draining"
DEPLOY_STEPS = (CANDIDATE_READY, SOCKET_HANDED_OVER, RECORDED, DRAINING)


def _alive(pid: int) -> bool:
    """True for a running server process; reaps it if it is our exited child."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    if not process_exists(pid):
        return False
    with contextlib.suppress(OSError):  # a pid reused by another program is not our server
        return b"mnist_serving" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


@dataclass(frozen=True)
class _Running:
    """A server process found in /proc, from its command line."""

    pid: int
    model_dir: str
    handoff_socket: str

    @property
    def version(self) -> str:
        return Path(self.model_dir).name


@dataclass
class _Started:
    """What the deployer holds for its candidate: the process (whose stdin is the lease), and
    the public socket when it bound one itself (first deploy)."""

    process: subprocess.Popen
    old: Endpoint | None
    public: socket.socket | None


DEFAULT_OPTIONS = ServerOptions()


class LocalEndpoint:
    """A ``DeployBackend``: one endpoint (host, port) whose server processes are managed through
    ``state_dir``, started with ``options`` and, if given, logging requests to ``request_log``.
    ``port=0`` picks a free port on the first deploy and keeps it after. ``on_step`` is called
    with each of ``DEPLOY_STEPS`` as a deploy reaches it (progress; fault-injection tests)."""

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
        on_step: Callable[[str], None] = lambda step: None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.host, self.port = host, port
        self.options, self.request_log = options, request_log
        self.startup_timeout, self.stop_timeout, self.drain_seconds = startup_timeout, stop_timeout, drain_seconds
        self.lock_timeout = lock_timeout
        self.log, self.on_step = log, on_step
        self.state_file = self.state_dir / "endpoint.json"

    # -- what runs -------------------------------------------------------------------------

    def current(self) -> Endpoint | None:
        """The recorded endpoint, if its process runs."""
        endpoint = self._recorded()
        return endpoint if endpoint and _alive(endpoint.pid) else None

    def serving(self) -> list[ServerProcess]:
        """Every server process of this endpoint. Reconciles first (stops servers not recorded,
        restarts the recorded version if its process died) unless a deploy is under way."""
        with self._exclusive(wait=False) as locked:
            if locked:
                self._reconcile(repair=True)
            recorded = self._recorded()
            roles = {recorded.pid: "serving"} if recorded else {}
            other = "unrecorded" if locked else "candidate or draining (a deploy is under way)"
            return [
                ServerProcess(f"pid {server.pid}", server.version, roles.get(server.pid, other))
                for server in self._running()
            ]

    # -- deploying -------------------------------------------------------------------------

    @contextlib.contextmanager
    def candidate(self, version_dir: Path, version: str) -> Iterator[Candidate]:
        with self._exclusive():
            self._reconcile(repair=False)
            old = self.current()
            if old and (old.host != self.host or self.port not in (0, old.port)):
                raise DeployError(
                    f"an endpoint already runs at {old.url} (pid {old.pid}), not at {self.host}:{self.port}; "
                    "stop it first or deploy to the same host and port"
                )
            with self._beside(Path(version_dir), str(version), old) as candidate:
                yield candidate

    def promote(self, candidate: Candidate) -> Endpoint:
        started: _Started = candidate.handle
        listener = started.public or self._take_over(started.old)
        try:
            give_listener(Path(candidate.endpoint.handoff_socket), listener)
        except OSError as exc:
            raise DeployError(f"version {candidate.version} did not take the public socket ({exc})") from exc
        finally:
            if started.public is None:
                listener.close()  # our copy of the socket taken from the old server
        self._step(SOCKET_HANDED_OVER)
        self._write(candidate.endpoint)
        candidate.promoted_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._step(RECORDED)
        self.log(f"version {candidate.version} serves at {candidate.endpoint.url} (pid {candidate.endpoint.pid})")
        if started.old:
            self._stop(started.old, drain=True)
        return candidate.endpoint

    def deploy(self, version_dir: Path, version: str) -> Endpoint:
        with self.candidate(version_dir, version) as candidate:
            return self.promote(candidate)

    def stop(self) -> Endpoint | None:
        """Stop every server of the endpoint; returns the recorded one, if one ran."""
        with self._exclusive():
            self._reconcile(repair=False)
            endpoint = self.current()
            if endpoint:
                self._stop(endpoint)
                self.log(f"stopped the endpoint at {endpoint.url} (version {endpoint.version}, pid {endpoint.pid})")
            self.state_file.unlink(missing_ok=True)
            return endpoint

    @contextlib.contextmanager
    def _beside(
        self, version_dir: Path, version: str, old: Endpoint | None, port: int | None = None
    ) -> Iterator[Candidate]:
        """With the lock held: start the version on a private port beside ``old``, or, with
        nothing serving, bind the public socket (``port``, default ours) now: a port in use
        fails before any start."""
        public = None if old else self._bind(self.port if port is None else port)
        try:
            port = old.port if old else public.getsockname()[1]
            candidate = self._start(version_dir, version, port, old, public)
            try:
                self._wait_ready(candidate)
                self._step(CANDIDATE_READY)
                yield candidate
            finally:
                if candidate.promoted_at is None:
                    self._stop(candidate.endpoint)
                    self.log(f"version {candidate.version} was not promoted; stopped it (pid {candidate.endpoint.pid})")
        finally:
            if public is not None:
                public.close()

    def _start(
        self, model_dir: Path, version: str, port: int, old: Endpoint | None, public: socket.socket | None
    ) -> Candidate:
        probe = bind_listener("127.0.0.1", 0)
        handoff = self.state_dir / f"handoff-{uuid.uuid4().hex[:12]}.sock"
        log_file = self.state_dir / f"server-v{version}.log"
        command = [sys.executable, "-m", "mnist_serving", "--model-dir", str(model_dir), "--fd", str(probe.fileno())]
        command += ["--handoff-socket", str(handoff), "--candidate", "--record", str(self.state_file), "--lease-stdin"]
        command += self.options.argv()
        if self.request_log is not None:
            command += ["--request-log-dir", str(self.request_log)]
        try:
            with log_file.open("ab") as out:
                process = subprocess.Popen(
                    command,
                    pass_fds=(probe.fileno(),),
                    stdin=subprocess.PIPE,  # the lease: closes when this process ends, however it ends
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # keeps serving after the deploying process exits
                )
            probe_port = probe.getsockname()[1]
        finally:
            probe.close()  # the server holds its own copy
        host = f"[{self.host}]" if ":" in self.host else self.host
        endpoint = Endpoint(
            url=f"http://{host}:{port}",
            host=self.host,
            port=port,
            pid=process.pid,
            version=version,
            model_dir=str(model_dir),
            handoff_socket=str(handoff),
            log_file=str(log_file),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.log(f"started version {version} beside production (pid {process.pid}, private port {probe_port})")
        return Candidate(version, f"http://127.0.0.1:{probe_port}", endpoint, _Started(process, old, public))

    def _wait_ready(self, candidate: Candidate) -> None:
        process, endpoint = candidate.handle.process, candidate.endpoint
        url = f"{candidate.url}/v2/models/{MODEL_NAME}/ready"  # the model answers, not just the process
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DeployError(
                    f"version {endpoint.version} exited with code {process.returncode} before it was ready; "
                    f"the endpoint keeps serving what it served. Last log lines:\n{_tail(endpoint.log_file)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    self.log(f"version {endpoint.version} is ready at {candidate.url}")
                    return
            time.sleep(0.2)
        raise DeployError(
            f"version {endpoint.version} was not ready after {self.startup_timeout:.0f}s and was stopped; "
            f"the endpoint keeps serving what it served. Last log lines:\n{_tail(endpoint.log_file)}"
        )

    # -- reconciling -----------------------------------------------------------------------

    def _running(self) -> list[_Running]:
        """Every live server process started for this endpoint: its command line names our record."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                args = cmdline.read_bytes().decode(errors="replace").split("\0")
                if "mnist_serving" in args and _value(args, "--record") == str(self.state_file):
                    pid = int(cmdline.parent.name)
                    if _alive(pid):
                        found.append(_Running(pid, _value(args, "--model-dir"), _value(args, "--handoff-socket")))
        return sorted(found, key=lambda server: server.pid)

    def _reconcile(self, repair: bool) -> None:
        """With the lock held: stop every server not recorded; if the recorded one died, clear
        the record or, with ``repair``, start the recorded version again (it passed its tests)."""
        recorded = self._recorded()
        dead = recorded is not None and not _alive(recorded.pid)
        if dead:
            self.log(f"the recorded version {recorded.version} (pid {recorded.pid}) is not running")
            self.state_file.unlink(missing_ok=True)
        for server in self._running():
            if dead or recorded is None or server.pid != recorded.pid:
                self.log(f"stopping pid {server.pid} (version {server.version}): it is not the recorded server")
                self._stop(_as_endpoint(server, recorded), drain=not dead and recorded is not None)
        if dead and repair:
            self.log(f"restarting version {recorded.version}, the recorded one")
            with self._beside(Path(recorded.model_dir), recorded.version, None, recorded.port) as candidate:
                self.promote(candidate)

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, wait: bool = True) -> Iterator[bool]:
        """Hold the state folder's deploy lock (yields True); wait for another deploy or stop to
        finish, or with ``wait=False`` yield False at once if one is under way."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "deploy.lock").open("a") as lock:
            deadline, waiting = time.monotonic() + self.lock_timeout, False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
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
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _step(self, step: str) -> None:
        self.on_step(step)

    def _recorded(self) -> Endpoint | None:
        with contextlib.suppress(FileNotFoundError):
            return Endpoint(**json.loads(self.state_file.read_text()))
        return None

    def _bind(self, port: int) -> socket.socket:
        try:
            return bind_listener(self.host, port)
        except OSError as exc:
            raise DeployError(
                f"cannot listen on {self.host}:{port} ({exc.strerror}): another process uses the port and "
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

    def _stop(self, endpoint: Endpoint, drain: bool = False) -> None:
        """SIGTERM (finish requests in flight, then exit), SIGKILL after stop_timeout. With
        ``drain``, SIGUSR1 first: the successor takes all new connections while this one
        answers the ones it holds."""
        if drain:
            with contextlib.suppress(ProcessLookupError):
                os.kill(endpoint.pid, signal.SIGUSR1)
            self._step(DRAINING)
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
        if endpoint.handoff_socket:
            Path(endpoint.handoff_socket).unlink(missing_ok=True)

    def _write(self, endpoint: Endpoint) -> None:
        write_text_atomic(self.state_file, json.dumps(asdict(endpoint), indent=2))


def _value(args: list[str], flag: str) -> str:
    """The value after ``flag`` in a command line, or ''."""
    return args[args.index(flag) + 1] if flag in args[:-1] else ""


def _as_endpoint(server: _Running, like: Endpoint | None) -> Endpoint:
    """An unrecorded server as an ``Endpoint`` at the recorded address (the one socket it can hold)."""
    return Endpoint(
        url=like.url if like else "",
        host=like.host if like else "",
        port=like.port if like else 0,
        pid=server.pid,
        version=server.version,
        model_dir=server.model_dir,
        handoff_socket=server.handoff_socket,
        log_file="",
        started_at="",
    )


def _tail(path: str, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"

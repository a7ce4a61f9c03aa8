"""Running it: the emulator served on 127.0.0.1 by its own thread, and clients configured for it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp.web
import kmock
import kubernetes
import yaml

from .api import KubernetesApiEmulator
from .objects import Obj, T, sort_key


class RunningEmulator:
    """The emulator served on 127.0.0.1 (random port) by its own event loop and thread.

    Served with aiohttp's low-level server rather than ``kmock.Server``: kmock.Server also
    patches aiohttp's DNS resolver process-wide and raises when two emulators stop out of
    order. ``emulator`` lives on the loop thread: from other threads, use the methods here."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: KubernetesApiEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="k8s-emulator", daemon=True)

    def start(self, timeout: float = 30) -> RunningEmulator:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError("the Kubernetes emulator did not start") from self._error
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the server and join its thread (idempotent); raise if it did not stop cleanly."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the Kubernetes emulator thread did not stop")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        emulator = KubernetesApiEmulator()
        async with emulator:
            # handler_cancellation: a watch whose client has gone is cancelled, not left waiting.
            server = aiohttp.web.Server(emulator, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2)
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=2)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url, self.emulator = f"http://{host}:{port}", emulator
                self._ready.set()
                await self._stop.wait()
                await emulator.close_watches()
            finally:
                await runner.cleanup()

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client side -----------------------------------------------------------------------

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        """A client for this server (plain HTTP, no auth). Close it, or use it in ``with``."""
        return kubernetes.client.ApiClient(self.configuration())

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points here (no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
            "current-context": "kmock",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    # -- server side, from any thread ------------------------------------------------------

    def call(self, function: Callable[[KubernetesApiEmulator], Awaitable[T]], timeout: float = 10) -> T:
        """Run ``await function(emulator)`` on the emulator's loop and return its result."""
        assert self._loop is not None and self.emulator is not None, "not started"
        emulator = self.emulator
        return asyncio.run_coroutine_threadsafe(function(emulator), self._loop).result(timeout)

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of ``resource`` ("batch/v1/jobs", "v1/pods", ...)."""
        wanted = kmock.resource(resource)

        async def snapshot(emulator: KubernetesApiEmulator) -> list[Obj]:
            async with emulator._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (res, ns, _), obj in emulator.objects.items()
                    if res == wanted and namespace in (None, ns) and not obj.deleted
                ]

        return sorted(self.call(snapshot), key=sort_key)

    def requests(self) -> list[str]:
        """Every request served so far, as "METHOD /path?query"."""

        async def lines(emulator: KubernetesApiEmulator) -> list[str]:
            return [f"{r.method.value} {r.url.path_qs}" for r in emulator]

        return self.call(lines)

    def set_pod_log(self, namespace: str, pod: str, provider: Callable[[], str]) -> None:
        async def register(emulator: KubernetesApiEmulator) -> None:
            emulator.pod_logs[namespace, pod] = provider

        self.call(register)


@contextlib.contextmanager
def running_emulator() -> Iterator[RunningEmulator]:
    """``with running_emulator() as cluster:`` an API server until the block ends."""
    cluster = RunningEmulator().start()
    try:
        yield cluster
    finally:
        cluster.stop()

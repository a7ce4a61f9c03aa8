"""What the simulated controllers share: a thread that watches one resource."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Self

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from .objects import Obj
from .running import RunningEmulator


class Controller:
    """A thread that watches one resource through the official client, reconnecting every
    second (so it notices ``stop()``) from the last resourceVersion it saw."""

    def __init__(self, cluster: RunningEmulator, namespace: str | None) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.api = cluster.api_client()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected failures, for assertions and debugging

    def _list_call(self) -> tuple[Callable, tuple]:
        raise NotImplementedError

    def _on_event(self, kind: str, obj: Obj) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._spawn(self._watch, "watch")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.api.close()
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            raise RuntimeError(f"{type(self).__name__} threads did not stop: {alive}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # keep the failure visible instead of losing it in a thread
            self.errors.append(f"{target.__name__}: {exc!r}")

    def _watch(self) -> None:
        list_call, args = self._list_call()
        revision = None
        while not self._stop.is_set():
            try:
                stream = kubernetes.watch.Watch().stream(
                    list_call, *args, resource_version=revision, timeout_seconds=1, deserialize=False
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        revision = None  # expired: start again from the current state
                        break
                    revision = event["object"]["metadata"]["resourceVersion"]
                    self._on_event(event["type"], event["object"])
            except ApiException as exc:
                if exc.status == 410:
                    revision = None
                else:
                    self.errors.append(f"watch: {exc.status} {exc.reason}")
                    self._stop.wait(0.5)
            except (urllib3.exceptions.HTTPError, OSError):  # a dropped connection: reconnect
                self._stop.wait(0.2)

    def _update_status(self, read: Callable, replace: Callable, name: str, mutate: Callable[[Obj], Any]) -> bool:
        """Read-modify-replace an object's status as controllers do (``mutate`` gets the whole
        object and changes its status, or returns False to leave it), retrying on 409
        conflicts. False if the object is gone or left as it was."""
        for _ in range(20):
            try:
                obj = json.loads(read(name, self.namespace, _preload_content=False).data)
                obj["status"] = obj.get("status") or {}
                if mutate(obj) is False:
                    return False
                replace(name, self.namespace, obj)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
        raise RuntimeError(f"could not update the status of {name}: conflicts kept coming")

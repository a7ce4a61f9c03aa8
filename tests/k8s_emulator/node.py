"""A node that runs Jobs as local processes, as the Job controller and a kubelet would."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException

from .controllers import Controller
from .objects import Obj, now_rfc3339
from .running import RunningEmulator


@dataclass
class PodRun:
    """One pod the node ran (or tried to): what ran, with what, and what came out."""

    namespace: str
    job: str
    pod: str
    container: str
    image: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the container's own env, resolved
    cwd: Path | None = None
    log_path: Path | None = None
    pid: int | None = None
    not_honoured: list[str] = field(default_factory=list)  # parts of the spec ignored here
    returncode: int | None = None
    reason: str | None = None  # Completed, Error, StartError, DeadlineExceeded, Killed
    waiting: str | None = None  # why it has not started (CreateContainerConfigError, ...)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def output(self) -> str:
        """stdout and stderr, interleaved, as ``kubectl logs`` would show them."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


class _ContainerNotReady(Exception):
    """The kubelet cannot start the container yet (a referenced object is missing)."""


class SimulatedNode(Controller):
    """Runs every new Job in ``namespace`` the way the Job controller and a kubelet would,
    except that the container is a local process: ``command`` + ``args`` of the pod's
    single container (without ``command``, ``entrypoint`` + ``args``, or ``entrypoint`` +
    ``cmd`` without either: the image's ENTRYPOINT and CMD, empty by default), from
    ``workdir`` (or the container's ``workingDir`` if it exists here), with ``base_env``
    (standing in for the image's ENV; default: this process's environment) plus the
    container's env.

    Env it honours: literal ``value`` with ``$(VAR)`` expansion; ``valueFrom`` ``configMapKeyRef``
    and ``secretKeyRef`` (read from the emulator; a missing non-optional one keeps the pod
    Pending with ``CreateContainerConfigError`` until it appears, as a kubelet does);
    ``fieldRef`` for metadata.name/namespace/uid, metadata.labels['k'] /
    annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP/hostIP (127.0.0.1);
    ``envFrom`` ``configMapRef`` / ``secretRef`` with ``prefix``. Not honoured (listed in
    ``PodRun.not_honoured``): ``resourceFieldRef``, other fieldRef paths, volumes and mounts,
    a ``workingDir`` that does not exist here, containers after the first.

    Status as the controllers write it: the pod is created (generateName ``<job>-``, labels
    ``job-name``, ``controller-uid`` and their ``batch.kubernetes.io/`` forms, an owner
    reference) Pending, then Running with the Job ``active: 1``, then Succeeded / Failed; the
    Job gets ``succeeded: 1`` and a ``Complete`` condition, or, once failures exceed
    ``backoffLimit`` (default 6; retried at once, no backoff delay), ``failed: n`` and a
    ``Failed`` condition (``BackoffLimitExceeded``; ``DeadlineExceeded`` after
    ``activeDeadlineSeconds``). A deleted Job has its process terminated. A named service
    account (other than "default") must exist, or no pod is created (admission would refuse
    it) until it does. ``stop()`` terminates every process it started (SIGTERM to its
    process group, SIGKILL after ``grace_s``)."""

    def __init__(
        self,
        cluster: RunningEmulator,
        namespace: str,
        workdir: Path,
        log_dir: Path,
        base_env: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] = (),
        cmd: Sequence[str] = (),
        node_name: str = "simulated-node",
        grace_s: float = 10,
    ) -> None:
        super().__init__(cluster, namespace)
        self.entrypoint, self.cmd = list(entrypoint), list(cmd)
        self.workdir, self.log_dir, self.node_name, self.grace_s = Path(workdir), Path(log_dir), node_name, grace_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.batch, self.core = kubernetes.client.BatchV1Api(self.api), kubernetes.client.CoreV1Api(self.api)
        self._lock = threading.Lock()
        self._runs: list[PodRun] = []
        self._handled: set[str] = set()
        self._deleted: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._processes: list[subprocess.Popen] = []

    @property
    def runs(self) -> list[PodRun]:
        with self._lock:
            return list(self._runs)

    def runs_of(self, job: str) -> list[PodRun]:
        return [run for run in self.runs if run.job == job]

    def finished(self, job: str) -> bool:
        """Whether the node has finished ``job`` (succeeded, given up, or seen it deleted)."""
        with self._lock:
            done = self._done.get(job)
        return done is not None and done.is_set()

    def wait_for_job(self, job: str, timeout: float) -> list[PodRun]:
        """Block until the node has finished ``job`` (succeeded or given up); its pod runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self._done.get(job)
            if done is not None and done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return self.runs_of(job)
            time.sleep(0.1 if done is None else 0)
        tail = "\n".join(run.output[-2000:] for run in self.runs_of(job))
        raise TimeoutError(f"job {job} not finished after {timeout} s; output so far:\n{tail}")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            _terminate(process, self.grace_s)
        super().stop()

    def _list_call(self) -> tuple[Callable, tuple]:
        return self.batch.list_namespaced_job, (self.namespace,)

    def _on_event(self, kind: str, job: Obj) -> None:
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        if kind == "DELETED":
            with self._lock:
                if uid in self._deleted:
                    self._deleted[uid].set()
            return
        finished = any(c.get("type") in ("Complete", "Failed") for c in (job.get("status") or {}).get("conditions", []))
        with self._lock:
            if uid in self._handled or finished or (job.get("spec") or {}).get("suspend"):
                return
            self._handled.add(uid)
            self._deleted[uid] = threading.Event()
            self._done[name] = threading.Event()
        self._spawn(self._run_job, f"job-{name}", job)

    # -- the Job controller ----------------------------------------------------------------

    def _run_job(self, job: Obj) -> None:
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        spec = job.get("spec") or {}
        backoff_limit, deadline_s = spec.get("backoffLimit", 6), spec.get("activeDeadlineSeconds")
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        failures, started = 0, now_rfc3339()
        try:
            while not self._stop.is_set():
                run = self._run_pod(job, deadline)
                if run is None or self._deleted[uid].is_set() or self._stop.is_set():
                    return
                if run.returncode == 0:
                    self._set_job_status(name, started, failures, "Complete", "CompletionsReached")
                    return
                failures += 1
                if run.reason == "DeadlineExceeded":
                    self._set_job_status(name, started, failures, "Failed", "DeadlineExceeded")
                    return
                if failures > backoff_limit:
                    self._set_job_status(name, started, failures, "Failed", "BackoffLimitExceeded")
                    return
                self._set_job_status(name, started, failures)
        finally:
            self._done[name].set()

    def _set_job_status(
        self, name: str, started: str, failures: int, outcome: str | None = None, reason: str = ""
    ) -> None:
        def mutate(job: Obj) -> None:
            status = job["status"]
            status.update(startTime=started, ready=0)
            status.pop("active", None)  # omitempty: 0 is absent
            if failures:
                status["failed"] = failures
            if outcome is None:
                return
            now = now_rfc3339()
            if outcome == "Complete":
                status.update(succeeded=1, completionTime=now)
            messages = {
                "CompletionsReached": "Reached expected number of succeeded pods",
                "BackoffLimitExceeded": "Job has reached the specified backoff limit",
                "DeadlineExceeded": "Job was active longer than specified deadline",
            }
            condition = {"type": outcome, "status": "True", "reason": reason, "message": messages[reason]}
            status["conditions"] = [*status.get("conditions", []), {**condition, "lastProbeTime": now}]
            status["conditions"][-1]["lastTransitionTime"] = now

        self._write_job_status(name, mutate)

    def _mark_job_active(self, name: str, ready: bool) -> None:
        def mutate(job: Obj) -> None:
            job["status"].update(startTime=job["status"].get("startTime", now_rfc3339()), active=1, ready=int(ready))

        self._write_job_status(name, mutate)

    def _write_job_status(self, name: str, mutate: Callable[[Obj], None]) -> None:
        self._update_status(
            self.batch.read_namespaced_job_status, self.batch.replace_namespaced_job_status, name, mutate
        )

    # -- the kubelet -------------------------------------------------------------------------

    def _run_pod(self, job: Obj, deadline: float | None) -> PodRun | None:
        """One attempt: create the pod, run its container, report. None if cancelled."""
        uid = job["metadata"]["uid"]
        pod = self._create_pod(job)
        if pod is None:
            return None
        container = pod["spec"]["containers"][0]
        job_name, pod_name = job["metadata"]["name"], pod["metadata"]["name"]
        run = PodRun(self.namespace or "", job_name, pod_name, container["name"], container.get("image", ""))
        with self._lock:
            self._runs.append(run)
        try:
            self._mark_job_active(job_name, ready=False)
            process = self._start(pod, container, run, uid)
            if process is None:
                return None if run.reason is None else run
            self._mark_job_active(job_name, ready=True)
            self._wait(process, run, uid, deadline)
            return run
        finally:
            self._report_pod(run)
            run.finished.set()

    def _create_pod(self, job: Obj) -> Obj | None:
        meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
        account = template["spec"].get("serviceAccountName")
        while account not in (None, "default") and not self._exists(self.core.read_namespaced_service_account, account):
            # Admission would refuse the pod; the Job controller retries.
            if self._stop.wait(1) or self._deleted[meta["uid"]].is_set():
                return None
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "job-name": meta["name"],
        }
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "labels": labels,
                "annotations": (template.get("metadata") or {}).get("annotations", {}),
                "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**template["spec"], "nodeName": self.node_name},
        }
        response = self.core.create_namespaced_pod(self.namespace, body, _preload_content=False)
        return json.loads(response.data)

    def _exists(self, read: Callable, name: str) -> bool:
        try:
            read(name, self.namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _start(self, pod: Obj, container: Obj, run: PodRun, uid: str) -> subprocess.Popen | None:
        """Start the container's process once its config resolves; None if it never did."""
        while True:
            try:
                run.env = self._container_env(pod, container, run)
                break
            except _ContainerNotReady as exc:
                if run.waiting is None:
                    run.waiting = str(exc)
                    self._pod_status(run, "Pending", waiting=("CreateContainerConfigError", str(exc)))
                if self._stop.wait(1) or self._deleted[uid].is_set():
                    return None
        run.waiting = None
        command, args = container.get("command"), container.get("args")
        argv = [*command, *(args or [])] if command else [*self.entrypoint, *(args or self.cmd)]
        run.argv = [_expand(part, run.env) for part in argv]
        run.cwd = self._working_dir(container, run)
        self._note_not_honoured(pod, container, run)
        run.log_path = self.log_dir / f"{run.pod}.log"
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cluster.set_pod_log(run.namespace, run.pod, lambda: run.output)
        if not run.argv:
            return self._start_error(run, "no command, no args and no image entrypoint/cmd given to the node")
        if self._stop.is_set():
            return None
        try:
            with run.log_path.open("wb") as log:
                process = subprocess.Popen(
                    run.argv,
                    cwd=run.cwd,
                    env={**self.base_env, **run.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            return self._start_error(run, f"failed to start {run.argv[0]!r}: {exc}")
        run.pid = process.pid
        with self._lock:
            self._processes.append(process)
        self._pod_status(run, "Running")
        return process

    def _start_error(self, run: PodRun, message: str) -> None:
        run.log_path.write_text(message + "\n")
        run.returncode, run.reason = 128, "StartError"
        return None

    def _wait(self, process: subprocess.Popen, run: PodRun, uid: str, deadline: float | None) -> None:
        while process.poll() is None:
            if self._stop.is_set() or self._deleted[uid].is_set():
                _terminate(process, self.grace_s)
                run.reason = "Killed"
            elif deadline is not None and time.monotonic() > deadline:
                _terminate(process, self.grace_s)
                run.reason = "DeadlineExceeded"
            else:
                time.sleep(0.2)
        run.returncode = process.returncode
        run.reason = run.reason or ("Completed" if process.returncode == 0 else "Error")

    def _report_pod(self, run: PodRun) -> None:
        if run.returncode is None:
            return
        phase = "Succeeded" if run.returncode == 0 else "Failed"
        with contextlib.suppress(ApiException):  # the pod may be gone with its Job
            self._pod_status(run, phase, terminated=(run.returncode, run.reason or ""))

    def _pod_status(
        self,
        run: PodRun,
        phase: str,
        waiting: tuple[str, str] | None = None,
        terminated: tuple[int, str] | None = None,
    ) -> None:
        now = now_rfc3339()

        def mutate(pod: Obj) -> None:
            status = pod["status"]
            started = status.get("startTime", now)
            if waiting:
                state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            elif terminated:
                state = {"terminated": {"exitCode": terminated[0], "reason": terminated[1], "finishedAt": now}}
                state["terminated"]["startedAt"] = started
            else:
                state = {"running": {"startedAt": now}}
            running = phase == "Running"
            status.update(phase=phase, startTime=started, hostIP="127.0.0.1", podIP="127.0.0.1")
            status["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": str(running), "lastTransitionTime": now},
            ]
            status["containerStatuses"] = [
                {
                    "name": run.container,
                    "image": run.image,
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                }
            ]

        read, replace = self.core.read_namespaced_pod_status, self.core.replace_namespaced_pod_status
        self._update_status(read, replace, run.pod, mutate)

    def _working_dir(self, container: Obj, run: PodRun) -> Path:
        wanted = container.get("workingDir")
        if wanted and Path(wanted).is_dir():
            return Path(wanted)
        if wanted:
            run.not_honoured.append(f"workingDir {wanted} (not on this machine; ran in {self.workdir})")
        return self.workdir

    def _note_not_honoured(self, pod: Obj, container: Obj, run: PodRun) -> None:
        for volume in pod["spec"].get("volumes") or []:
            run.not_honoured.append(f"volume {volume.get('name')}")
        for mount in container.get("volumeMounts") or []:
            run.not_honoured.append(f"volumeMount {mount.get('name')} at {mount.get('mountPath')}")
        for extra in [*pod["spec"]["containers"][1:], *(pod["spec"].get("initContainers") or [])]:
            run.not_honoured.append(f"container {extra.get('name')} (only the first container runs)")

    # -- the container's environment -------------------------------------------------------

    def _container_env(self, pod: Obj, container: Obj, run: PodRun) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self._env_source(source).items():
                env[prefix + key] = value
        for var in container.get("env") or []:  # later entries win, as in a container
            if "valueFrom" in (var or {}):
                value = self._value_from(pod, var["name"], var["valueFrom"], run)
                if value is not None:
                    env[var["name"]] = value
            else:
                env[var["name"]] = _expand(var.get("value") or "", env)
        return env

    def _env_source(self, source: Obj) -> dict[str, str]:
        if "configMapRef" in source:
            ref, read, decode = source["configMapRef"], self.core.read_namespaced_config_map, False
        elif "secretRef" in source:
            ref, read, decode = source["secretRef"], self.core.read_namespaced_secret, True
        else:
            return {}
        data = self._read_data(read, ref["name"], decode, ref.get("optional", False))
        return data or {}

    def _value_from(self, pod: Obj, name: str, source: Obj, run: PodRun) -> str | None:
        for kind, read, decode in (
            ("configMapKeyRef", self.core.read_namespaced_config_map, False),
            ("secretKeyRef", self.core.read_namespaced_secret, True),
        ):
            if kind in source:
                ref = source[kind]
                data = self._read_data(read, ref["name"], decode, ref.get("optional", False))
                if data is not None and ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise _ContainerNotReady(f"couldn't find key {ref['key']} in {kind[:-6]} {ref['name']}")
        if "fieldRef" in source:
            value = _field_ref(pod, source["fieldRef"]["fieldPath"])
            if value is not None:
                return value
        run.not_honoured.append(f"env {name}: valueFrom {json.dumps(source)}")
        return None

    def _read_data(self, read: Callable, name: str, decode: bool, optional: bool) -> dict[str, str] | None:
        try:
            obj = json.loads(read(name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return None
            if exc.status == 404:
                raise _ContainerNotReady(f'{"secret" if decode else "configmap"} "{name}" not found') from exc
            raise
        data = obj.get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()} if decode else dict(data)


def _field_ref(pod: Obj, path: str) -> str | None:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    return (meta.get(m[1]) or {}).get(m[2]) if m else None


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )


def _terminate(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; reap the process."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

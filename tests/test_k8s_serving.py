"""The serving deployer's Kubernetes backend (blue/green behind one public Service, one deploy at
a time through a Lease), over real HTTP against an in-memory Kubernetes API (kmock,
tests/k8s_emulator/) whose simulated Deployment controller sets rollout status and creates and
deletes the Deployments' pods. The backend is chosen by configuration (the deployer's
``backend``, ``$MNIST_SERVING_BACKEND`` on a cluster).

Not covered by any test here (no cluster): a real API server (admission, RBAC, its own
optimistic-concurrency and precondition checks: the emulator's stand in), the kubelet (pods never
start; probes never run; pods are deleted at once, without draining), Service routing (no
endpoints or kube-proxy: that the public Service's selector change moves traffic atomically is
Kubernetes' promise, not verified), and calling any in-cluster URL, so the deployment tests
cannot run against these endpoints."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest
from k8s_emulator import SimulatedDeploymentController, running_emulator
from kubernetes import client

from mnist_delivery.backend import DeployError
from mnist_delivery.k8s_endpoint import (
    MODEL_DIR_ANNOTATION,
    PROMOTED_ANNOTATION,
    TRACK_LABEL,
    VERSION_ANNOTATION,
    KubernetesEndpoint,
    ServingSpec,
    deployment,
    pod_disruption_budget,
    service,
)
from resources import ModelDeployer

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

NAMESPACE = "mnist"
SPEC = ServingSpec(namespace=NAMESPACE, request_log=PurePosixPath("/data/serving/requests"))
LEASES = "coordination.k8s.io/v1/leases"
PUBLIC_URL = "http://mnist-serving.mnist.svc.cluster.local:8080"


@pytest.fixture
def cluster(tmp_path):
    with running_emulator() as emulator:
        api = emulator.api_client()
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        with SimulatedDeploymentController(emulator, NAMESPACE) as controller:
            yield emulator, controller, emulator.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        api.close()


@pytest.fixture
def endpoints(cluster):
    """``make(**overrides)``: a KubernetesEndpoint on the emulator (its own API client), with
    short timeouts and no drain delay; ``make.logs[i]`` is the i-th one's log."""
    emulator = cluster[0]
    clients = []

    def make(**overrides) -> KubernetesEndpoint:
        api = emulator.api_client()
        clients.append(api)
        logs: list[str] = []
        make.logs.append(logs)
        settings = {"rollout_timeout": 5, "lock_timeout": 30, "lease_duration_s": 2, "drain_s": 0, "log": logs.append}
        return KubernetesEndpoint(api, SPEC, **{**settings, **overrides})

    make.logs = []
    yield make
    for api in clients:
        api.close()


def _object(emulator, resource: str, name: str) -> dict | None:
    found = [o for o in emulator.objects(resource, NAMESPACE) if o["metadata"]["name"] == name]
    return found[0] if found else None


def _public(emulator) -> tuple[str, dict]:
    """The color the public Service selects and its annotations."""
    public = _object(emulator, "v1/services", "mnist-serving")
    return public["spec"]["selector"][TRACK_LABEL], public["metadata"].get("annotations", {})


def _replicas(emulator, color: str) -> int:
    return _object(emulator, "apps/v1/deployments", f"mnist-serving-{color}")["spec"]["replicas"]


def _pods(emulator) -> dict[str, str]:
    """Pod name: the version it serves, for the endpoint's pods."""
    return {
        pod["metadata"]["name"]: pod["metadata"]["annotations"][VERSION_ANNOTATION]
        for pod in emulator.objects("v1/pods", NAMESPACE)
    }


def _eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for the simulated controller to catch up (it acts 0.2 s after a change)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the simulated controller did not catch up"
        time.sleep(0.05)


def _served_dir(emulator, color: str) -> str:
    found = _object(emulator, "apps/v1/deployments", f"mnist-serving-{color}")
    command = found["spec"]["template"]["spec"]["containers"][0]["command"]
    return command[command.index("--model-dir") + 1]


def test_a_candidate_is_ready_beside_production_and_serves_publicly_only_once_promoted(cluster, endpoints):
    """Blue serves 1; the candidate 2 rolls out on green (every replica available, its own
    Service and PDB) while the public Service still selects blue and records 1; ``serving``
    lists both colors' pods with their roles. Promote switches the selector to green, records
    2 with its folder and time, and scales blue to 0.
    Not covered: that requests really reach green only after the switch (no Service routing)."""
    emulator, controller, _ = cluster
    endpoint = endpoints()
    assert endpoint.current() is None and endpoint.serving() == []
    first = endpoint.deploy("/models/mnist/1", "1")
    assert (first.url, first.version, _public(emulator)[0]) == (PUBLIC_URL, "1", "blue")

    with endpoint.candidate("/models/mnist/2", "2") as candidate:
        assert candidate.url == "http://mnist-serving-green.mnist.svc.cluster.local:8080"
        assert candidate.endpoint.url == PUBLIC_URL
        green = _object(emulator, "apps/v1/deployments", "mnist-serving-green")
        assert green["status"]["availableReplicas"] == 2 and ("mnist-serving-green", 1) in controller.rollouts
        green_service = _object(emulator, "v1/services", "mnist-serving-green")
        assert green_service["spec"]["selector"] == {"app.kubernetes.io/name": "mnist-serving", TRACK_LABEL: "green"}
        assert "app.kubernetes.io/name" not in green_service["metadata"]["labels"]  # scraped through the public one
        assert _object(emulator, "policy/v1/poddisruptionbudgets", "mnist-serving-green") is not None
        track, annotations = _public(emulator)
        assert (track, annotations[VERSION_ANNOTATION]) == ("blue", "1")
        assert endpoint.current().version == "1"
        roles = sorted((p.version, p.role) for p in endpoint.serving())
        assert roles == [("1", "serving"), ("1", "serving"), ("2", "candidate"), ("2", "candidate")]

        promoted = endpoint.promote(candidate)

    assert (promoted.url, promoted.version, promoted.model_dir) == (PUBLIC_URL, "2", "/models/mnist/2")
    track, annotations = _public(emulator)
    assert (track, annotations[VERSION_ANNOTATION], annotations[MODEL_DIR_ANNOTATION]) == (
        "green",
        "2",
        "/models/mnist/2",
    )
    assert annotations[PROMOTED_ANNOTATION] == promoted.started_at == candidate.promoted_at
    assert endpoint.current() == promoted
    assert _replicas(emulator, "blue") == 0 and _replicas(emulator, "green") == 2
    roles = sorted((p.version, p.role) for p in endpoint.serving())
    assert roles in (  # blue's pods drain, then are gone
        [("1", "draining"), ("1", "draining"), ("2", "serving"), ("2", "serving")],
        [("2", "serving"), ("2", "serving")],
    )
    _eventually(lambda: sorted(_pods(emulator).values()) == ["2", "2"])
    assert emulator.objects(LEASES, NAMESPACE) == []


def test_a_discarded_candidate_leaves_production_untouched(cluster, endpoints):
    """A candidate block left without promote (its tests failed: an exception) scales the
    candidate's color to 0; the public Service is not written at all; the Lease is released.
    Not covered: the candidate pods' graceful termination (the emulator deletes them at once)."""
    emulator, _, _ = cluster
    endpoint = endpoints()
    endpoint.deploy("/models/mnist/1", "1")
    before = _object(emulator, "v1/services", "mnist-serving")
    with pytest.raises(AssertionError, match="tests failed"), endpoint.candidate("/models/mnist/2", "2"):
        assert len(_pods(emulator)) == 4
        raise AssertionError("tests failed")
    assert _object(emulator, "v1/services", "mnist-serving") == before  # same resourceVersion: never written
    assert _replicas(emulator, "green") == 0 and _replicas(emulator, "blue") == 2
    _eventually(lambda: sorted(_pods(emulator).values()) == ["1", "1"])
    assert endpoint.current().version == "1"
    assert "candidate version 2 discarded: deployment/mnist-serving-green scaled to 0" in endpoints.logs[0]
    assert emulator.objects(LEASES, NAMESPACE) == []


def test_a_rollout_that_times_out_raises_and_leaves_the_public_service_unchanged(cluster, endpoints):
    """The candidate's Deployment never becomes available: DeployError after the rollout
    timeout, the candidate scaled to 0, the public Service as it was, the Lease released.
    Not covered: a real controller's ProgressDeadlineExceeded (only availability is awaited)."""
    emulator, controller, _ = cluster
    endpoint = endpoints(rollout_timeout=1)
    endpoint.deploy("/models/mnist/1", "1")
    before = _object(emulator, "v1/services", "mnist-serving")
    controller.hold_unavailable("mnist-serving-green")
    message = "version 2 did not roll out in 1s on deployment/mnist-serving-green; it is scaled to 0 and the public"
    with pytest.raises(DeployError, match=message), endpoint.candidate("/models/mnist/2", "2"):
        pytest.fail("a candidate that never became available was handed out")
    assert _object(emulator, "v1/services", "mnist-serving") == before
    assert _replicas(emulator, "green") == 0
    assert emulator.objects(LEASES, NAMESPACE) == []


def test_deploy_roll_forward_roll_back_and_stop(cluster, endpoints):
    """``deploy`` (candidate + promote) alternates colors: 1 on blue, 2 on green, a rollback to
    1 on blue again; each pod runs hardened as generated (request log, ServerOptions, budgets).
    ``stop`` deletes every object and leaves no Lease.
    Not covered: the pod spec's validity and security (test_k8s_jobs.py, test_checkov.py)."""
    emulator, _, _ = cluster
    endpoint = endpoints()
    endpoint.deploy("/models/mnist/1", "1")
    (blue,) = emulator.objects("apps/v1/deployments", NAMESPACE)
    command = blue["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--request-log-dir") + 1] == "/data/serving/requests"
    assert "--request-log" in command and "--max-batch" in command  # ServerOptions, as the local server gets them
    assert blue["spec"]["template"]["spec"]["automountServiceAccountToken"] is False

    assert endpoint.deploy("/models/mnist/2", "2").version == "2"
    assert (_public(emulator)[0], _served_dir(emulator, "green"), _replicas(emulator, "blue")) == (
        "green",
        "/models/mnist/2",
        0,
    )
    back = endpoint.deploy("/models/mnist/1", "1")  # what a rollback does
    assert (back.version, endpoint.current().version, _public(emulator)[0]) == ("1", "1", "blue")
    assert (_replicas(emulator, "blue"), _replicas(emulator, "green")) == (2, 0)
    budgets = emulator.objects("policy/v1/poddisruptionbudgets", NAMESPACE)
    assert [(b["metadata"]["name"], b["spec"]["minAvailable"]) for b in budgets] == [
        ("mnist-serving-blue", 1),
        ("mnist-serving-green", 1),
    ]

    assert endpoint.stop().version == "1"
    for resource in ("apps/v1/deployments", "v1/services", "policy/v1/poddisruptionbudgets", LEASES):
        assert emulator.objects(resource, NAMESPACE) == [], resource
    _eventually(lambda: _pods(emulator) == {})
    assert endpoint.stop() is None


def test_two_deployers_take_turns_through_the_lease(cluster, endpoints):
    """Two KubernetesEndpoint objects (two API clients, two threads) deploy at once: the second
    logs that it waits for the Lease and its holder, and starts only after the first released
    it, although the first held it longer than its duration (renewed by its thread). The
    second's candidate goes to the color the first left idle. The Lease is gone afterwards.
    Not covered: separate processes or pods (threads share nothing but the API server here)."""
    emulator, _, _ = cluster
    first, second = endpoints(lease_duration_s=1), endpoints(lease_duration_s=1)
    events: list[str] = []
    first_in = threading.Event()
    errors: list[BaseException] = []

    def run(endpoint: KubernetesEndpoint, name: str, version: str) -> None:
        try:
            with endpoint.candidate(f"/models/mnist/{version}", version) as candidate:
                events.append(f"{name} in")
                first_in.set()
                time.sleep(2)  # twice the Lease's duration: only renewals keep it
                endpoint.promote(candidate)
                events.append(f"{name} out")
        except BaseException as exc:  # reported below
            errors.append(exc)
            first_in.set()

    threads = [threading.Thread(target=run, args=(first, "first", "1"))]
    threads[0].start()
    assert first_in.wait(30)
    threads.append(threading.Thread(target=run, args=(second, "second", "2")))
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert not errors and events == ["first in", "first out", "second in", "second out"]
    waited = [line for line in endpoints.logs[1] if line.startswith("waiting for lease/mnist-serving-deploy")]
    holder = [line for line in endpoints.logs[0] if line.startswith("holding lease/mnist-serving-deploy as ")]
    assert len(waited) == 1 and len(holder) == 1
    assert waited[0].endswith(holder[0].removeprefix("holding lease/mnist-serving-deploy as "))
    assert not any("taking it over" in line for line in endpoints.logs[1])
    assert _public(emulator)[0] == "green" and second.current().version == "2"
    assert emulator.objects(LEASES, NAMESPACE) == []


def _lease(emulator, holder: str, duration_s: int) -> None:
    with emulator.api_client() as api:
        client.CoordinationV1Api(api).create_namespaced_lease(
            NAMESPACE,
            {
                "metadata": {"name": "mnist-serving-deploy"},
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": duration_s,
                    "renewTime": datetime(2024, 1, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
            },
        )


def test_an_expired_lease_of_a_dead_holder_is_taken_over(cluster, endpoints):
    """A Lease left by a deployer that died (never renewed) is taken over once it has not
    changed for its duration, as observed by the waiter; the deploy proceeds and releases it.
    Not covered: clock skew between deployers (expiry is measured on the waiter's clock only)."""
    emulator, _, _ = cluster
    _lease(emulator, "dead-pod/pid-7/0badc0de", duration_s=1)
    endpoint = endpoints()
    started = time.monotonic()
    assert endpoint.deploy("/models/mnist/1", "1").version == "1"
    assert time.monotonic() - started >= 1
    assert (
        "lease/mnist-serving-deploy: dead-pod/pid-7/0badc0de has not renewed it for 1s; taking it over"
        in (endpoints.logs[0])
    )
    assert emulator.objects(LEASES, NAMESPACE) == []


def test_a_lease_held_past_the_timeout_fails_naming_it_and_its_holder(cluster, endpoints):
    """A live holder (a Lease that is not expiring) makes a deploy wait, then fail with the
    Lease and its holder named; nothing is created. Not covered: a holder renewing from
    another process (the Lease here is simply long)."""
    emulator, _, _ = cluster
    _lease(emulator, "busy-pod/pid-1/12345678", duration_s=3600)
    endpoint = endpoints(lock_timeout=1)
    message = "holds lease/mnist-serving-deploy in namespace mnist: holder busy-pod/pid-1/12345678"
    with pytest.raises(DeployError, match=message):
        endpoint.deploy("/models/mnist/1", "1")
    assert emulator.objects("apps/v1/deployments", NAMESPACE) == []
    assert len(emulator.objects(LEASES, NAMESPACE)) == 1  # still the holder's


def test_a_deployer_that_lost_its_lease_does_not_promote(cluster, endpoints):
    """Another deployer takes the Lease over while a candidate is open (here: the test replaces
    it): the renewal gets 409, ``promote`` raises and writes nothing, and the candidate's
    color is left to the new holder (not scaled down). Not covered: a real pause (GC, network)
    long enough for an expiry; the takeover is forced."""
    emulator, _, _ = cluster
    endpoint = endpoints(lease_duration_s=1)
    endpoint.deploy("/models/mnist/1", "1")
    before = _object(emulator, "v1/services", "mnist-serving")
    with endpoint.candidate("/models/mnist/2", "2") as candidate, emulator.api_client() as api:
        leases = client.CoordinationV1Api(api)
        lease = leases.read_namespaced_lease("mnist-serving-deploy", NAMESPACE)
        lease.spec.holder_identity = "other-pod/pid-2/feedbeef"
        leases.replace_namespaced_lease("mnist-serving-deploy", NAMESPACE, lease)
        _eventually(lambda: any(line.startswith("lost lease/") for line in endpoints.logs[0]))
        with pytest.raises(DeployError, match="lost lease/mnist-serving-deploy in namespace mnist"):
            endpoint.promote(candidate)
    assert _object(emulator, "v1/services", "mnist-serving") == before
    assert _replicas(emulator, "green") == 2
    (lease,) = emulator.objects(LEASES, NAMESPACE)
    assert lease["spec"]["holderIdentity"] == "other-pod/pid-2/feedbeef"


def test_the_single_deployment_of_before_is_migrated_and_removed_after_the_switch(cluster, endpoints):
    """The pre-blue/green layout (Deployment, Service selecting every pod of the app, PDB, all
    named mnist-serving) serves 1: the first candidate labels its pods legacy (rolled out again)
    and points the public Service at that label, so the candidate's pods are not selected; until
    the switch it is what serves; the promote deletes the old Deployment and its PDB.
    Not covered: that the old pods keep serving during their relabelling rollout (no kubelet)."""
    emulator, _, _ = cluster
    old = deployment(SPEC, "/models/mnist/1", "1")
    old["metadata"]["name"] = "mnist-serving"
    for labels in (old["metadata"]["labels"], old["spec"]["selector"]["matchLabels"]):
        labels.pop(TRACK_LABEL)
    old["spec"]["template"]["metadata"]["labels"] = dict(old["metadata"]["labels"])
    old_service, old_budget = service(SPEC), pod_disruption_budget(SPEC)
    old_service["spec"]["selector"] = old_budget["spec"]["selector"]["matchLabels"] = {
        "app.kubernetes.io/name": "mnist-serving"
    }
    old_budget["metadata"]["name"] = "mnist-serving"
    with emulator.api_client() as api:
        client.AppsV1Api(api).create_namespaced_deployment(NAMESPACE, old)
        client.CoreV1Api(api).create_namespaced_service(NAMESPACE, old_service)
        client.PolicyV1Api(api).create_namespaced_pod_disruption_budget(NAMESPACE, old_budget)
    endpoint = endpoints()
    assert endpoint.current().version == "1"

    with endpoint.candidate("/models/mnist/2", "2") as candidate:
        track, annotations = _public(emulator)
        assert (track, annotations[VERSION_ANNOTATION]) == ("legacy", "1")
        assert endpoint.current().version == "1"
        roles = sorted((p.version, p.role) for p in endpoint.serving())
        assert roles == [("1", "serving"), ("1", "serving"), ("2", "candidate"), ("2", "candidate")]
        endpoint.promote(candidate)

    assert _public(emulator)[0] == "blue" and endpoint.current().version == "2"
    assert [d["metadata"]["name"] for d in emulator.objects("apps/v1/deployments", NAMESPACE)] == ["mnist-serving-blue"]
    assert _object(emulator, "policy/v1/poddisruptionbudgets", "mnist-serving") is None
    _eventually(lambda: sorted(_pods(emulator).values()) == ["2", "2"])


def test_model_deployer_drives_the_kubernetes_backend_from_its_configuration(cluster):
    """``ModelDeployer(backend="kubernetes")`` with a kubeconfig deploys, reports and stops
    through KubernetesEndpoint. Not covered: the assets that call it (asset-level test to come
    with the candidate/promote multi-asset), in-cluster configuration."""
    emulator, _, kubeconfig = cluster
    deployer = ModelDeployer(backend="kubernetes", k8s_kubeconfig=str(kubeconfig), state_dir="/data/serving")
    assert deployer.current() is None
    endpoint = deployer.deploy("/models/mnist/1", "1")
    assert (endpoint.url, endpoint.version, deployer.current().version) == (PUBLIC_URL, "1", "1")
    assert _served_dir(emulator, "blue") == "/models/mnist/1"
    assert deployer.stop().version == "1"
    assert emulator.objects("apps/v1/deployments", NAMESPACE) == []

"""The serving deployer's Kubernetes backend, over real HTTP against an in-memory Kubernetes
API (kmock, tests/k8s_emulator/) with a simulated Deployment controller. The backend is
chosen by configuration (the deployer's ``backend``, ``$MNIST_SERVING_BACKEND`` on a cluster).

Not covered (no cluster here): pods actually starting, probes, the rolling update itself,
Service endpoints, and calling the in-cluster URL; deployment_test_results therefore can't
run against this endpoint."""

from __future__ import annotations

import pytest
from dagster import materialize
from k8s_emulator import SimulatedDeploymentController, running_emulator
from kubernetes import client

from mnist_assets.assets import model_deployment
from mnist_delivery.backend import DeployError
from resources import ModelDeployer, ModelRegistry

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

NAMESPACE = "mnist"


@pytest.fixture
def cluster(tmp_path):
    with running_emulator() as emulator:
        api = emulator.api_client()
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        with SimulatedDeploymentController(emulator, NAMESPACE) as controller:
            yield emulator, controller, emulator.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        api.close()


def _deployer(kubeconfig, **overrides) -> ModelDeployer:
    settings = {"backend": "kubernetes", "k8s_kubeconfig": str(kubeconfig), "state_dir": "/data/serving"}
    return ModelDeployer(**{**settings, **overrides})


def _served_dir(emulator) -> str:
    (deployment,) = emulator.objects("apps/v1/deployments", NAMESPACE)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    return command[command.index("--model-dir") + 1]


def test_deploy_roll_forward_roll_back_and_stop(cluster):
    emulator, controller, kubeconfig = cluster
    deployer = _deployer(kubeconfig)
    assert deployer.current() is None

    first = deployer.deploy("/models/mnist/1", "1")
    assert first.url == "http://mnist-serving.mnist.svc.cluster.local:8080"
    assert _served_dir(emulator) == "/models/mnist/1"
    (service,) = emulator.objects("v1/services", NAMESPACE)
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "mnist-serving"}
    (deployment,) = emulator.objects("apps/v1/deployments", NAMESPACE)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--request-log-dir") + 1] == "/data/serving/requests"
    assert "--request-log" in command and "--max-batch" in command  # ServerOptions, as the local server gets them
    (budget,) = emulator.objects("policy/v1/poddisruptionbudgets", NAMESPACE)
    assert budget["spec"]["minAvailable"] == 1 and deployment["spec"]["replicas"] == 2

    second = deployer.deploy("/models/mnist/2", "2")
    assert (second.version, _served_dir(emulator)) == ("2", "/models/mnist/2")
    assert deployer.current().version == "2"
    assert [generation for _, generation in controller.rollouts] == [1, 2]

    back = deployer.deploy("/models/mnist/1", "1")  # what a rollback does
    assert (back.version, deployer.current().version) == ("1", "1")

    assert deployer.stop().version == "1"
    for resource in ("apps/v1/deployments", "v1/services", "policy/v1/poddisruptionbudgets"):
        assert emulator.objects(resource, NAMESPACE) == [], resource


def test_a_rollout_that_never_becomes_available_times_out_clearly(cluster):
    emulator, controller, kubeconfig = cluster
    deployer = _deployer(kubeconfig, startup_timeout_s=1)  # rollouts may take 5x this
    deployer.deploy("/models/mnist/1", "1")
    controller.hold_unavailable("mnist-serving")
    with pytest.raises(DeployError, match="version 2 did not roll out in 5s; the previous pods keep serving"):
        deployer.deploy("/models/mnist/2", "2")


def test_model_deployment_asset_uses_the_configured_kubernetes_backend(cluster, tiny_versions):
    emulator, _, kubeconfig = cluster
    repository, (v1, _) = tiny_versions
    repository.set_alias("candidate", v1.version)
    result = materialize(
        [model_deployment],
        resources={
            "registry": ModelRegistry(root=str(repository.model_dir.parent)),
            "deployer": _deployer(kubeconfig),
        },
    )
    meta = result.asset_materializations_for_node("model_deployment")[0].metadata
    assert meta["url"].value == "http://mnist-serving.mnist.svc.cluster.local:8080"
    assert meta["version"].value == v1.version
    assert _served_dir(emulator) == str(v1.path)

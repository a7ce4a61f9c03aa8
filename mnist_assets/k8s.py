"""How each step's pod is sized, and as whom it runs, on Kubernetes (read by
``k8s_job_executor``; other executors ignore these tags). Training gets more CPU and memory;
GPUs come from config."""

TRAINING_POD = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}},
        }
    }
}
# The delivery step (deliver_candidate: start the candidate, test it, move traffic, roll back) runs
# as mnist-deployer, the only service account allowed to change the serving Deployments,
# Services, PodDisruptionBudgets and the deploy Lease (deploy/k8s/rbac.yaml). Every other pod runs as mnist-dagster.
DEPLOYER_SERVICE_ACCOUNT = "mnist-deployer"
DELIVERY_POD = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
        },
        "pod_spec_config": {"service_account_name": DEPLOYER_SERVICE_ACCOUNT},
    }
}
TRAINING_STEPS = ("mnist_classifier", "mnist_concept_model")


def gpu_step_config(gpus: int) -> dict:
    """``per_step_k8s_config`` asking for ``gpus`` NVIDIA GPUs for each training step."""
    if gpus == 0:
        return {}
    limits = {"nvidia.com/gpu": str(gpus), "memory": "6Gi"}
    return {step: {"container_config": {"resources": {"limits": limits}}} for step in TRAINING_STEPS}

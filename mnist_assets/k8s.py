"""Kubernetes for the steps: the executor that runs each step in its own pod, how each step's pod
is sized, and as whom it runs (tags read by ``k8s_job_executor``; other executors ignore them).
Training gets more CPU and memory; GPUs come from config."""

from dagster import Executor, InitExecutorContext, Permissive, executor
from dagster._config import process_config
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.errors import DagsterInvalidConfigError


@executor(
    name="k8s",
    config_schema=Permissive(),
    requirements=multiple_process_executor_requirements(),
)
def pod_per_step_executor(init_context: InitExecutorContext) -> Executor:
    """dagster-k8s's ``k8s_job_executor``, imported when a run starts it. Importing dagster-k8s
    loads the Kubernetes client (about 0.7 s and 300 modules), which every process that loads the
    code location would otherwise pay: the local run, its step server, the webserver, the daemon.

    Its config is checked against ``k8s_job_executor``'s own schema here, at run start, with its
    defaults filled in; the job's config mapping writes it (``pipeline_config``), so nobody types it
    in the launchpad. A bad value fails the run before any step pod starts."""
    from dagster_k8s import k8s_job_executor

    checked = process_config(k8s_job_executor.config_schema.config_type, init_context.executor_config)
    if not checked.success:
        raise DagsterInvalidConfigError(
            "Error in the k8s executor's config", checked.errors, init_context.executor_config
        )
    return k8s_job_executor.executor_creation_fn(
        InitExecutorContext(
            job=init_context.job,
            executor_def=k8s_job_executor,
            executor_config=checked.value,
            instance=init_context.instance,
        )
    )


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

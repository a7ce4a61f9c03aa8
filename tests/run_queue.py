"""One delivery run at a time, as the run queue decides it: shared by the tests of each
instance config we ship (deploy/local/dagster.yaml, deploy/dagster.yaml, the Helm values).

``check_serializes_delivery(limits)`` gives a config's run-tag limits to Dagster's own counter
(``TagConcurrencyLimitsCounter``, what the queued-run daemon uses) with the tags the code
location's jobs really carry: with any deploying run in progress, every other deploying run is
held; a run of a job that does not deploy never is. Whether the daemon then honours the decision
is tests/test_one_deploy_at_a_time.py's subject (a real daemon, two real runs)."""

from __future__ import annotations

from dagster import DagsterRun
from dagster._utils.tags import TagConcurrencyLimitsCounter

from mnist_assets.definitions import defs

DELIVERY_LIMIT = {"key": "mnist/endpoint", "limit": 1}


def job_runs() -> tuple[list[DagsterRun], list[DagsterRun]]:
    """A run of each job of the code location, with its tags: (those that select an asset of the
    delivery group, the others)."""
    graph = defs.resolve_asset_graph()
    deploying, others = [], []
    for job in defs.jobs:
        resolved = defs.resolve_job_def(job.name)
        run = DagsterRun(job_name=job.name, tags=dict(resolved.tags))
        keys = resolved.asset_layer.executable_asset_keys
        (deploying if any(graph.get(key).group_name == "delivery" for key in keys) else others).append(run)
    return deploying, others


def check_serializes_delivery(limits: list[dict]) -> None:
    deploying, others = job_runs()
    assert {run.job_name for run in deploying} == {"mnist_pipeline", "mnist_pipeline_k8s"}
    for running in deploying:
        for waiting in deploying:
            counter = TagConcurrencyLimitsCounter(limits, [running])
            assert counter.is_blocked(waiting), f"{waiting.job_name} would start while {running.job_name} runs"
        for other in others:
            counter = TagConcurrencyLimitsCounter(limits, [running])
            assert not counter.is_blocked(other), f"{other.job_name} is held though it does not deploy"
    assert not TagConcurrencyLimitsCounter(limits, []).is_blocked(deploying[0]), "nothing in progress, yet held"

"""checkov (from PyPI, pinned in requirements/checkov.txt, in its own venv) finds nothing over
deploy/k8s/, the Dockerfile, and every pod spec the code generates: the serving Deployment,
Service and PodDisruptionBudget, the run Jobs the launcher builds from deploy/dagster.yaml and
from the Helm values, and the step Jobs k8s_job_executor builds from our op tags. Every
skipped check is listed, with its reason, in deploy/checkov-skips.yaml.

Runs offline: --skip-download, no API key. Not covered: the Helm chart's rendered templates
(no helm here; checkov's helm framework needs the helm binary), the InferenceService beyond
what checkov's kubernetes checks read of it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_checks import (
    DEPLOY,
    NAMESPACE,
    ROOT,
    helm_run_launcher_config,
    kubeconfig,
    launched_run_job,
    launcher_from_config,
    load_dagster_yaml,
    load_helm_values,
)
from test_k8s_jobs import _step_job

from mnist_assets.k8s import DELIVERY_POD, TRAINING_POD
from mnist_delivery.k8s_endpoint import SHIPPED, deployment, pod_disruption_budget, service

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

__all__ = ["kubeconfig"]  # a fixture
CHECKOV = Path(os.environ.get("MNIST_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))


def skipped_checks() -> list[dict]:
    skips = yaml.safe_load((DEPLOY / "checkov-skips.yaml").read_text())
    assert all(skip["id"] and len(skip["reason"]) > 40 for skip in skips), "every skip needs its reason"
    return skips


def generated_objects(kubeconfig: str) -> dict[str, list[dict]]:
    """File name: the objects our code builds, as it would send them."""
    steps = {
        step: _step_job(step, {"dagster-k8s/config": json.dumps(tags["dagster-k8s/config"])}, kubeconfig)
        for step, tags in (("mnist_classifier", TRAINING_POD), ("deliver_candidate", DELIVERY_POD))
    }
    dagster_yaml = launcher_from_config(load_dagster_yaml()["run_launcher"]["config"], kubeconfig)
    helm = launcher_from_config(helm_run_launcher_config(load_helm_values()), kubeconfig)
    dagster_yaml_job, _ = launched_run_job(dagster_yaml)
    helm_job, _ = launched_run_job(helm, image=SHIPPED.image)
    for job in [dagster_yaml_job, helm_job, *steps.values()]:
        job["metadata"]["namespace"] = NAMESPACE  # dagster-k8s sends it in the URL; the API server sets it
    return {
        "serving.yaml": [deployment(SHIPPED, "/models/mnist/1", "1"), service(SHIPPED), pod_disruption_budget(SHIPPED)],
        "run-job-dagster-yaml.yaml": [dagster_yaml_job],
        "run-job-helm.yaml": [helm_job],
        **{f"step-job-{step}.yaml": [job] for step, job in steps.items()},
    }


def reports(output: str) -> list[dict]:
    """checkov's JSON output: one document per framework, one after the other."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while position < len(output.rstrip()):
        document, position = decoder.raw_decode(output, position)
        found += document if isinstance(document, list) else [document]
        while position < len(output) and output[position].isspace():
            position += 1
    return found


def test_checkov_finds_nothing(tmp_path, kubeconfig):
    assert CHECKOV.is_file(), f"checkov not found at {CHECKOV}: `make install` installs it (requirements/checkov.txt)"
    # One folder: the shipped manifests with the generated objects (namespace-wide checks, such
    # as "every pod has a NetworkPolicy", see them together, as they would be in the cluster).
    scanned = tmp_path / "k8s"
    scanned.mkdir()
    for path in [*(DEPLOY / "k8s").glob("*.yaml"), ROOT / "Dockerfile"]:
        (scanned / path.name).write_text(path.read_text())
    for name, objects in generated_objects(kubeconfig).items():
        (scanned / f"generated-{name}").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    skips = [skip["id"] for skip in skipped_checks()]
    command = [str(CHECKOV), "--framework", "kubernetes", "dockerfile", "--skip-download", "--quiet", "--compact"]
    command += ["-o", "json", "--skip-check", ",".join(skips), "-d", str(scanned)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}  # no API key
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    found = reports(result.stdout)
    summary = {report["check_type"]: report["summary"] for report in found}
    assert set(summary) == {"kubernetes", "dockerfile"}, summary
    failed = [
        f"{report['check_type']} {check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for report in found
        for check in report["results"]["failed_checks"]
    ]
    for kind, counts in summary.items():
        print(f"checkov {kind}: {counts['passed']} passed, {counts['failed']} failed; {len(skips)} check ids skipped")
    assert all(counts["parsing_errors"] == 0 for counts in summary.values()), summary
    assert not failed, "\n".join(failed)
    assert summary["kubernetes"]["resource_count"] > 20 and summary["dockerfile"]["passed"] > 0

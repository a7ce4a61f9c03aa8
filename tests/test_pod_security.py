"""The Pod Security "restricted" checker (tests/pod_security.py) and the pods it is applied to
beyond those of test_k8s_objects.py, test_helm_values.py and test_k8s_jobs.py: the namespace's
admission labels, and the Dagster chart's own pods (webserver, daemon) as our Helm values
configure them.

Covered: that the checker reports each rule of the profile (a pod breaking each one), and
that the namespace enforces restricted at a pinned version. Not covered: the admission
controller itself (no API server here), and the chart's rendered pods (no helm here: the
security contexts our values give them are checked, as the chart's templates place them on
every container, init containers included)."""

from __future__ import annotations

import pytest
import yaml
from k8s_checks import K8S_DIR, load_helm_values
from pod_security import RULES, restricted_violations

pytestmark = pytest.mark.k8s

RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "ports": [{"containerPort": 8080}],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}, {"name": "tmp", "emptyDir": {}}],
}

VIOLATING_POD = {
    "hostNetwork": True,
    "hostPID": True,
    "securityContext": {
        "runAsUser": 0,
        "seccompProfile": {"type": "Unconfined"},
        "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
        "seLinuxOptions": {"type": "spc_t"},
    },
    "containers": [
        {
            "name": "bad",
            "ports": [{"containerPort": 80, "hostPort": 80}],
            "securityContext": {
                "privileged": True,
                "allowPrivilegeEscalation": True,
                "capabilities": {"add": ["SYS_ADMIN"]},
                "procMount": "Unmasked",
                "appArmorProfile": {"type": "Unconfined"},
                "windowsOptions": {"hostProcess": True},
                "runAsNonRoot": False,
            },
        }
    ],
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
}


def rules_broken(spec: dict, annotations: dict | None = None) -> set[str]:
    return {violation.split(":")[0] for violation in restricted_violations(spec, annotations)}


def test_a_restricted_pod_passes():
    assert restricted_violations(RESTRICTED_POD) == []
    with_bind = {**RESTRICTED_POD, "containers": [{**RESTRICTED_POD["containers"][0]}]}
    with_bind["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},  # the one allowed
    }
    assert restricted_violations(with_bind) == []


def test_every_rule_is_reported():
    annotations = {"container.apparmor.security.beta.kubernetes.io/bad": "unconfined"}
    assert rules_broken(VIOLATING_POD, annotations) == set(RULES)


def test_each_rule_alone():
    """One change to the restricted pod breaks exactly the rule it should."""
    container = RESTRICTED_POD["containers"][0]

    def with_container_context(**context: object) -> dict:
        merged = {**container["securityContext"], **context}
        return {**RESTRICTED_POD, "containers": [{**container, "securityContext": merged}]}

    cases = {
        "hostNamespaces": {**RESTRICTED_POD, "hostIPC": True},
        "privileged": with_container_context(privileged=True),
        "capabilities": with_container_context(capabilities={"drop": ["NET_RAW"]}),
        "hostPorts": {**RESTRICTED_POD, "containers": [{**container, "ports": [{"containerPort": 1, "hostPort": 1}]}]},
        "volumeTypes": {**RESTRICTED_POD, "volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]},
        "procMount": with_container_context(procMount="Unmasked"),
        "seccomp": {**RESTRICTED_POD, "securityContext": {"runAsNonRoot": True}},
        "privilegeEscalation": with_container_context(allowPrivilegeEscalation=None),
        "runAsNonRoot": {**RESTRICTED_POD, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
        "runAsUser": with_container_context(runAsUser=0),
        "seLinux": with_container_context(seLinuxOptions={"user": "system_u"}),
        "appArmor": with_container_context(appArmorProfile={"type": "Unconfined"}),
        "sysctls": {
            **RESTRICTED_POD,
            "securityContext": {**RESTRICTED_POD["securityContext"], "sysctls": [{"name": "net.core.somaxconn"}]},
        },
    }
    for rule, spec in cases.items():
        assert rules_broken(spec) == {rule}, rule


def test_namespace_enforces_restricted_at_a_pinned_version():
    (namespace,) = yaml.safe_load_all((K8S_DIR / "namespace.yaml").read_text())
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.30", mode


def chart_pod(component: dict) -> dict:
    """A chart pod as its template builds it from the values: the pod security context, and the
    container security context on the main container and on both init containers."""
    containers = [{"name": name, "securityContext": component["securityContext"]} for name in ("dagster",)]
    init = [{"name": name, "securityContext": component["securityContext"]} for name in ("check-db-ready", "init")]
    return {"securityContext": component["podSecurityContext"], "containers": containers, "initContainers": init}


def test_chart_webserver_and_daemon_pods_run_restricted():
    values = load_helm_values()
    for key in ("dagsterWebserver", "dagsterDaemon"):
        assert restricted_violations(chart_pod(values[key])) == [], key

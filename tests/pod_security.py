"""The Pod Security Standards "restricted" profile (which includes "baseline"), as a function
over a pod spec, following https://kubernetes.io/docs/concepts/security/pod-security-standards/
for Kubernetes v1.30 (the version deploy/k8s/namespace.yaml pins).

``restricted_violations`` returns one message per violation, each starting with the rule's
name (``RULES``). It reads camelCase pod specs (manifests, and objects serialized by the
kubernetes client). It is what Pod Security Admission checks, written from the published
rules; it is not the admission controller itself (no API server runs here)."""

from __future__ import annotations

from collections.abc import Iterator

RULES = (
    "hostProcess",
    "hostNamespaces",
    "privileged",
    "capabilities",
    "hostPathVolumes",
    "volumeTypes",
    "hostPorts",
    "appArmor",
    "seLinux",
    "procMount",
    "seccomp",
    "sysctls",
    "privilegeEscalation",
    "runAsNonRoot",
    "runAsUser",
)

# Baseline: safe sysctls (v1.29+ list).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
# Restricted: the only volume types allowed.
VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field[:-1]} {container.get('name')}", container


def restricted_violations(spec: dict, annotations: dict | None = None) -> list[str]:
    """Every way the pod spec (and its pod annotations) breaks the restricted profile."""
    found: list[str] = []
    pod = spec.get("securityContext") or {}
    containers = list(_containers(spec))

    def add(rule: str, message: str) -> None:
        found.append(f"{rule}: {message}")

    for where, context in [("pod", pod), *((w, c.get("securityContext") or {}) for w, c in containers)]:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            add("hostProcess", f"{where} sets windowsOptions.hostProcess")
        if context.get("procMount", "Default") != "Default":
            add("procMount", f"{where} procMount {context['procMount']}")
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            add("seLinux", f"{where} seLinuxOptions {options}")
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in APPARMOR_TYPES:
            add("appArmor", f"{where} appArmorProfile {apparmor}")
        if context.get("runAsUser") == 0:
            add("runAsUser", f"{where} runAsUser 0")

    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            add("hostNamespaces", f"{field} is true")
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default" or value.startswith("localhost/")):
            add("appArmor", f"annotation {key}: {value}")
    for sysctl in pod.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            add("sysctls", f"sysctl {sysctl.get('name')} is not in the safe set")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            add("hostPathVolumes", f"volume {volume.get('name')} is a hostPath")
        if kinds - VOLUME_TYPES:
            add("volumeTypes", f"volume {volume.get('name')} has type {sorted(kinds - VOLUME_TYPES)}")

    pod_non_root = pod.get("runAsNonRoot") is True
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        add("seccomp", f"pod seccompProfile {pod_seccomp}")
    for where, container in containers:
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            add("privileged", f"{where} is privileged")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            add("capabilities", f"{where} does not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            add("capabilities", f"{where} adds {sorted(set(capabilities['add']) - {'NET_BIND_SERVICE'})}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            add("hostPorts", f"{where} uses a hostPort")
        if context.get("allowPrivilegeEscalation") is not False:
            add("privilegeEscalation", f"{where} does not set allowPrivilegeEscalation: false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            add("runAsNonRoot", f"{where} may run as root (runAsNonRoot not true on it or the pod)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_TYPES:
            add("seccomp", f"{where} seccompProfile {seccomp}")
        elif seccomp is None and pod_seccomp is None:
            add("seccomp", f"{where} has no seccompProfile, nor has the pod")
    return found

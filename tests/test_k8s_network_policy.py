"""deploy/k8s/networkpolicy.yaml allows exactly the connections each role needs.

A small evaluator of NetworkPolicy semantics as the Kubernetes API defines them (policies
select pods; a pod selected for a direction is isolated in it and allowed only what some rule
of a selecting policy matches; peers by pod selector, namespace selector or ipBlock; ports
with protocol and endPort), applied to a matrix of connections between the project's pods
(with the labels they really carry) and endpoints outside the namespace.

Not covered: a real CNI (which enforces these, or ignores them), traffic from the node
(kubelet probes, port-forward), Services (policies apply to pod addresses after DNAT), and
named ports (the policies use numbers)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest
from k8s_checks import NAMESPACE, k8s_documents

pytestmark = pytest.mark.k8s


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    namespace: str | None = None  # None: outside the cluster (no pod)
    labels: dict = field(default_factory=dict)
    namespace_labels: dict = field(default_factory=dict)


def _ns(name: str) -> dict:
    return {"kubernetes.io/metadata.name": name}


def _pod(name: str, ip: str, labels: dict, namespace: str = NAMESPACE) -> Endpoint:
    return Endpoint(name, ip, namespace, labels, _ns(namespace))


DAGSTER = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/instance": "dagster"}
PODS = {
    "run": _pod("run", "10.1.0.1", {**DAGSTER, "app.kubernetes.io/component": "run_worker"}),
    "step": _pod("step", "10.1.0.2", {**DAGSTER, "app.kubernetes.io/component": "step_worker"}),
    "daemon": _pod("daemon", "10.1.0.3", {**DAGSTER, "component": "dagster-daemon", "deployment": "daemon"}),
    "webserver": _pod("webserver", "10.1.0.4", {**DAGSTER, "component": "dagster-webserver"}),
    "user-code": _pod(
        "user-code",
        "10.1.0.5",
        {"app.kubernetes.io/name": "dagster-user-deployments", "component": "user-deployments", "deployment": "mnist"},
    ),
    "serving": _pod("serving", "10.1.0.6", {"app.kubernetes.io/name": "mnist-serving"}),
    "postgres-pod": _pod("postgres-pod", "10.1.0.7", {"app": "postgresql", "release": "dagster"}),
    "other-in-mnist": _pod("other-in-mnist", "10.1.0.8", {"app": "something"}),
    "proxy": _pod("proxy", "10.1.0.9", {"app": "oauth2-proxy", "mnist-mlops/webserver-client": "true"}),
    "client": _pod("client", "10.2.0.1", {"mnist-mlops/serving-client": "true"}, namespace="shop"),
    "stranger": _pod("stranger", "10.2.0.2", {"app": "web"}, namespace="shop"),
    "kube-dns": _pod("kube-dns", "10.3.0.10", {"k8s-app": "kube-dns"}, namespace="kube-system"),
    "postgres": Endpoint("postgres", "172.16.5.5"),  # a managed PostgreSQL
    "apiserver": Endpoint("apiserver", "172.16.0.1"),
    "internet": Endpoint("internet", "93.184.216.34"),  # mirrors, the alert webhook
}


def _matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def _peer_matches(peer: dict, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return _matches(peer.get("podSelector"), other.labels)


def _port_matches(ports: list[dict] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in ports
    )


def _allowed_one_way(policies: list[dict], pod: Endpoint, other: Endpoint, port: int, protocol: str, way: str) -> bool:
    """Whether ``pod``'s policies let it send (Egress) to / receive (Ingress) from ``other``."""
    if pod.namespace is None:
        return True  # outside the cluster: nothing of ours applies
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and way in p["spec"].get("policyTypes", ["Ingress"])
        and _matches(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    peers_key, rules_key = ("to", "egress") if way == "Egress" else ("from", "ingress")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, pod.namespace, other) for peer in peers)) and _port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def allowed(source: str, destination: str, port: int, protocol: str = "TCP") -> bool:
    policies = [obj for name, obj in k8s_documents() if obj["kind"] == "NetworkPolicy"]
    src, dst = PODS[source], PODS[destination]
    return _allowed_one_way(policies, src, dst, port, protocol, "Egress") and _allowed_one_way(
        policies, dst, src, port, protocol, "Ingress"
    )


ALLOWED = [
    ("client", "serving", 8080),
    ("step", "serving", 8080),  # deployment tests
    ("run", "serving", 8080),  # mnist_pipeline's tests from the run pod
    ("run", "postgres", 5432),
    ("daemon", "postgres", 5432),
    ("webserver", "postgres", 5432),
    ("user-code", "postgres", 5432),
    ("step", "postgres-pod", 5432),
    ("run", "apiserver", 443),
    ("run", "apiserver", 6443),
    ("daemon", "apiserver", 443),
    ("step", "apiserver", 443),  # the deployer
    ("step", "internet", 443),  # dataset mirrors
    ("step", "internet", 80),  # http mirrors
    ("user-code", "internet", 443),  # the failure alert webhook
    ("daemon", "user-code", 4000),
    ("webserver", "user-code", 4000),
    ("proxy", "webserver", 3000),
]
DENIED = [
    ("client", "serving", 9000),
    ("stranger", "serving", 8080),
    ("other-in-mnist", "serving", 8080),
    ("serving", "postgres", 5432),
    ("serving", "postgres-pod", 5432),
    ("serving", "apiserver", 443),
    ("serving", "internet", 443),
    ("serving", "user-code", 4000),
    ("other-in-mnist", "postgres-pod", 5432),
    ("stranger", "postgres-pod", 5432),
    ("run", "user-code", 4000),
    ("stranger", "user-code", 4000),
    ("run", "internet", 22),
    ("run", "webserver", 3000),
    ("stranger", "webserver", 3000),
    ("other-in-mnist", "apiserver", 443),
]


@pytest.mark.parametrize(("source", "destination", "port"), ALLOWED)
def test_allowed(source, destination, port):
    assert allowed(source, destination, port)


@pytest.mark.parametrize(("source", "destination", "port"), DENIED)
def test_denied(source, destination, port):
    assert not allowed(source, destination, port)


def test_dns_only_for_dagster_pods():
    for pod in ("run", "step", "daemon", "webserver", "user-code"):
        assert allowed(pod, "kube-dns", 53, "UDP") and allowed(pod, "kube-dns", 53, "TCP"), pod
    assert not allowed("serving", "kube-dns", 53, "UDP")
    assert not allowed("run", "kube-dns", 5353, "UDP")


@pytest.mark.slow  # about 6 s: every destination and port through the evaluator
def test_serving_may_send_nothing_at_all():
    for destination in PODS:
        for port in (53, 80, 443, 4000, 5432, 6443, 8080):
            if destination != "serving":
                assert not allowed("serving", destination, port), (destination, port)

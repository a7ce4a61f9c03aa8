"""The service accounts, Roles and RoleBindings of deploy/k8s/rbac.yaml.

What this covers:
- each Role grants exactly the rules listed here, with no wildcards or resourceNames, and is
  bound to its own service account only; the serving pods' account is bound to nothing;
- every Kubernetes API call that dagster-k8s (launcher and executor) and the serving deployer
  make, read from their source, is granted, and nothing more;
- only the delivery steps run as the deployer.

What this does NOT cover: an API server's RBAC authorizer (the calls are read from the code,
not made), calls made through code paths the source scan cannot see (getattr, other clients).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
from k8s_checks import NAMESPACE, ROOT, SERVICE_ACCOUNT, k8s_documents

pytestmark = pytest.mark.k8s

# Each Role, exactly: (apiGroup, resource, verb).
LAUNCHER_RULES = {
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("batch", "jobs", "list"),
    ("batch", "jobs/status", "get"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "delete"),
    ("", "pods/log", "get"),
    ("", "events", "list"),
}
DEPLOYER_RULES = {
    ("apps", "deployments", "get"),
    ("apps", "deployments", "create"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
    ("apps", "deployments/status", "get"),
    ("", "services", "get"),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "services", "delete"),
    ("", "pods", "list"),
    ("policy", "poddisruptionbudgets", "get"),
    ("policy", "poddisruptionbudgets", "create"),
    ("policy", "poddisruptionbudgets", "delete"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("coordination.k8s.io", "leases", "delete"),
}
EXPECTED_ROLES = {SERVICE_ACCOUNT: LAUNCHER_RULES, "mnist-deployer": DEPLOYER_RULES}
SERVING_SERVICE_ACCOUNT = "mnist-serving"


def rbac_objects() -> dict[tuple[str, str], dict]:
    """(kind, name): object, for deploy/k8s/rbac.yaml."""
    return {(obj["kind"], obj["metadata"]["name"]): obj for name, obj in k8s_documents() if name == "rbac.yaml"}


def granted(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def test_roles_grant_exactly_the_listed_rules_and_no_wildcards() -> None:
    objects = rbac_objects()
    accounts = {SERVICE_ACCOUNT, "mnist-deployer", SERVING_SERVICE_ACCOUNT}
    assert {name for kind, name in objects if kind == "ServiceAccount"} == accounts
    assert {name for kind, name in objects if kind == "Role"} == set(EXPECTED_ROLES)
    assert {name for kind, name in objects if kind == "RoleBinding"} == set(EXPECTED_ROLES)
    for name, rules in EXPECTED_ROLES.items():
        role = objects[("Role", name)]
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected fields (resourceNames?) in {rule}"
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in value for value in rule[field]), f"wildcard in {rule}"
        assert granted(role) == rules, name
        assert objects[("ServiceAccount", name)]["automountServiceAccountToken"] is True
        binding = objects[("RoleBinding", name)]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    # The serving pods' account: bound to nothing, no token.
    assert objects[("ServiceAccount", SERVING_SERVICE_ACCOUNT)]["automountServiceAccountToken"] is False


_VERBS = {"read": "get", "list": "list", "create": "create", "delete": "delete", "patch": "patch", "replace": "update"}


def rbac_for_call(group: str, method: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) an API client method needs: read_namespaced_job_status is
    ('batch', 'jobs/status', 'get')."""
    action, namespaced, kind = method.partition("_namespaced_")
    assert namespaced, f"{method}: not a namespaced call; a Role cannot grant it"
    for suffix in ("_status", "_log"):
        if kind.endswith(suffix):
            return group, f"{kind.removesuffix(suffix).replace('_', '')}s/{suffix[1:]}", _VERBS[action]
    return group, f"{kind.replace('_', '')}s", _VERBS[action]


def api_calls(tree: ast.AST, clients: dict[str, str]) -> set[tuple[str, str, str]]:
    """RBAC needs of ``<x>.<client>.<method>`` for the client attributes given, whether called
    there or passed on to be called (``_missing(self.core.read_namespaced_service, ...)``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr in clients:
            found.add(rbac_for_call(clients[node.value.attr], node.attr))
    return found


def dagster_k8s_needs() -> set[tuple[str, str, str]]:
    """What the launcher and the executor call on DagsterKubernetesClient, down to the API calls."""
    import dagster_k8s

    package = Path(dagster_k8s.__file__).parent
    client_tree = ast.parse((package / "client.py").read_text())
    (cls,) = [n for n in client_tree.body if isinstance(n, ast.ClassDef) and n.name == "DagsterKubernetesClient"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    used = set()
    for module in ("launcher.py", "executor.py"):
        for node in ast.walk(ast.parse((package / module).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value
                name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
                if name in {"_api_client", "api_client"} and node.func.attr in methods:
                    used.add(node.func.attr)
    assert used, "found no DagsterKubernetesClient calls in dagster_k8s's launcher and executor"
    pending, seen = list(used), set()
    while pending:  # methods that call other methods of the client
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(methods[name]):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
            ):
                pending.append(node.func.attr)
    needs = set()
    for name in seen:
        needs |= api_calls(methods[name], {"batch_api": "batch", "core_api": ""})
    return needs


def serving_deployer_needs() -> set[tuple[str, str, str]]:
    source = ROOT / "mnist_delivery" / "k8s_endpoint.py"
    assert source.is_file(), "mnist_delivery/k8s_endpoint.py is gone: drop its rules from deploy/k8s/rbac.yaml"
    clients = {"apps": "apps", "core": "", "policy": "policy", "coordination": "coordination.k8s.io"}
    return api_calls(ast.parse(source.read_text()), clients)


@pytest.mark.parametrize(
    ("role", "code_needs"), [(SERVICE_ACCOUNT, dagster_k8s_needs), ("mnist-deployer", serving_deployer_needs)]
)
def test_role_grants_what_the_code_calls_and_nothing_more(
    role: str, code_needs: Callable[[], set[tuple[str, str, str]]]
) -> None:
    needs = code_needs()
    rules = granted(rbac_objects()[("Role", role)])
    assert not needs - rules, f"{role}: called but not granted: {sorted(needs - rules)}"
    assert not rules - needs, f"{role}: granted but never called: {sorted(rules - needs)}"


def test_only_the_delivery_steps_run_as_the_deployer() -> None:
    """Every op that deploys (calls the deployer) runs as mnist-deployer in mnist_pipeline_k8s;
    the others, and every run pod, as mnist-dagster."""
    from dagster_k8s.job import get_user_defined_k8s_config

    from mnist_assets.definitions import defs
    from mnist_assets.k8s import DEPLOYER_SERVICE_ACCOUNT

    job = defs.resolve_job_def("mnist_pipeline_k8s")
    accounts = {  # as k8s_job_executor reads the op tags
        node.name: get_user_defined_k8s_config(node.definition.tags).pod_spec_config.get("service_account_name")
        for node in job.nodes
    }
    assert DEPLOYER_SERVICE_ACCOUNT == "mnist-deployer" and ("Role", DEPLOYER_SERVICE_ACCOUNT) in rbac_objects()
    deployers = {name for name, account in accounts.items() if account == DEPLOYER_SERVICE_ACCOUNT}
    assert deployers == {"deliver_candidate"}
    assert {account for name, account in accounts.items() if name not in deployers} == {None}  # the run's own
    assert not job.tags.get("dagster-k8s/config"), "a job tag would change the run pod"

"""The packages' layering, read from the source with ``ast`` and followed transitively
through the project: what runs in the serving process imports nothing of the delivery
side, the Dagster wiring or Dagster, and the delivery side nothing of the wiring or Dagster.
The operator's command (``mnist_ops``) sits on top of the resources and the delivery side and
stays out of the Dagster wiring; nothing else imports it. Imports inside functions count too:
they run as soon as the function does."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"mnist_ml", "mnist_serving", "mnist_delivery", "mnist_assets", "resources", "mnist_ops"}


def module_file(module: str) -> Path | None:
    """The project file that defines ``module``, if it is one of ours."""
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    init = path / "__init__.py"
    return init if init.is_file() else None


def imported(module: str, path: Path) -> set[str]:
    """Every module the file imports: ``from a import b`` names ``a`` and, if it is a
    module, ``a.b``; relative imports resolved; importing ``a.b`` also runs ``a``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")}
    parents = {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 1)}
    return names | parents


def import_chains(package: str) -> dict[str, list[str]]:
    """Every module imported, directly or through project modules, by ``package``'s
    modules: name -> the chain of imports that reaches it."""
    start = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / package).rglob("*.py")]
    start = [m.removesuffix(".__init__") for m in start]
    chains = {m: [m] for m in start}
    queue = deque(start)
    while queue:
        module = queue.popleft()
        path = module_file(module)
        if path is None:
            continue
        for name in imported(module, path):
            if name not in chains:
                chains[name] = [*chains[module], name]
                if name.split(".")[0] in PROJECT:
                    queue.append(name)
    return chains


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("mnist_ml", {"mnist_serving", "mnist_delivery", "mnist_assets", "resources", "mnist_ops", "dagster"}),
        ("mnist_serving", {"mnist_delivery", "mnist_assets", "resources", "mnist_ops", "dagster"}),
        ("mnist_delivery", {"mnist_assets", "resources", "mnist_ops", "dagster"}),
    ],
)
def test_no_import_runs_back_up(package, forbidden):
    chains = import_chains(package)
    assert len(chains) > 10, f"found almost no imports under {package}: is the walk broken?"
    bad = {
        name: " -> ".join(chain)
        for name, chain in chains.items()
        if name.split(".")[0] in forbidden or name.startswith("dagster")
    }
    assert not bad, f"{package} reaches what it must not:\n" + "\n".join(sorted(bad.values()))


@pytest.mark.parametrize(("package", "forbidden"), [("mnist_ops", "mnist_assets"), ("resources", "mnist_ops")])
def test_the_operator_command_stays_out_of_the_dagster_wiring(package, forbidden):
    """``mnist_ops`` builds the resources itself (as the definitions do), without loading the
    asset graph; the resources never reach back into the command. Dagster itself is allowed:
    the resources are Dagster resources. Dynamic imports (importlib) are not seen."""
    chains = import_chains(package)
    assert "resources.deployer" in chains, f"found no resources under {package}: is the walk broken?"
    bad = sorted(" -> ".join(chain) for name, chain in chains.items() if name.split(".")[0] == forbidden)
    assert not bad, f"{package} reaches {forbidden}:\n" + "\n".join(bad)


def test_the_walk_sees_imports_inside_functions_and_through_other_modules():
    """The checker itself: ``ModelDeployer._kubernetes`` imports ``mnist_delivery.k8s_endpoint``
    inside the function, and that module imports ``kubernetes.client``."""
    chains = import_chains("resources")
    assert chains["mnist_delivery.k8s_endpoint"] == ["resources.deployer", "mnist_delivery.k8s_endpoint"]
    assert chains["kubernetes.client"] == ["resources.deployer", "mnist_delivery.k8s_endpoint", "kubernetes.client"]
    assert "dagster" in chains

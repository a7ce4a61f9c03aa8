"""The tests run on exactly what ships: requirements/constraints.txt pins every distribution
installed in this environment, at the installed version, and agrees with pyproject.toml.

Covered: every installed distribution (the project itself aside) is pinned with ``==`` at the
version installed; every requirement in pyproject.toml (dependencies, the ``cpu`` and ``dev``
extras, the build system) is satisfied by its pin; the pins name nothing that pyproject.toml's
closure does not install (no stale pins). This holds for the environment the suite runs in,
which `make install` builds with these constraints.

Not covered: the ``gpu`` extra (tensorflow[and-cuda] and the CUDA wheels are not installed
here, so they are not pinned), checkov's own venv (requirements/checkov.txt, installed
separately), and the image itself (no Docker engine here; its Dockerfile is checked to install
with this file in tests/test_dockerfile.py).
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "mnist-mlops"


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator and version.strip() == version and version, f"not an exact pin: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if canonicalize_name(dist.metadata["Name"]) != PROJECT
    }


def pyproject_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    listed = [*project["dependencies"], *extras["cpu"], *extras["dev"], *pyproject["build-system"]["requires"]]
    return [Requirement(text) for text in listed]


def test_every_installed_distribution_is_pinned_at_its_installed_version():
    pinned, present = pins(), installed()
    unpinned = sorted(f"{name}=={version}" for name, version in present.items() if name not in pinned)
    assert not unpinned, f"installed but not in requirements/constraints.txt: {unpinned}"
    drifted = sorted(f"{name}: installed {present[name]}, pinned {pinned[name]}"
                     for name in present if Version(present[name]) != Version(pinned[name]))  # fmt: skip
    assert not drifted, drifted


def test_no_pin_is_stale():
    stale = sorted(set(pins()) - set(installed()))
    assert not stale, f"pinned but not installed by pyproject.toml's [cpu,dev] closure: {stale}"


def test_pyproject_and_constraints_agree():
    pinned = pins()
    disagreements = []
    for requirement in pyproject_requirements():
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            disagreements.append(f"{requirement} vs constraints {version}")
    assert not disagreements, disagreements

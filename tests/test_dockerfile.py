"""The Dockerfile, parsed statically, with .dockerignore and requirements/constraints.txt:
pinned slim base, multi-stage, installs with the constraints into a venv, runs as uid 10001
with the gRPC code server, fetches nothing, holds no secrets, copies only what exists and is not
dockerignored.

What this does NOT cover: building or running the image (no docker here): the Dockerfile is
parsed, not built. The image name is checked in test_k8s_image.py.
"""

from __future__ import annotations

import json
import re

import pytest
from k8s_checks import ROOT, UID

Dockerfile = tuple[dict[str, str], list[dict]]  # global ARGs, stages


def parse_dockerfile(text: str) -> Dockerfile:
    """Global ARGs, and the stages: {"from", "name", "instructions": [(INSTRUCTION, arguments)]}."""
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "instructions": []})
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1]["instructions"].append((instruction, rest))
    return args, stages


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (or a folder holding it) from the build context."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    for pattern in patterns:
        regex = re.escape(pattern.strip("/"))
        regex = (
            regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_from_a_pinned_slim_base(dockerfile: Dockerfile) -> None:
    _, stages = dockerfile
    assert len(stages) >= 2
    names = set()
    for stage in stages:
        image = stage["from"]
        if image not in names:  # not an earlier stage
            assert "$" not in image, f"unresolved base image {image}"
            reference = image.split("@")[0]
            assert ":" in reference.rsplit("/", 1)[-1], f"{image}: no tag"
            tag = reference.rsplit(":", 1)[1]
            assert tag != "latest", image
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", reference), f"{image}: not a pinned 3.11 slim"
        if stage["name"]:
            names.add(stage["name"])


def test_dockerfile_installs_with_the_constraints_in_a_venv(dockerfile: Dockerfile) -> None:
    _, stages = dockerfile
    builder = stages[0]["instructions"]
    runs = " ".join(rest for instruction, rest in builder if instruction == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert re.search(r'pip install --no-cache-dir -c requirements/constraints\.txt "\.\[cpu\]"', runs), runs
    tools = re.search(r"pip install --no-cache-dir -c requirements/constraints\.txt pip setuptools wheel", runs)
    assert tools and tools.start() < runs.index('".[cpu]"'), "the build tools are installed first, pinned"
    assert "-e " not in runs and "--editable" not in runs
    assert any(i == "COPY" and "requirements/constraints.txt" in rest for i, rest in builder)
    final = stages[-1]["instructions"]
    assert any(i == "COPY" and rest.startswith("--from=builder /opt/venv /opt/venv") for i, rest in final)


def test_dockerfile_final_stage_runs_as_10001_with_the_grpc_server(dockerfile: Dockerfile) -> None:
    _, stages = dockerfile
    final = stages[-1]["instructions"]
    kinds = [instruction for instruction, _ in final]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1] == str(UID)
    last_user = len(kinds) - 1 - kinds[::-1].index("USER")
    assert "RUN" not in kinds[last_user:], "a RUN after the last USER runs as root"
    setup = " ".join(rest for instruction, rest in final if instruction == "RUN")
    assert "--uid 10001" in setup and "--gid 10001" in setup and "nologin" in setup
    env = " ".join(rest for instruction, rest in final if instruction == "ENV")
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONUNBUFFERED=1", "DAGSTER_HOME=/opt/dagster/home"):
        assert setting in env
    assert ("WORKDIR", "/app") in final
    exposed = {port for instruction, rest in final if instruction == "EXPOSE" for port in rest.split()}
    assert {"8080", "4000"} <= exposed
    commands = [rest for instruction, rest in final if instruction in {"CMD", "ENTRYPOINT"}]
    assert commands, "no CMD or ENTRYPOINT"
    cmd = json.loads([rest for instruction, rest in final if instruction == "CMD"][-1])
    assert cmd == ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "mnist_assets.definitions"]


def test_dockerfile_fetches_nothing_and_holds_no_secrets(dockerfile: Dockerfile) -> None:
    args, stages = dockerfile
    everything = [(i, rest) for stage in stages for i, rest in stage["instructions"]]
    for instruction, rest in everything:
        assert not (instruction == "ADD" and re.search(r"https?://", rest)), rest
        if instruction in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK)", rest, re.I), rest
    assert "latest" not in " ".join(args.values())


def test_dockerfile_copies_exist_and_are_not_dockerignored(dockerfile: Dockerfile) -> None:
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "negated patterns: extend ignored() first"
    problems = []
    for stage in stages:
        for instruction, rest in stage["instructions"]:
            if instruction != "COPY" or rest.startswith("--from"):
                continue
            for source in [w for w in rest.split() if not w.startswith("--")][:-1]:
                path = ROOT / source
                if not path.exists():
                    problems.append(f"COPY {source}: not in the repo")
                    continue
                files = [path] if path.is_file() else sorted(path.rglob("*.py"))
                problems += [
                    f"COPY {source}: {f.relative_to(ROOT)} is dropped by .dockerignore"
                    for f in files
                    if ignored(str(f.relative_to(ROOT)), patterns)
                ]
    assert not problems, "\n".join(problems)


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "var", "var/data/processed/mnist.npz", "tests/test_serving.py"):
        assert ignored(path, patterns), path
    for path in ("benchmarks/results/x.json", "mnist_ml/__pycache__/idx.cpython-311.pyc", "x/data.tar", "a.npz"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "mnist_ml/idx.py", "requirements/constraints.txt", "run_config.yaml"):
        assert not ignored(path, patterns), path


def test_serving_stage_installs_the_server_without_tensorflow(dockerfile: Dockerfile) -> None:
    """The ``serving`` stage installs, with the constraints, the distributions of every package
    ``python -m mnist_serving`` needs (its imports, found in a fresh interpreter, checked against
    a list of what the server requires), none of TensorFlow, Keras, Dagster or KServe, whose
    modules the server does not even import; it runs as uid 10001. Not covered: that the image
    builds, or optional imports (uvicorn picks up watchfiles when it is installed)."""
    import subprocess
    import sys

    stage = next(s for s in dockerfile[1] if s["name"] == "serving")
    run = " ".join(rest for instruction, rest in stage["instructions"] if instruction == "RUN")
    install = re.search(r"pip install --no-cache-dir -c /tmp/constraints.txt ([\w\- ]+?) &&", run)
    assert install, run
    installed = set(install.group(1).split())
    probe = "import sys, mnist_serving.__main__, mnist_serving.server; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    imported = {m.split(".")[0] for m in out.stdout.split()}
    assert not imported & {"tensorflow", "keras", "dagster", "kserve", "fastapi"}
    needed = {"numpy": "numpy", "onnxruntime": "onnxruntime", "orjson": "orjson", "uvicorn": "uvicorn"}
    needed["prometheus_client"] = "prometheus-client"
    assert set(needed) <= imported
    assert installed == {*needed.values(), "uvloop", "httptools"}  # uvicorn's fast loop and parser, when running
    assert ("USER", str(UID)) in stage["instructions"]

"""The code location loads, the jobs resolve, run_config.yaml is the one complete set of
per-run choices, every deployment-wide setting comes from its resource's environment
variable, and Dagster's own `dg check defs` accepts the project.

Not covered: a run picking the settings up (tests/test_cli_job.py and the end-to-end tests
set them through the environment)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInvalidConfigError, Definitions, define_asset_job, validate_run_config
from dagster._core.errors import DagsterConfigMappingFunctionError

from mnist_assets.assets import production_monitoring
from mnist_assets.config import PipelineConfig
from mnist_assets.definitions import defs
from mnist_serving.options import ServerOptions
from resources import DataStore, ModelDeployer, ModelRegistry, RunConfigFile
from resources.environment import environment_variables, from_environment

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIG = ROOT / "run_config.yaml"


def _fields(model) -> set[str]:
    """Dotted paths of every leaf field of a Config class."""
    paths = set()
    for name, info in model.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and hasattr(nested, "model_fields"):
            paths |= {f"{name}.{sub}" for sub in _fields(nested)}
        else:
            paths.add(name)
    return paths


def _keys(mapping, prefix="") -> set[str]:
    paths = set()
    for key, value in mapping.items():
        paths |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return paths


def test_definitions_load_and_jobs_resolve():
    job = defs.resolve_job_def("mnist_training")
    assets = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert assets == {
        "mnist_dataset",
        "notmnist_dataset",
        "production_labels",
        "mnist_classifier",
        "mnist_concept_model",
    }
    pipeline = defs.resolve_job_def("mnist_pipeline")
    chain = {key.to_user_string() for key in pipeline.asset_layer.executable_asset_keys}
    assert chain == assets | {"uploaded_model", "model_deployment", "deployment_test_results"}
    checks = {key.name for key in job.asset_layer.asset_graph.asset_check_keys}
    assert "test_accuracy_at_least_minimum" in checks and "detection_rate_at_least_minimum" in checks


# Heavy packages that only some steps or runs need. Every process that loads the code location
# imports what it imports: `make run`'s process, its step server, the webserver and the daemon.
IMPORTED_ON_USE = ("kubernetes", "dagster_k8s", "tensorflow", "keras", "onnx", "onnxruntime", "scipy", "matplotlib")


def test_loading_the_code_location_leaves_heavy_packages_until_used():
    """A fresh interpreter loading the code location (as `make run` and the step server do) imports
    none of IMPORTED_ON_USE; each is imported by the step or run that needs it. Not covered: the
    time it takes (benchmarks/chain.py measures the orchestration overhead)."""
    probe = f"import sys, mnist_assets.definitions; print(*[m for m in {IMPORTED_ON_USE!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []


def test_run_config_file_lists_every_parameter_and_validates():
    config = yaml.safe_load(RUN_CONFIG.read_text())
    assert _keys(config) == _fields(PipelineConfig)
    resolved = validate_run_config(defs.resolve_job_def("mnist_training"), config)
    assert resolved["ops"]["mnist_classifier"]["config"]["architecture"] == "cnn"
    pipeline = validate_run_config(defs.resolve_job_def("mnist_pipeline"), config)
    assert pipeline["ops"]["deliver_candidate"]["config"]["min_accuracy"] == 0.97


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"classifier": {"learning_rate": -0.1}}, "classifier.learning_rate"),
        ({"concept_model": {"threshold_percentile": 100}}, "concept_model.threshold_percentile"),
        ({"classifier": {"architecture": "transformer"}}, "classifier.architecture"),
        ({"classifier": {"learnin_rate": 0.1}}, "learnin_rate"),
        ({"mnist": {"mirrors": []}}, "mnist.mirrors"),
        ({"serving": {"port": 8080}}, "serving"),  # a deployment setting, not a run choice
    ],
)
def test_bad_value_fails_at_validation_naming_the_field(bad, field):
    with pytest.raises((DagsterInvalidConfigError, DagsterConfigMappingFunctionError)) as error:
        validate_run_config(defs.resolve_job_def("mnist_training"), bad)
    message = str(error.value) + str(error.value.__cause__ or "")
    assert field in message


def test_every_asset_has_a_group_an_owner_and_a_description_and_materialize_all_resolves():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in {"data", "models", "delivery", "monitoring"}, key
        assert node.owners == ["team:mlops"], key
        assert len(node.description or "") > 40, key
    # "Materialize all" in the UI runs the implicit asset job with every default.
    everything = defs.resolve_implicit_global_asset_job_def()
    assert validate_run_config(everything, {})["ops"]["mnist_classifier"]["config"]["hidden_units"] == [64]
    assert {s.name for s in defs.sensors} == {
        "drift_sensor",
        "new_data_sensor",
        "failure_alert",
        "drift_alert",
        "monitoring_automation",
    }


RESOURCES = (DataStore, ModelRegistry, ModelDeployer, RunConfigFile)


def test_each_setting_has_one_owner():
    """Deployment-wide settings live on resources (one variable each); run choices in
    run_config.yaml; no name is in both."""
    variables = [variable for cls in RESOURCES for variable in environment_variables(cls).values()]
    assert len(variables) == len(set(variables)), variables
    assert all(variable.startswith("MNIST_") for variable in variables)
    run_sections = set(PipelineConfig.model_fields)
    assert not run_sections & {"data_store", "registry", "serving", "deployer"}
    for cls in RESOURCES:
        assert set(environment_variables(cls)) == set(cls.model_fields), (
            f"{cls.__name__} has a field without a variable"
        )


def test_resources_take_their_settings_from_the_environment(monkeypatch, tmp_path):
    job_def = define_asset_job("probe", selection=[production_monitoring])
    monkeypatch.setenv("MNIST_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_SERVING_PORT", "9123")
    monkeypatch.delenv("MNIST_SERVING_HOST", raising=False)
    resources = {
        "data_store": from_environment(DataStore),
        "deployer": from_environment(ModelDeployer),
        "registry": from_environment(ModelRegistry),
        "run_config": from_environment(RunConfigFile),
    }
    job = Definitions(assets=[production_monitoring], jobs=[job_def], resources=resources).resolve_job_def("probe")
    resolved = validate_run_config(job, {})["resources"]
    assert resolved["data_store"]["config"]["root"] == str(tmp_path / "data")
    assert resolved["deployer"]["config"]["port"] == 9123
    assert resolved["deployer"]["config"]["host"] == "127.0.0.1"  # unset: the field's default
    monkeypatch.setenv("MNIST_SERVING_BACKEND", "kubernetes")
    assert from_environment(ModelDeployer).backend == "kubernetes"
    for variable, bad in [("MNIST_SERVING_PORT", "not-a-port"), ("MNIST_SERVING_BACKEND", "docker")]:
        monkeypatch.setenv(variable, bad)
        with pytest.raises(ValueError, match=rf"\${variable}='{bad}'"):
            from_environment(ModelDeployer)
        monkeypatch.delenv(variable)


def test_bad_server_options_are_refused_naming_them(monkeypatch):
    assert ServerOptions.from_environment({"MNIST_SERVER_MAX_BATCH": "64"}).max_batch == 64
    for variable, bad, message in [
        ("MNIST_SERVER_MAX_BATCH", "0", "max_batch must be at least 1"),
        ("MNIST_SERVER_INPUT_SAMPLE_RATE", "1.5", "input_sample_rate must be between 0 and 1"),
        ("MNIST_SERVER_REQUEST_LOG", "maybe", "MNIST_SERVER_REQUEST_LOG='maybe'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ServerOptions.from_environment({variable: bad})
    # The server's own command line refuses the same, naming the option.
    result = subprocess.run(
        [sys.executable, "-m", "mnist_serving", "--model-dir", str(ROOT), "--max-batch", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "max_batch must be at least 1" in result.stderr, result.stderr


@pytest.mark.slow
def test_dg_check_defs_accepts_the_project():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

"""The code location loads, the job resolves, and run_config.yaml is the one complete config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterInvalidConfigError, validate_run_config
from dagster._core.errors import DagsterConfigMappingFunctionError

from mnist_assets.config import PipelineConfig
from mnist_assets.definitions import defs

RUN_CONFIG = Path(__file__).resolve().parents[1] / "run_config.yaml"


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


def test_run_config_file_lists_every_parameter_and_validates():
    config = yaml.safe_load(RUN_CONFIG.read_text())
    assert _keys(config) == _fields(PipelineConfig)
    resolved = validate_run_config(defs.resolve_job_def("mnist_training"), config)
    assert resolved["ops"]["mnist_classifier"]["config"]["hidden_units"] == [256, 64]
    assert resolved["resources"]["data_store"]["config"]["root"] == "var/data"
    pipeline = validate_run_config(defs.resolve_job_def("mnist_pipeline"), config)
    assert pipeline["resources"]["deployer"]["config"]["host"] == "127.0.0.1"
    assert pipeline["ops"]["deployment_test_results"]["config"]["min_accuracy"] == 0.97


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"classifier": {"learning_rate": -0.1}}, "classifier.learning_rate"),
        ({"concept_model": {"threshold_percentile": 100}}, "concept_model.threshold_percentile"),
        ({"classifier": {"architecture": "transformer"}}, "classifier.architecture"),
        ({"classifier": {"learnin_rate": 0.1}}, "learnin_rate"),
        ({"mnist": {"mirrors": []}}, "mnist.mirrors"),
        ({"serving": {"port": 70000}}, "serving.port"),
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
    assert validate_run_config(everything, {})["ops"]["mnist_classifier"]["config"]["hidden_units"] == [256, 64]
    assert {s.name for s in defs.sensors} == {"drift_sensor", "new_data_sensor", "failure_alert"}

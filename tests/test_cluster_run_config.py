"""The cluster run config (the ConfigMap in deploy/k8s/run-config.yaml): run_config.yaml with
the cluster's paths and serving backend, each such line marked CLUSTER, valid as PipelineConfig.

What this does NOT cover: that the paths exist on the cluster's volumes.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from k8s_checks import ROOT, k8s_documents

pytestmark = pytest.mark.k8s

# Where the cluster run config differs from run_config.yaml; every such line says CLUSTER.
CLUSTER_OVERRIDES = {
    ("data_store", "root"): "/data",
    ("registry", "root"): "/models",
    ("serving", "backend"): "kubernetes",
    ("serving", "host"): "0.0.0.0",
    ("serving", "state_dir"): "/data/serving",
}


def test_cluster_run_config_is_run_config_yaml_with_cluster_paths() -> None:
    from mnist_assets.config import PipelineConfig

    (config_map,) = [obj for name, obj in k8s_documents() if name == "run-config.yaml"]
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "mnist-run-config"
    text = config_map["data"]["run_config.yaml"]
    cluster = yaml.safe_load(text)
    expected = copy.deepcopy(yaml.safe_load((ROOT / "run_config.yaml").read_text()))
    for (section, key), value in CLUSTER_OVERRIDES.items():
        expected[section][key] = value
    assert cluster == expected, "deploy/k8s/run-config.yaml differs from run_config.yaml beyond the CLUSTER lines"
    PipelineConfig.model_validate(cluster)
    for (_, key), value in CLUSTER_OVERRIDES.items():
        (line,) = [line for line in text.splitlines() if re.match(rf"\s+{key}: {re.escape(value)}\b", line)]
        assert "# CLUSTER" in line, line

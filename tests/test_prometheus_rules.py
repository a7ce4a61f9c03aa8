"""The shipped Prometheus files, checked by promtool and against the rest of the project.

What this covers:
- ``promtool check config`` on deploy/prometheus/prometheus.yml (which checks its rules file
  too) and ``promtool check rules`` on deploy/prometheus/rules.yml;
- ``promtool test rules`` on tests/prometheus/rules_test.yml, and that it tests every alert
  of the rules file both firing and staying quiet;
- the bounds the rules share with run_config.yaml (OOD rate and its minimum volume, p99 latency)
  are the values run_config.yaml holds;
- deploy/k8s/monitoring.yaml: the PrometheusRule's spec.groups is exactly the rules file's
  groups; both objects against the fields of the prometheus-operator v1 CRDs that we use
  (types, required fields, duration patterns, transcribed from prometheus-operator v0.82-0.84;
  unknown fields refused); the ServiceMonitor selects the public serving Service built by
  mnist_delivery.k8s_endpoint (not the blue/green colors' private ones), on its port, and labels
  the job as the rules expect;
- the Grafana provisioning files and dashboard: every panel has a query and uses the
  provisioned datasource.

What this does NOT cover:
- the rules against live metrics and every dashboard query returning data:
  test_prometheus_e2e.py;
- the full CRD schemas (not vendored), an API server or the Prometheus Operator applying them,
  Alertmanager routing, Grafana loading or rendering the dashboard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_checks import DEPLOY, NAMESPACE, ROOT, k8s_documents

from mnist_delivery.k8s_endpoint import COLORS, SHIPPED, service

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = Path(__file__).parent / "prometheus" / "rules_test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mnist-serving.json"
JOB = "mnist-serving"

# The monitoring.coreos.com/v1 fields we use, with the types and patterns of the operator's CRDs.
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRING_MAP},
    "additionalProperties": False,
}


def _crd_object(kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": ["string", "integer"]},
        "for": DURATION,
        "keep_firing_for": DURATION,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
PROMETHEUS_RULE = _crd_object(
    "PrometheusRule",
    {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": DURATION,
                        "limit": {"type": "integer"},
                        "rules": {"type": "array", "items": RULE},
                    },
                    "additionalProperties": False,
                },
            }
        },
        "additionalProperties": False,
    },
)
SERVICE_MONITOR = _crd_object(
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["endpoints", "selector"],
        "properties": {
            "jobLabel": {"type": "string"},
            "selector": {
                "type": "object",
                "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
                "additionalProperties": False,
            },
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def alerts(rules: dict) -> dict[str, dict]:
    """alert name -> rule, over every group."""
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def monitoring_objects() -> dict[str, dict]:
    """kind -> object, for deploy/k8s/monitoring.yaml."""
    return {obj["kind"]: obj for name, obj in k8s_documents() if name == "monitoring.yaml"}


def _promtool(prometheus_binaries, *args: str, cwd: Path = ROOT) -> None:
    result = prometheus_binaries.promtool_run(*args, cwd=cwd)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}"


def test_promtool_checks_the_config_and_rules(prometheus_binaries):
    _promtool(prometheus_binaries, "check", "config", str(CONFIG))
    _promtool(prometheus_binaries, "check", "rules", str(RULES))


def test_promtool_unit_tests_pass(prometheus_binaries):
    _promtool(prometheus_binaries, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [str(Path("..", "..", RULES.relative_to(ROOT)))]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = set(alerts(load_rules()))
    assert names >= {
        "MnistServingDown",
        "MnistOodRateHigh",
        "MnistServerErrors",
        "MnistClientErrors",
        "MnistLatencyP99High",
        "MnistServingVersionChanged",
    }
    assert names - firing == set(), "alerts never seen firing in tests/prometheus/rules_test.yml"
    assert names - quiet == set(), "alerts never checked quiet in tests/prometheus/rules_test.yml"


def test_bounds_are_run_config_values():
    """The bounds the rules share with the run config: changing one there needs a change here."""
    run_config = yaml.safe_load((ROOT / "run_config.yaml").read_text())
    rules = alerts(load_rules())
    ood = re.fullmatch(
        r".*\) > ([0-9.]+)\s+and sum\(increase\(.*\)\) >= ([0-9]+)", rules["MnistOodRateHigh"]["expr"], re.S
    )
    assert ood, rules["MnistOodRateHigh"]["expr"]
    assert float(ood[1]) == run_config["monitoring"]["max_ood_rate"]
    assert int(ood[2]) == run_config["monitoring"]["min_images"]
    p99 = re.fullmatch(r"histogram_quantile\(0\.99,.*\) > ([0-9.]+)", rules["MnistLatencyP99High"]["expr"], re.S)
    assert p99, rules["MnistLatencyP99High"]["expr"]
    assert float(p99[1]) == run_config["deployment_tests"]["max_p99_latency_ms"] / 1000


def test_every_rule_reads_the_scrape_job_of_the_shipped_config():
    config = yaml.safe_load(CONFIG.read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == [JOB]
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert config["rule_files"] == [RULES.name]
    for name, rule in alerts(load_rules()).items():
        selectors = re.findall(r"\{([^}]*)\}", rule["expr"])
        assert selectors and all(f'job="{JOB}"' in s for s in selectors), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert alerts(load_rules())["MnistServingVersionChanged"]["labels"]["severity"] == "info"


@pytest.mark.k8s
def test_prometheus_rule_is_the_rules_file():
    rule = monitoring_objects()["PrometheusRule"]
    assert rule["spec"]["groups"] == load_rules()["groups"], (
        "deploy/k8s/monitoring.yaml's PrometheusRule differs from deploy/prometheus/rules.yml: "
        "copy the rules file's groups into its spec.groups"
    )


@pytest.mark.k8s
def test_monitoring_objects_have_the_crd_structure():
    objects = monitoring_objects()
    assert set(objects) == {"PrometheusRule", "ServiceMonitor"}
    for obj, schema in ((objects["PrometheusRule"], PROMETHEUS_RULE), (objects["ServiceMonitor"], SERVICE_MONITOR)):
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
        ]
        assert not errors, f"{obj['kind']}:\n" + "\n".join(errors)
        assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.k8s
def test_service_monitor_scrapes_the_serving_service():
    monitor = monitoring_objects()["ServiceMonitor"]["spec"]
    svc = service(SHIPPED)
    labels = svc["metadata"]["labels"]
    # Of the public Service and the colors' private ones, only the public one: each serving pod
    # is scraped once, and only the color that takes traffic.
    services = [svc, *(service(SHIPPED, color) for color in COLORS)]
    selected = [
        s["metadata"]["name"]
        for s in services
        if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [SHIPPED.name]
    assert monitor["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {port["name"] for port in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The job label is the Service's value of jobLabel: the job the rules read.
    assert labels[monitor["jobLabel"]] == JOB


def test_grafana_dashboard_uses_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mnist.yaml").read_text())
    assert [p["type"] for p in providers["providers"]] == ["file"]
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(set(titles)) == len(titles)
    assert {
        "Request rate",
        "Latency percentiles",
        "Out-of-distribution rate",
        "Predicted-class mix",
        "Serving version",
    } <= set(titles)
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert all(t["expr"] and f'job="{JOB}"' in t["expr"] for t in panel["targets"]), panel["title"]

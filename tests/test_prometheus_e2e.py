"""End to end: a real Prometheus scrapes a real endpoint, notMNIST traffic raises the OOD alert,
and every Grafana panel's query returns data.

The endpoint is a tiny registry version (untrained models, conftest ``tiny_versions``) served
by ``LocalEndpoint`` on a free port; Prometheus (tests/prometheus_server.py) runs the shipped
deploy/prometheus/prometheus.yml with its target pointed at that port and 1 s scrape and
evaluation intervals, and the shipped rules with every ``for:`` cut to ``FOR``. The letters
come from the real notMNIST archive (../shared/data or the upstream mirror; skipped if neither).

What this covers:
- the OOD alert going inactive -> pending -> firing, read from Prometheus' /api/v1/alerts, with
  the flagged share Prometheus computes equal to the share the endpoint answered;
- every panel query of deploy/grafana/dashboards/mnist-serving.json returning at least one
  series from the live Prometheus.

What this does NOT cover:
- the other alerts firing live (promtool unit tests cover them: test_prometheus_rules.py), the
  shipped ``for:`` durations in real time, Alertmanager, Grafana itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from prometheus_server import PrometheusServer
from test_prometheus_rules import CONFIG, DASHBOARD, JOB, load_rules

from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.datasets import NOTMNIST_ARCHIVE
from mnist_ml.download import fetch_verified
from mnist_ml.notmnist import load_notmnist, safe_extract, validate_archive

pytestmark = pytest.mark.slow

FOR = "10s"  # every rule's `for:` in the test copy
ALERT = "MnistOodRateHigh"
LETTERS = 600  # over the rule's minimum of 200 images in 5 minutes


def short_for_rules() -> dict:
    """The shipped rules, with every ``for:`` cut to ``FOR`` and nothing else changed."""
    rules = load_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    return rules


@pytest.fixture(scope="module")
def letters(real_mirrors, tmp_path_factory) -> np.ndarray:
    folder = tmp_path_factory.mktemp("notmnist")
    quiet = lambda _line: None  # noqa: E731
    fetched = fetch_verified(NOTMNIST_ARCHIVE, real_mirrors["notmnist"], folder, validate=validate_archive, log=quiet)
    glyphs = load_notmnist(safe_extract(fetched.path, folder / "raw"), log=quiet)
    return np.random.default_rng(0).permutation(glyphs.images)[:LETTERS]


@pytest.fixture(scope="module")
def endpoint(tiny_versions, tmp_path_factory):
    _, versions = tiny_versions
    local = LocalEndpoint(tmp_path_factory.mktemp("serving"), port=0, log=lambda _line: None)
    deployed = local.deploy(versions[0].path, str(versions[0].version))
    yield deployed
    local.stop()


@pytest.fixture(scope="module")
def prometheus(prometheus_binaries, endpoint):
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [endpoint.url.removeprefix("http://")]}]
    with PrometheusServer(prometheus_binaries, config, short_for_rules()) as server:
        yield server


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"no {what} within {timeout} s")


@dataclass(frozen=True)
class Timeline:
    flagged_share: float  # of the letters, as the endpoint answered
    states: list[tuple[float, str, dict]]  # (seconds since traffic started, state, the alert) at each change


def alert_state(prometheus: PrometheusServer) -> tuple[str, dict]:
    found = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == ALERT]
    assert len(found) <= 1, found
    return (found[0]["state"], found[0]) if found else ("inactive", {})


@pytest.fixture(scope="module")
def ood_timeline(prometheus, endpoint, letters) -> Timeline:
    """Send the letters once the endpoint is scraped, then watch the alert until it fires."""
    wait_for(lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), 30, "successful scrape")
    assert alert_state(prometheus)[0] == "inactive"
    start = time.monotonic()
    flagged = float(np.mean(EndpointClient(endpoint.url).predict(letters)["is_ood"]))
    states: list[tuple[float, str, dict]] = []

    def fired() -> bool:
        state, alert = alert_state(prometheus)
        if not states or states[-1][1] != state:
            states.append((time.monotonic() - start, state, alert))
        return state == "firing"

    wait_for(fired, 60, f"{ALERT} firing (states seen: {[s[:2] for s in states]})", interval=0.1)
    return Timeline(flagged, states)


def test_ood_alert_goes_pending_then_firing(ood_timeline, prometheus):
    # The premise: the endpoint itself flags the letters above the alert's 20 % bound.
    assert ood_timeline.flagged_share > 0.2, ood_timeline.flagged_share
    seen = [state for _, state, _ in ood_timeline.states]
    assert seen in (["inactive", "pending", "firing"], ["pending", "firing"]), ood_timeline.states
    (pending_at, _, _), (firing_at, _, firing) = ood_timeline.states[-2:]
    for_seconds = float(FOR.removesuffix("s"))
    assert firing_at - pending_at >= for_seconds - 1.5, ood_timeline.states  # scrape and evaluation jitter
    assert firing["labels"] == {"alertname": ALERT, "severity": "warning"}
    # What Prometheus computed is what the endpoint answered: the same images, the same flags.
    assert float(firing["value"]) == pytest.approx(ood_timeline.flagged_share, abs=0.005)
    assert "flagged out of distribution" in firing["annotations"]["description"]
    print(
        f"{ALERT}: {ood_timeline.flagged_share:.1%} of {LETTERS} letters flagged; pending after {pending_at:.1f} s, "
        f"firing after {firing_at:.1f} s from the start of traffic (for: {FOR}, 1 s scrape/evaluation)"
    )


def test_every_dashboard_query_returns_data(ood_timeline, prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    empty = [
        f"{panel['title']} ({target['refId']}): {target['expr']}"
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if not prometheus.query(target["expr"])
    ]
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    (version,) = prometheus.query(f'max by (version) (mnist_model_version_info{{job="{JOB}"}})')
    classes = prometheus.query(f'sum by (class) (rate(mnist_predicted_class_total{{job="{JOB}"}}[5m]))')
    assert version["metric"]["version"] == "1"
    assert sorted(int(series["metric"]["class"]) for series in classes) == list(range(10))

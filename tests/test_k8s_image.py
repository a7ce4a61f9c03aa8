"""The image is declared once (deploy/image.env) and every place that names it says the same,
so pinning it (a registry and a digest) is one value to change and a test that lists what is
left to update.

Not covered: that the image exists or that the digest matches a build (no registry here)."""

from __future__ import annotations

import pytest
from k8s_checks import DEPLOY, k8s_documents, load_dagster_yaml, load_helm_values, mnist_deployment

from mnist_delivery.k8s_endpoint import SHIPPED, ServingSpec
from resources import ModelDeployer

pytestmark = pytest.mark.k8s


def declared_image() -> str:
    lines = [line for line in (DEPLOY / "image.env").read_text().splitlines() if line.startswith("MNIST_IMAGE=")]
    (line,) = lines
    return line.removeprefix("MNIST_IMAGE=")


def helm_image(image: dict) -> str:
    """As the chart's dagster.dagsterImage.name renders it: repository:tag. For a digest,
    repository ends in @sha256 and tag is the hex digest."""
    return f"{image['repository']}:{image['tag']}"


def named_images() -> dict[str, str]:
    """Where the image is named: what each place says."""
    (settings,) = [obj for name, obj in k8s_documents() if name == "settings.yaml"]
    found = {
        "deploy/k8s/settings.yaml MNIST_IMAGE": settings["data"]["MNIST_IMAGE"],
        "deploy/dagster.yaml run_launcher job_image": load_dagster_yaml()["run_launcher"]["config"]["job_image"],
        "deploy/helm/values.yaml user deployment image": helm_image(mnist_deployment(load_helm_values())["image"]),
        "ServingSpec.image": ServingSpec().image,
        "SHIPPED.image": SHIPPED.image,
        "ModelDeployer.k8s_image": ModelDeployer().k8s_image,
    }
    for name, obj in k8s_documents():
        for container in _containers(obj):
            found[f"deploy/k8s/{name} {obj['kind']}/{obj['metadata']['name']} {container['name']}"] = container["image"]
    return found


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "Deployment":
        return spec["template"]["spec"]["containers"]
    if obj["kind"] == "InferenceService":
        return spec["predictor"]["containers"]
    return []


def test_every_place_names_the_declared_image():
    image = declared_image()
    places = named_images()
    assert sum(1 for place in places if place.startswith("deploy/k8s/")) >= 2  # serving + InferenceService
    differ = {place: named for place, named in places.items() if named != image}
    assert not differ, f"deploy/image.env says {image}; these differ: {differ}"

"""What ``mnist-ops`` does, as plain methods over the resources the Dagster code uses:
``ModelRegistry``, ``ModelDeployer`` and ``DataStore``, each built from the ``MNIST_*``
environment by ``resources.environment.from_environment``, exactly as the code location does.

Invariants:
- a version takes public traffic only through ``ModelDeployer.deploy`` (started beside what
  serves, ready, then handed the public socket: no request dropped);
- promote moves the registry's ``production`` alias only after the deploy succeeded, so a
  failed deploy leaves the registry as it was; rollback lets the registry pick the target
  (``previous``, never a failed version), then deploys it, and says what serves if that fails;
- a version marked failed is never deployed by promote, and there is no ``--force``: the
  registry refuses to make it production and rollback skips it, so serving it would leave the
  endpoint and the aliases disagreeing. Publish a new version instead;
- test images go out as test traffic (``x-mnist-traffic: test``): served, but kept out of the
  request log, so an operator's checks never look like production drift."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image, ImageDraw, ImageFont

from mnist_delivery.backend import DeployError, Endpoint, ServerProcess
from mnist_ml.image_folder import decode_image
from mnist_ml.log import Log
from mnist_ml.model_contract import CLASSIFIER, CONCEPT_MODEL, TEST_TRAFFIC
from mnist_ml.registry import PRODUCTION, FileModelRepository, ModelVersion
from resources import DataStore, ModelDeployer, ModelRegistry
from resources.environment import from_environment


class OperatorError(RuntimeError):
    """What was asked cannot be done; the message says why and what to do instead."""


@dataclass(frozen=True)
class VersionRow:
    """One registry version as ``list`` shows it: status and key metrics from its manifest."""

    version: int
    aliases: list[str]
    failed: str | None  # the reason it was marked failed
    created_at: str
    test_accuracy: float | None  # classifier, MNIST test set, at training
    detection_rate: float | None  # concept model on notMNIST, at training
    false_positive_rate: float | None  # concept model on clean MNIST test digits
    parity: Any  # the manifest's "parity" entry, if its publisher recorded one


@dataclass(frozen=True)
class Deployed:
    """The outcome of promote or rollback: which version serves where, and the aliases after."""

    version: int
    endpoint: Endpoint
    aliases: dict[str, int]
    replaced: int | None  # the production version before


@dataclass(frozen=True)
class Prediction:
    url: str
    version: str  # the version that answered
    image: str  # where the image came from
    class_id: int
    probabilities: list[float]
    concept_score: float
    is_ood: bool


class Operator:
    def __init__(self, registry: ModelRegistry, deployer: ModelDeployer, data_store: DataStore, log: Log = print):
        self.repository: FileModelRepository = registry.repository()
        self.deployer, self.data_store, self.log = deployer, data_store, log

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, log: Log = print) -> Operator:
        """The resources as the code location builds them (``mnist_assets/definitions.py``)."""
        return cls(
            from_environment(ModelRegistry, environ),
            from_environment(ModelDeployer, environ),
            from_environment(DataStore, environ),
            log,
        )

    # -- the registry ----------------------------------------------------------------------

    def versions(self) -> list[VersionRow]:
        """Every complete version, oldest first."""
        names: dict[int, list[str]] = {}
        for alias, number in sorted(self.repository.aliases().items()):
            names.setdefault(number, []).append(alias)
        return [_row(self.repository.get(n), names.get(n, [])) for n in self.repository.versions()]

    def production(self) -> int | None:
        return self.repository.aliases().get(PRODUCTION)

    # -- the endpoint ----------------------------------------------------------------------

    def where(self) -> tuple[Endpoint | None, list[ServerProcess]]:
        """What serves (the recorded endpoint) and every server process or pod, after the
        backend reconciled them (servers not recorded are stopped)."""
        servers = self.deployer.serving(log=self.log)
        return self.deployer.current(log=self.log), servers

    def promote(self, ref: str) -> Deployed:
        """Serve ``ref`` (a version number or an alias) and make it production."""
        version = self.repository.resolve(ref)
        if version.failed is not None:
            raise OperatorError(
                f"version {version.version} is marked failed ({version.failed}); a failed version is not "
                "promoted (the mark is final): pick another with `mnist-ops list`, or publish a new one (make run)"
            )
        before = self.production()
        try:
            endpoint = self.deployer.deploy(version.path, str(version.version), log=self.log)
        except DeployError as exc:
            raise OperatorError(
                f"version {version.version} could not be deployed ({exc}); the registry is unchanged and "
                f"{self._serving_now()} serves"
            ) from exc
        aliases = self.repository.promote(version.version)
        return Deployed(version.version, endpoint, aliases, before)

    def rollback(self) -> Deployed:
        """One step back: the registry's ``previous`` becomes production, then it serves."""
        before = self.production()
        target = self.repository.rollback()
        try:
            endpoint = self.deployer.deploy(target.path, str(target.version), log=self.log)
        except DeployError as exc:
            raise OperatorError(
                f"the registry now names version {target.version} production, but deploying it failed ({exc}); "
                f"{self._serving_now()} serves. Retry with `mnist-ops promote {target.version}`"
            ) from exc
        return Deployed(target.version, endpoint, self.repository.aliases(), before)

    def stop(self) -> Endpoint | None:
        """Stop every server of the endpoint; what was serving, or None if nothing ran."""
        return self.deployer.stop(log=self.log)

    def predict(self, image: np.ndarray, source: str, url: str | None = None) -> Prediction:
        """Send one 28x28 uint8 image to the endpoint (or to ``url``) as test traffic."""
        if url is None:
            endpoint = self.deployer.current(log=self.log)
            if endpoint is None:
                raise OperatorError("no endpoint is running: start one with `mnist-ops promote <version>`")
            url = endpoint.url
        client = self.deployer.client(url, traffic=TEST_TRAFFIC)
        try:
            response = client.predict_json(image[np.newaxis])
        except requests.RequestException as exc:
            raise OperatorError(f"the endpoint at {url} does not answer ({exc}); see `mnist-ops status`") from exc
        if response.status_code != 200:
            raise OperatorError(f"{client.infer_url} answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        outputs = {output["name"]: output["data"] for output in body["outputs"]}
        return Prediction(
            url=url,
            version=str(body.get("model_version")),
            image=source,
            class_id=int(outputs["class_ids"][0]),
            probabilities=[float(p) for p in outputs["probabilities"][:10]],
            concept_score=float(outputs["concept_score"][0]),
            is_ood=bool(outputs["is_ood"][0]),
        )

    def test_digit(self, digit: int) -> tuple[np.ndarray, str]:
        """The first MNIST test image of ``digit`` from the data store, else a drawn one."""
        try:
            arrays = self.data_store.load_arrays("mnist", keys=["x_test", "y_test"])
        except FileNotFoundError:
            return synthetic_digit(digit), f"synthetic {digit} (no MNIST test set in {self.data_store.path()})"
        index = int(np.flatnonzero(arrays["y_test"] == digit)[0])
        return arrays["x_test"][index], f"MNIST test image #{index} (label {digit})"

    def _serving_now(self) -> str:
        endpoint = self.deployer.current(log=self.log)
        return f"version {endpoint.version} at {endpoint.url}" if endpoint else "nothing"


def read_png(path: Path) -> np.ndarray:
    """A 28x28 image file as uint8 grayscale pixels (MNIST: white digit on black)."""
    if not path.is_file():
        raise OperatorError(f"{path} is not a file: give the path of a 28x28 PNG, or --digit N")
    pixels = decode_image(path)
    if isinstance(pixels, str):
        raise OperatorError(f"{path}: {pixels}; give a 28x28 grayscale PNG, white digit on black")
    return pixels


def synthetic_digit(digit: int) -> np.ndarray:
    """``digit`` drawn white on black, 28x28, roughly as MNIST centres its digits."""
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).text((14, 14), str(digit), fill=255, font=ImageFont.load_default(size=22), anchor="mm")
    return np.asarray(image, dtype=np.uint8)


def _row(version: ModelVersion, aliases: list[str]) -> VersionRow:
    training = version.manifest.get("training", {})
    notmnist = training.get(CONCEPT_MODEL, {}).get("notmnist", {})
    return VersionRow(
        version=version.version,
        aliases=aliases,
        failed=version.failed,
        created_at=str(version.manifest.get("created_at", "")),
        test_accuracy=training.get(CLASSIFIER, {}).get("test_accuracy"),
        detection_rate=notmnist.get("detection_rate"),
        false_positive_rate=notmnist.get("false_positive_rate"),
        parity=version.manifest.get("parity"),
    )

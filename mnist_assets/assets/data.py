"""Dataset assets: download from mirrors, verify, turn into compact uint8 arrays."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mnist_assets import metadata
from mnist_assets.config import MnistDataConfig, NotMnistDataConfig
from mnist_assets.step_order import CRITICAL_PATH
from mnist_delivery.traffic import relabelled_inputs
from mnist_ml import plots
from mnist_ml.datasets import DIGITS, MNIST_FILES, NOTMNIST_ARCHIVE, class_counts, load_mnist
from mnist_ml.download import FetchResult
from mnist_ml.idx import validate_idx
from mnist_ml.image_folder import load_image_folder
from mnist_ml.notmnist import LETTERS, load_notmnist, safe_extract, validate_archive
from resources import DataStore, ModelDeployer

OWNERS = ["team:mlops"]
SAMPLES_PER_CLASS = 4


def _fetch(
    context: AssetExecutionContext,
    data_store: DataStore,
    config: MnistDataConfig | NotMnistDataConfig,
    filename: str,
    sha256: str | None,
    validate: Callable[[Path], None],
) -> FetchResult:
    """Fetch with this dataset's mirrors, timeout and retries, logging progress to the run."""
    return data_store.fetch(
        filename,
        config.mirrors,
        payload_sha256=sha256,
        validate=validate,
        timeout=config.timeout_s,
        retries=config.retries,
        backoff=config.backoff_s,
        log=context.log.info,
    )


def _sample_grid(images: np.ndarray, labels: np.ndarray, names: list[str] | str) -> bytes:
    """The first few images of every class, one row per class pair, captioned by class."""
    picks = np.concatenate([np.flatnonzero(labels == c)[:SAMPLES_PER_CLASS] for c in range(len(names))])
    return plots.image_grid(images[picks], [names[int(labels[i])] for i in picks], columns=2 * SAMPLES_PER_CLASS)


@asset(
    group_name="data",
    owners=OWNERS,
    kinds={"numpy"},
    op_tags=CRITICAL_PATH,
    description="MNIST's four IDX files from the first mirror that serves them with the canonical "
    "sha256, stored as uint8 arrays (processed/mnist.npz).",
)
def mnist_dataset(context: AssetExecutionContext, config: MnistDataConfig, data_store: DataStore):
    checksums = {}
    for filename, sha256 in MNIST_FILES.items():
        fetched = _fetch(context, data_store, config, filename, sha256, validate_idx)
        checksums[filename] = fetched.sha256
        context.log.info(f"{filename}: {'cached' if fetched.cached else 'from ' + str(fetched.url)}")
    arrays = load_mnist(data_store.path("raw"))
    path = data_store.save_arrays("mnist", **arrays)
    grid = _sample_grid(arrays["x_train"], arrays["y_train"], DIGITS)
    data_store.write_bytes("plots/mnist_samples.png", grid)
    return MaterializeResult(
        metadata={
            "train_images": len(arrays["x_train"]),
            "test_images": len(arrays["x_test"]),
            "train_per_class": metadata.table(class_counts(arrays["y_train"], DIGITS), "digit", "images"),
            "test_per_class": metadata.table(class_counts(arrays["y_test"], DIGITS), "digit", "images"),
            "payload_sha256": MetadataValue.json(checksums),
            "samples": metadata.png(grid, "MNIST samples"),
            "path": MetadataValue.path(str(path)),
        }
    )


@asset(
    group_name="data",
    owners=OWNERS,
    kinds={"numpy"},
    description="notMNIST letters A-J (out-of-distribution inputs) from notMNIST_small.tar.gz, "
    "extracted safely, unreadable PNGs skipped, stored as uint8 arrays (processed/notmnist.npz).",
)
def notmnist_dataset(context: AssetExecutionContext, config: NotMnistDataConfig, data_store: DataStore):
    fetched = _fetch(context, data_store, config, NOTMNIST_ARCHIVE, config.archive_sha256, validate_archive)
    root = safe_extract(fetched.path, data_store.path("raw", "notmnist"))
    glyphs = load_notmnist(root, log=context.log.info)
    if glyphs.skipped:
        context.log.warning(f"skipped {len(glyphs.skipped)} unreadable images, e.g. {glyphs.skipped[:3]}")
    path = data_store.save_arrays("notmnist", x=glyphs.images, y=glyphs.labels)
    grid = _sample_grid(glyphs.images, glyphs.labels, LETTERS)
    data_store.write_bytes("plots/notmnist_samples.png", grid)
    return MaterializeResult(
        metadata={
            "images": len(glyphs.images),
            "per_class": metadata.table(glyphs.per_class, "letter", "images"),
            "skipped": len(glyphs.skipped),
            "skipped_files": MetadataValue.json(glyphs.skipped[:50]),
            "archive_payload_sha256": fetched.sha256,
            "samples": metadata.png(grid, "notMNIST samples"),
            "path": MetadataValue.path(str(path)),
        }
    )


@asset(
    group_name="data",
    owners=OWNERS,
    kinds={"numpy"},
    op_tags=CRITICAL_PATH,
    description="Newly labelled digits for the next training set: PNGs dropped into the data store's "
    "incoming/<digit>/ folders, and production inputs relabelled through the endpoint's feedback "
    "route (processed/production_labels.npz).",
)
def production_labels(context: AssetExecutionContext, data_store: DataStore, deployer: ModelDeployer):
    dropped, dropped_labels, skipped = load_image_folder(data_store.path("incoming"), DIGITS)
    relabelled, relabelled_labels, without_input = relabelled_inputs(deployer.request_log_dir)
    if skipped:
        context.log.warning(f"skipped {len(skipped)} unreadable incoming images, e.g. {skipped[:3]}")
    if without_input:
        context.log.info(f"{without_input} feedback labels have no kept input (raise serving.input_sample_rate)")
    images = np.concatenate([dropped, relabelled]).astype(np.uint8)
    labels = np.concatenate([dropped_labels, relabelled_labels]).astype(np.uint8)
    path = data_store.save_arrays("production_labels", x=images, y=labels)
    return MaterializeResult(
        metadata={
            "images": len(images),
            "from_incoming_folder": len(dropped),
            "from_feedback": len(relabelled),
            "feedback_without_kept_input": without_input,
            "skipped_files": MetadataValue.json(skipped[:50]),
            "per_class": metadata.table(class_counts(labels, DIGITS), "digit", "images"),
            "path": MetadataValue.path(str(path)),
        }
    )

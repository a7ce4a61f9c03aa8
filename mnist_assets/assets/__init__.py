"""Assets in chain order: datasets, then models."""

from mnist_assets.assets.data import mnist_dataset, notmnist_dataset
from mnist_assets.assets.models import mnist_classifier, mnist_concept_model

__all__ = ["mnist_classifier", "mnist_concept_model", "mnist_dataset", "notmnist_dataset"]

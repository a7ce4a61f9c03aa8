"""Assets in chain order: datasets, models, delivery."""

from mnist_assets.assets.data import mnist_dataset, notmnist_dataset, production_labels
from mnist_assets.assets.delivery import deliver_candidate
from mnist_assets.assets.models import mnist_classifier, mnist_concept_model
from mnist_assets.assets.monitoring import production_monitoring
from mnist_assets.assets.publish import uploaded_model

__all__ = [
    "deliver_candidate",
    "mnist_classifier",
    "mnist_concept_model",
    "mnist_dataset",
    "notmnist_dataset",
    "production_labels",
    "production_monitoring",
    "uploaded_model",
]

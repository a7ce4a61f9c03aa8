"""Every stage's per-run choices, as Dagster ``Config`` classes.

``PipelineConfig`` gathers them into the one run-config file (``run_config.yaml``) that
jobs map onto their assets. Because that mapping runs when a run is created, an unknown
field or a bad value (a negative learning rate) fails before any step starts, with an
error naming the field. Where things live and run (folders, the serving backend and
address, the cluster) is not here: those are the resources' settings, from environment
variables (``resources.environment``)."""

from __future__ import annotations

from dagster import Config
from pydantic import Field

from mnist_delivery.gate import Margins
from mnist_ml.drift import DriftBounds
from mnist_ml.hyperparams import ARCHITECTURES, FitParams

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
NOTMNIST_MIRRORS = ["http://yaroslavvb.com/upload/notMNIST/"]


class DownloadConfig(Config):
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout in seconds.")
    retries: int = Field(default=3, ge=0, le=10, description="Retries per mirror on transient errors.")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles on each retry.")


class MnistDataConfig(DownloadConfig):
    mirrors: list[str] = Field(
        default=MNIST_MIRRORS,
        min_length=1,
        description="Base URLs tried in order (http, https or file://) for the four MNIST files.",
    )


class NotMnistDataConfig(DownloadConfig):
    mirrors: list[str] = Field(
        default=NOTMNIST_MIRRORS, min_length=1, description="Base URLs tried in order for notMNIST_small.tar.gz."
    )
    archive_sha256: str | None = Field(
        default=None,
        description="Pin the archive's sha256 if you know it; otherwise the computed one is recorded.",
    )


class TrainingConfig(Config):
    learning_rate: float = Field(default=2e-3, gt=0, le=1, description="Adam's initial learning rate (cosine decay).")
    epochs: int = Field(default=8, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=1, le=60000)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1, description="Share of the training set held out.")
    seed: int = Field(default=0, ge=0)

    def fit_params(self) -> FitParams:
        return FitParams(self.learning_rate, self.epochs, self.batch_size, self.validation_fraction, self.seed)


class ClassifierConfig(TrainingConfig):
    # A small CNN for 2 epochs: 0.990 test accuracy in about the time the dense 256-64 network
    # took for 8 epochs (0.981); measured with benchmarks/chain.py, see the README.
    learning_rate: float = Field(default=3e-3, gt=0, le=1, description="Adam's initial learning rate (cosine decay).")
    epochs: int = Field(default=2, ge=1, le=1000)
    architecture: str = Field(default="cnn", description=f"One of {ARCHITECTURES}.", pattern="^(dense|cnn)$")
    hidden_units: list[int] = Field(
        default=[64], min_length=1, description="Dense ReLU layer sizes (after the conv blocks, for cnn)."
    )
    min_test_accuracy: float = Field(
        default=0.97, ge=0, le=1, description="Blocking check: test accuracy must reach this."
    )


class ConceptModelConfig(TrainingConfig):
    epochs: int = Field(default=6, ge=1, le=1000)
    encoder_units: list[int] = Field(
        default=[256, 128], min_length=1, description="Encoder layer sizes; the decoder mirrors them."
    )
    threshold_percentile: float = Field(
        default=99.0, gt=0, lt=100, description="Percentile of held-out clean scores used as the OOD threshold."
    )
    noise_amplitude: float = Field(
        default=0.5, gt=0, le=1, description="Noisy-digit test: uniform noise in [-a, a] added to MNIST test images."
    )
    min_detection_rate: float = Field(default=0.95, ge=0, le=1, description="Blocking check on notMNIST.")
    max_false_positive_rate: float = Field(default=0.02, ge=0, le=1, description="Blocking check on MNIST test.")


class DeploymentTestConfig(Config):
    """Gates on the candidate, tested at its private address before it takes traffic: absolute
    bounds, and margins against the version serving now (champion/challenger, same sets).
    Noisy digits use the concept model's own noise setting."""

    min_accuracy: float = Field(default=0.97, ge=0, le=1, description="MNIST test accuracy through the endpoint.")
    min_notmnist_flag_rate: float = Field(default=0.95, ge=0, le=1, description="notMNIST flagged as OOD.")
    min_noisy_flag_rate: float = Field(default=0.90, ge=0, le=1, description="Noisy digits flagged as OOD.")
    max_clean_flag_rate: float = Field(default=0.02, ge=0, le=1, description="Clean MNIST test digits flagged.")
    max_p99_latency_ms: float = Field(default=50.0, gt=0, description="Single-image requests, one at a time.")
    latency_requests: int = Field(default=200, ge=10, le=100_000, description="Single-image requests to time.")
    max_accuracy_drop_points: float = Field(
        default=0.5, ge=0, le=100, description="vs production: accuracy may drop at most this many points."
    )
    max_detection_drop_points: float = Field(
        default=1.0, ge=0, le=100, description="vs production: notMNIST and noisy detection may drop this much."
    )
    max_false_positive_rise_points: float = Field(
        default=1.0, ge=0, le=100, description="vs production: clean digits flagged may rise this many points."
    )
    max_p99_ratio: float = Field(default=1.5, ge=1, description="vs production: p99 latency at most this times.")
    p99_slack_ms: float = Field(
        default=5.0, ge=0, description="vs production: a p99 within this many ms of production's always passes."
    )

    def margins(self) -> Margins:
        return Margins(
            self.max_accuracy_drop_points,
            self.max_detection_drop_points,
            self.max_false_positive_rise_points,
            self.max_p99_ratio,
            self.p99_slack_ms,
        )


class MonitoringConfig(Config):
    """Production monitoring and the drift sensor, which reads this section of run_config.yaml.
    Each drift measure has a warn and an error bound (the asset checks on production_monitoring
    turn yellow and red); the sensor requests a retraining run on an error-level OOD rate, class
    PSI or estimated accuracy drop."""

    window_minutes: float = Field(default=60.0, gt=0, description="Traffic window summarized and checked for drift.")
    buckets: int = Field(default=12, ge=2, le=1000, description="Time buckets of the trends in the plots.")
    warn_ood_rate: float = Field(default=0.1, ge=0, le=1, description="Warn: share of flagged inputs above this.")
    max_ood_rate: float = Field(default=0.2, ge=0, le=1, description="Drift: share of flagged inputs above this.")
    warn_class_psi: float = Field(default=0.1, gt=0, description="Warn: PSI of predicted classes vs training.")
    max_class_psi: float = Field(default=0.25, gt=0, description="Drift: PSI of predicted classes vs training.")
    warn_accuracy_drop_points: float = Field(
        default=2.0, ge=0, le=100, description="Warn: label-free accuracy estimate this far below held-out."
    )
    max_accuracy_drop_points: float = Field(
        default=5.0, ge=0, le=100, description="Drift: label-free accuracy estimate this far below held-out."
    )
    ks_warn_p_value: float = Field(
        default=0.01, gt=0, lt=1, description="Warn: confidence or concept-score KS test vs training below this."
    )
    ks_error_p_value: float = Field(
        default=1e-4, gt=0, lt=1, description="Error (shown, no retraining): KS p-value below this."
    )
    min_images: int = Field(default=200, ge=1, description="No drift verdict on fewer images than this.")
    cooldown_minutes: float = Field(default=30.0, ge=0, description="No new retraining run within this time.")
    ood_grid_size: int = Field(default=40, ge=1, le=400, description="Most out-of-distribution inputs to show.")

    def bounds(self) -> DriftBounds:
        return DriftBounds(
            self.warn_ood_rate,
            self.max_ood_rate,
            self.warn_class_psi,
            self.max_class_psi,
            self.warn_accuracy_drop_points,
            self.max_accuracy_drop_points,
            self.ks_warn_p_value,
            self.ks_error_p_value,
            self.min_images,
        )


class KubernetesStepsConfig(Config):
    """Only for mnist_pipeline_k8s (a pod per step)."""

    training_gpus: int = Field(default=0, ge=0, le=8, description="NVIDIA GPUs requested by each training pod.")


class PipelineConfig(Config):
    """The whole chain's per-run choices, in one place."""

    mnist: MnistDataConfig = MnistDataConfig()
    notmnist: NotMnistDataConfig = NotMnistDataConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    concept_model: ConceptModelConfig = ConceptModelConfig()
    deployment_tests: DeploymentTestConfig = DeploymentTestConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    kubernetes: KubernetesStepsConfig = KubernetesStepsConfig()

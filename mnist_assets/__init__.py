"""Dagster definitions for the MNIST chain: assets, checks, jobs. Thin wiring only; the
ML and I/O logic lives in ``mnist_ml`` and the outside world behind ``resources``."""

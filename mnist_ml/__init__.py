"""Plain ML and I/O logic for the MNIST pipeline. Nothing here imports Dagster."""

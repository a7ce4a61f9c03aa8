"""The operator's command, ``mnist-ops``: what an operator does by hand to the registry and the
endpoint (list versions, see what serves, promote, roll back, send a test image, stop), on the
same resources, built from the same ``MNIST_*`` settings, as the Dagster code. No Dagster
wiring (``mnist_assets``) is imported here."""

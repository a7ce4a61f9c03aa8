"""The inference endpoint: a KServe model server for one registry version of both models.

Runs without Dagster (the same image serves as a Kubernetes serving pod)."""

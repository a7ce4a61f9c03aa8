"""Where alerts go (failed runs, drift episodes): a webhook (Slack, Teams, a pager...) named by
an environment variable, so the URL, often a secret, never sits in config, the UI or the logs
(only its host is logged). Alerts link to runs in the Dagster UI at ``$MNIST_DAGSTER_UI_URL``."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import requests
from dagster import ConfigurableResource
from pydantic import Field

from resources.environment import setting


class AlertWebhook(ConfigurableResource):
    url_env: str = Field(default="MNIST_ALERT_WEBHOOK_URL", description="Environment variable holding the URL.")
    timeout_s: float = Field(default=10.0, gt=0)
    ui_url: str = setting(
        "http://127.0.0.1:3000",
        env="MNIST_DAGSTER_UI_URL",
        description="The Dagster UI as people open it, for links in alerts",
        pattern=r"^https?://",
    )

    def run_url(self, run_id: str) -> str:
        """The run's page in the Dagster UI."""
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def send(self, message: str, details: dict[str, Any], log: Any) -> bool:
        """POST ``{"text": message, **details}``; True if the webhook took it. Logs, never raises."""
        url = os.environ.get(self.url_env, "")
        if not url:
            log.warning(f"no alert webhook set (${self.url_env} is empty), so only logging it: {message}")
            return False
        host = urlparse(url).hostname
        try:
            requests.post(url, json={"text": message, **details}, timeout=self.timeout_s).raise_for_status()
        except requests.RequestException as exc:
            status = getattr(exc.response, "status_code", None)
            log.error(f"could not post the alert to {host} ({type(exc).__name__}, status {status}): {message}")
            return False
        log.info(f"alert posted to {host}")
        return True

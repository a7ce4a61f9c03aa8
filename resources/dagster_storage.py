"""Dagster's own storage (runs, event log, schedule and sensor state) on PostgreSQL, checked
before first use. deploy/dagster.yaml names these three classes.

They are dagster-postgres's storages with one step added: before anything else, one
connection with a short timeout. Without a reachable database every entry point that opens
the instance (the CLI, webserver, daemon, run and step workers) stops at once with an error
naming the host, the port and the variables to set, instead of retrying and then failing
deep inside SQLAlchemy. Storages that authenticate with a token provider (cloud IAM) are not
checked: their password is only known to the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import psycopg2
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy.engine import make_url

CONNECT_TIMEOUT_S = 5
# The variables deploy/dagster.yaml reads the connection from.
CONNECTION_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD")


class PostgresUnavailable(RuntimeError):
    """Dagster's PostgreSQL database cannot be reached or refuses the login."""


def require_postgres(postgres_url: str) -> None:
    """Connect once, or raise ``PostgresUnavailable`` saying where and what to set."""
    url = make_url(postgres_url)
    try:
        connection = psycopg2.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise PostgresUnavailable(
            f"Dagster's storage database {url.database!r} at {url.host}:{url.port or 5432} (user {url.username!r}) "
            f"cannot be used ({reason}). Set {', '.join(CONNECTION_ENV)} to a PostgreSQL server this process "
            "can reach (on Kubernetes: the mnist-env ConfigMap and the mnist-secrets Secret, docs/kubernetes.md)."
        ) from None
    connection.close()


class _CheckedFirst:
    """``from_config_value`` of the dagster-postgres storages, with the check in front."""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Self:
        postgres_url = pg_url_from_config(config_value)
        token_provider = get_token_provider_from_config(config_value)
        if token_provider is None:
            require_postgres(postgres_url)
        return cls(
            inst_data=inst_data,
            postgres_url=postgres_url,
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=token_provider,
        )


class CheckedPostgresRunStorage(_CheckedFirst, PostgresRunStorage):
    """Runs."""


class CheckedPostgresEventLogStorage(_CheckedFirst, PostgresEventLogStorage):
    """Every event of every run."""


class CheckedPostgresScheduleStorage(_CheckedFirst, PostgresScheduleStorage):
    """Schedule and sensor state: ticks and cursors."""

"""Which ``Repository`` a configuration asks for: SQLite (default) or PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Callable

from ocpp_server.config import CsmsConfig
from ocpp_server.storage import SqliteRepository


def open_repository(cfg: CsmsConfig,
                    on_flag: Callable[[str, int], None] | None = None) -> SqliteRepository:
    """The repository of ``[storage]`` (``url`` wins over ``path``); not opened yet."""
    engine, target = cfg.storage.database()
    rated, margin = cfg.ocpp.rated_power_w, cfg.ocpp.plausibility_margin
    if engine == "postgresql":
        from ocpp_server.pg_storage import PostgresRepository  # psycopg only when used

        return PostgresRepository(target, rated_power_w=rated, plausibility_margin=margin,
                                  on_flag=on_flag)
    return SqliteRepository(target, cfg.storage.synchronous, rated_power_w=rated,
                            plausibility_margin=margin, on_flag=on_flag)


def describe(cfg: CsmsConfig) -> str:
    """The database for log lines and errors, without a password."""
    engine, target = cfg.storage.database()
    if engine == "postgresql" and "@" in target:
        scheme, rest = target.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return target

"""Logging set up once for the whole process.

structlog renders every event: JSON lines in production (journald reads stdout), a readable
console format when stdout is a terminal. The stdlib loggers of the libraries (pymodbus, ocpp,
websockets, aiomqtt, uvicorn) are routed through the same ``ProcessorFormatter`` so that one
process writes one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

Format = Literal["json", "console", "auto"]

_configured = False


def configure(level: str = "INFO", fmt: Format = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger; later calls reconfigure."""
    global _configured
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO stay at WARNING unless asked for DEBUG.
    if level.upper() != "DEBUG":
        for name in ("pymodbus", "websockets", "aiomqtt", "asyncio", "numba"):
            logging.getLogger(name).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A bound structlog logger; configures defaults on first use."""
    if not _configured:
        configure()
    return structlog.get_logger(name).bind(**context)

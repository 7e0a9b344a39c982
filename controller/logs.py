"""Logging set up once for the whole process.

structlog renders every event: JSON lines in production (``mwc run`` writes them to stdout,
where journald reads them), a readable console format when the stream is a terminal. The
stdlib loggers of the libraries (pymodbus, ocpp, websockets, aiomqtt, uvicorn) are routed
through the same ``ProcessorFormatter`` so that one process writes one format.

No secret reaches a log line: every event, ours or a library's, passes :func:`redact` before
it is rendered and the rendered line passes it again. It removes the secrets registered with
:func:`add_secret` (the configured OCPP and MQTT passwords, a BasicAuthPassword set by the
backend, private key material; each also in its escaped and HTTP Basic forms), the value of
any ``Authorization`` header, and the values carried by OCPP frames that set a password
(SetVariables BasicAuthPassword, ChangeConfiguration AuthorizationKey), which the ``ocpp``
library logs before the station has seen, let alone registered, the new password.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    from controller.config import StationConfig

Format = Literal["json", "console", "auto"]
StdName = Literal["stdout", "stderr"]
REDACTED = "[REDACTED]"

_configured = False
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None

# "Authorization: Basic abc", "'Authorization': 'Bearer x'", "authorization=..."
_AUTH_RE = re.compile(
    r"""(?i)(authorization["']?\s*[:=]\s*["']?\s*)((?>(?:(?:basic|bearer|digest|token)\s+)?))"""
    r"""(?!\[REDACTED\])[^\s"',;}\]]+""")
# Frames that carry a new password: their value fields, whichever key order or quoting.
_FRAME_MARKERS = ("BasicAuthPassword", "AuthorizationKey")
_FRAME_VALUE_RE = re.compile(
    r"""((?<![A-Za-z_])["']?(?:attributeValue|attribute_value|value)["']?\s*[:=]\s*)"""
    r"""(["'])(?:\\.|(?!\2).)*\2""")


def _forms(secret: str) -> Iterable[str]:
    """The ways ``secret`` can appear in a rendered line: raw, JSON- and repr-escaped,
    and JSON-escaped twice (an OCPP frame logged as a string inside a JSON line)."""
    once = json.dumps(secret)[1:-1]
    yield secret
    yield once
    yield json.dumps(secret, ensure_ascii=False)[1:-1]
    yield repr(secret)[1:-1]
    yield json.dumps(once)[1:-1]


def add_secret(value: str | None, *, user: str | None = None) -> None:
    """Never log ``value`` (nor, given ``user``, its HTTP Basic ``user:value`` token).

    Values shorter than 3 characters are not registered: redacting them would shred every
    line without protecting anything (configuration validation refuses empty passwords).
    """
    global _secret_re
    if not value or len(value) < 3:
        return
    new = set(_forms(value))
    for who in {user, None} if user else {None}:
        raw = f"{who}:{value}" if who is not None else value
        new.add(base64.b64encode(raw.encode()).decode())
        new.add(base64.b64encode(raw.encode()).decode().rstrip("="))
    if new <= _secrets:
        return
    _secrets.update(new)
    ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def add_key_file(path: str | None) -> None:
    """Register the base64 body lines of the PEM private key in ``path`` (if readable)."""
    if not path:
        return
    try:
        text = Path(path).read_text(encoding="ascii", errors="ignore")
    except OSError:
        return
    inside = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN") and "PRIVATE KEY" in line:
            inside = True
        elif line.startswith("-----END"):
            inside = False
        elif inside and len(line) >= 16 and ":" not in line:  # not a Proc-Type header
            add_secret(line)


def register_config_secrets(cfg: StationConfig) -> None:
    """Register every secret of a loaded configuration (call before anything connects)."""
    if cfg.ocpp is not None:
        ocpp_pw = cfg.ocpp.password
        add_secret(ocpp_pw.get_secret_value() if ocpp_pw is not None else None,
                   user=cfg.ocpp.station_id or cfg.station.id)
        add_key_file(cfg.ocpp.key_file)
    if cfg.mqtt is not None:
        pw = cfg.mqtt.password
        add_secret(pw.get_secret_value() if pw is not None else None, user=cfg.mqtt.username)
        if cfg.mqtt.tls is not None:
            add_key_file(cfg.mqtt.tls.key_file)


def scrub(text: str) -> str:
    """``text`` without registered secrets, Authorization values and password frames."""
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_RE.sub(lambda m: m.group(1) + (m.group(2) or "") + REDACTED, text)
    if any(marker in text for marker in _FRAME_MARKERS):
        text = _FRAME_VALUE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}",
                                   text)
    if _secret_re is not None:
        text = _secret_re.sub(REDACTED, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return scrub(bytes(value).decode("utf-8", "replace"))
    return value


def redact(_logger: Any, _method: str, event: Any) -> Any:
    """structlog processor: scrub an event dict (before rendering) or a rendered line."""
    if isinstance(event, str):
        return scrub(event)
    if isinstance(event, dict):
        return {k: _scrub_value(v) for k, v in event.items()}
    return event


def bind_context(**context: Any) -> None:
    """Context added to every later event of this task and the tasks it creates
    (``station=`` for the whole process in ``mwc run``)."""
    structlog.contextvars.bind_contextvars(**context)


#: Loggers whose repeated warnings are folded (a library warns once per failed connect).
FOLDED_LIBRARIES = ("pymodbus",)
_DIGITS_RE = re.compile(r"\d+")


class LibraryFold(logging.Filter):
    """Folds a library's repeated log lines: the first line of a kind (its text with the
    numbers taken out, so one port or another is the same kind) passes, the repeats within
    ``interval_s`` are dropped and counted, and the next one after the interval passes with
    ``(N more like this in the last … s)``. Only loggers under ``FOLDED_LIBRARIES``."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}  # kind → (window start, dropped)
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(FOLDED_LIBRARIES):
            return True
        try:
            kind = _DIGITS_RE.sub("#", record.getMessage())
        except Exception:  # a malformed library record: let it through as it is
            return True
        now = record.created
        start, dropped = self._seen.get(kind, (-float("inf"), 0))
        if now - start < self.interval_s:
            self._seen[kind] = (start, dropped + 1)
            self.dropped += 1
            return False
        self._seen[kind] = (now, 0)
        if dropped:
            record.msg = (f"{record.getMessage()} ({dropped} more like this in the last "
                          f"{self.interval_s:g} s)")
            record.args = None
        return True


_fold = LibraryFold()


def set_fold_interval(seconds: float) -> None:
    """The library fold interval (``station.log_fold_s``; ``mwc run`` sets it)."""
    _fold.interval_s = seconds


class StdStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stdout`` or ``sys.stderr`` as it is when a line is written, not as
    it was when logging was configured: whoever replaces the process's stream later (a
    test's output capture, which closes its stream when the test ends) gets the lines,
    and no line goes to a stream that has since been closed (the stdlib's last-resort
    handler does the same)."""

    def __init__(self, which: StdName) -> None:
        self.which = which
        super().__init__()

    @property
    def stream(self) -> Any:
        return getattr(sys, self.which)

    @stream.setter
    def stream(self, _value: Any) -> None:
        """Ignored: the stream is always the process's current one."""


def configure(level: str = "INFO", fmt: Format = "auto",
              stream: StdName | IO[str] | None = None) -> None:
    """Configure structlog and the stdlib root logger; later calls reconfigure.

    ``stream`` is ``"stdout"`` (the default) or ``"stderr"`` — looked up whenever a line is
    written — or a file the caller owns and keeps open while it stays configured (configure
    again before closing it).
    """
    global _configured
    target: StdName | IO[str] = stream if stream is not None else "stdout"
    handler: logging.Handler
    if isinstance(target, str):
        if target not in ("stdout", "stderr"):
            raise ValueError(f"log stream {target!r}: expected 'stdout', 'stderr' or a file")
        handler = StdStreamHandler(target)
        out: Any = getattr(sys, target)
    else:
        handler = logging.StreamHandler(target)
        out = target
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
        # redact twice: the fields before rendering (a secret split by escaping is still
        # whole there), the line after it (objects rendered by repr, console tracebacks)
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact,
                    renderer, redact],
    )
    handler.setFormatter(formatter)
    handler.addFilter(_fold)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO stay at WARNING unless asked for DEBUG (and a later
    # DEBUG configuration lets them speak again).
    quiet = logging.WARNING if level.upper() != "DEBUG" else logging.NOTSET
    for name in ("pymodbus", "websockets", "aiomqtt", "asyncio", "numba"):
        logging.getLogger(name).setLevel(quiet)
    _configured = True


async def closing_step(step: Awaitable[Any], log: Any, what: str) -> None:
    """Await ``step``, one step of closing a connection or server whose failure changes
    nothing (the peer is gone, the socket already broken): the failure is logged at debug
    naming ``what`` — never silently lost — and does not propagate."""
    try:
        await step
    except Exception as exc:
        log.debug("close step failed", step=what, error=repr(exc)[:200])


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A bound structlog logger; configures defaults on first use."""
    if not _configured:
        configure()
    return structlog.get_logger(name).bind(**context)

"""``mwc csms ...``: run the backend, provision stations and tokens, send ad-hoc commands.

``serve``, ``station`` and ``token`` work on the database named by the configuration (SQLite
allows the CLI to write while the backend serves). ``call`` goes through the REST API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx

from ocpp_server.config import ConfigError, CsmsConfig, load_config
from ocpp_server.engines import describe, open_repository
from ocpp_server.passwords import hash_password
from ocpp_server.repository import AlreadyExists, StationRecord, TokenRecord


def _config(args: argparse.Namespace) -> CsmsConfig:
    cfg = load_config(args.config or os.environ.get("MWC_CSMS_CONFIG"))
    if getattr(args, "db", None):
        if "://" in args.db:
            cfg.storage.url = args.db
        else:
            cfg.storage.path = args.db
            cfg.storage.url = ""
    return cfg


async def _serve(cfg: CsmsConfig, ready_file: str | None) -> None:
    from ocpp_server.app import CsmsServer

    server = CsmsServer(cfg)
    try:
        await server.start()
    except BaseException:
        await server.stop()  # release what was opened (storage thread, first listener)
        raise
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic GC, whose full passes otherwise stall every station for ~100 ms.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        tmp = Path(ready_file + ".tmp")
        tmp.write_text(json.dumps({"ocpp_port": server.ocpp_port, "tls_port": server.tls_port,
                                   "api_port": server.api_port, "pid": os.getpid()}))
        tmp.replace(ready_file)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _check_tls_files(cfg: CsmsConfig, where: str) -> None:
    """A TLS listener needs its files: name a missing one before anything is created."""
    if cfg.ocpp.tls_port < 0:
        return
    for key in ("certfile", "keyfile", "client_ca"):
        path = getattr(cfg.ocpp, key)
        if path and not os.access(path, os.R_OK):
            why = "cannot be read" if Path(path).exists() else "does not exist"
            raise ConfigError(f"{where}: ocpp.{key}: {path} {why} (make it with deploy/pki, "
                              "or set [ocpp] tls_port = -1 for plain ws:// only)")


def _cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.ocpp_port is not None:
        cfg.ocpp.port = args.ocpp_port
    if args.api_port is not None:
        cfg.api.port = args.api_port
    _check_tls_files(cfg, args.config or os.environ.get("MWC_CSMS_CONFIG") or "defaults")
    from ocpp_server.app import fair_event_loop  # bounded work per loop iteration (storms)

    with asyncio.Runner(loop_factory=fair_event_loop) as runner:
        runner.run(_serve(cfg, args.ready_file))
    return 0


async def _with_repo(cfg: CsmsConfig, fn: Any) -> Any:
    repo = open_repository(cfg)
    await repo.open()
    try:
        return await fn(repo)
    finally:
        await repo.close()


def _pg_errors() -> tuple[type[BaseException], ...]:
    """psycopg's errors when it is installed (PostgreSQL storage), else none."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def _cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the schema migrations (serve does it too; this runs them before a roll-out)."""
    from ocpp_server.migrations import SCHEMA_VERSION

    cfg = _config(args)
    asyncio.run(_with_repo(cfg, lambda repo: asyncio.sleep(0)))
    print(f"{describe(cfg)}: schema v{SCHEMA_VERSION}")
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise SystemExit(f"environment variable {args.password_env} is not set")
        return value
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.ask_password:
        return getpass.getpass(f"password for {args.station_id}: ")
    return None


def _cmd_station_add(args: argparse.Namespace) -> int:
    password = _read_password(args)
    try:
        pw_hash = None if password is None else hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = StationRecord(id=args.station_id, security_profile=args.profile,
                           approved=not args.pending, password_hash=pw_hash)
    async def add(repo: Any) -> StationRecord:
        await repo.add_station(record)
        return await repo.get_station(record.id) or record  # with created_at

    try:
        stored = asyncio.run(_with_repo(_config(args), add))
    except AlreadyExists as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stored.public()))
    return 0


def _cmd_station_approve(args: argparse.Namespace) -> int:
    ok = asyncio.run(_with_repo(_config(args),
                                lambda r: r.set_station_approved(args.station_id, True)))
    if not ok:
        print(f"error: unknown station {args.station_id!r}", file=sys.stderr)
        return 1
    return 0


def _cmd_station_list(args: argparse.Namespace) -> int:
    for st in asyncio.run(_with_repo(_config(args), lambda r: r.list_stations())):
        print(json.dumps(st.public()))
    return 0


def _cmd_station_show(args: argparse.Namespace) -> int:
    """Like REST ``GET /stations/{id}`` without the live part (the CLI does not serve)."""
    st = asyncio.run(_with_repo(_config(args), lambda r: r.get_station(args.station_id)))
    if st is None:
        print(f"error: unknown station {args.station_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(st.public()))
    return 0


def _cmd_station_password(args: argparse.Namespace) -> int:
    """Replace the stored password at once (REST ``PUT .../password`` with ``push=false``).

    Nothing is sent to the station: use the REST API to push a new password to a connected
    station (the old one then stays valid until the station logs in with the new one).
    """
    password = _read_password(args)
    if password is None:
        print("error: give the password with --password-env, --password-stdin or "
              "--ask-password", file=sys.stderr)
        return 2
    try:
        pw_hash = hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = asyncio.run(_with_repo(_config(args),
                                lambda r: r.set_station_password(args.station_id, pw_hash)))
    if not ok:
        print(f"error: unknown station {args.station_id!r}", file=sys.stderr)
        return 1
    print(json.dumps({"id": args.station_id, "pushed_to_station": False}))
    return 0


def _cmd_token_add(args: argparse.Namespace) -> int:
    token = TokenRecord(args.id_token, args.type, args.status, args.expiry, args.group)
    asyncio.run(_with_repo(_config(args), lambda r: r.upsert_token(token)))
    print(json.dumps(token.__dict__))
    return 0


def _set_token_status(args: argparse.Namespace, status: str) -> int:
    ok = asyncio.run(_with_repo(_config(args),
                                lambda r: r.set_token_status(args.id_token, status)))
    if not ok:
        print(f"error: unknown token {args.id_token!r}", file=sys.stderr)
        return 1
    print(json.dumps({"id_token": args.id_token, "status": status}))
    return 0


def _cmd_token_block(args: argparse.Namespace) -> int:
    return _set_token_status(args, "Blocked")


def _cmd_token_unblock(args: argparse.Namespace) -> int:
    """Same as REST ``POST /tokens/{id}/unblock``: the token is Accepted again."""
    return _set_token_status(args, "Accepted")


def _cmd_token_list(args: argparse.Namespace) -> int:
    for token in asyncio.run(_with_repo(_config(args), lambda r: r.list_tokens())):
        print(json.dumps(token.__dict__))
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        payload = json.loads(args.payload) if args.payload else {}
    except json.JSONDecodeError as exc:
        print(f"error: payload is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(payload, dict):
        print("error: payload must be a JSON object", file=sys.stderr)
        return 2
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::") else cfg.api.host
    url = args.url or f"http://{host}:{cfg.api.port}"
    token = args.token or os.environ.get("MWC_CSMS_TOKEN") or next(iter(cfg.api.tokens), "")
    params = {"timeout": args.timeout} if args.timeout else None
    try:
        resp = httpx.post(f"{url}/api/v1/stations/{args.station_id}/call/{args.action}",
                          json=payload, params=params,
                          headers={"Authorization": f"Bearer {token}"},
                          timeout=(args.timeout or cfg.ocpp.call_timeout) + 5)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the backend at {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(resp.json(), indent=2))
    return 0 if resp.is_success else 1


def _describe(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for an OS or database error; the listeners and paths name themselves."""
    if isinstance(exc, OSError):
        if exc.filename:
            return f"{exc.filename}: {exc.strerror}"
        return exc.strerror or str(exc)
    try:
        db = describe(_config(args))
    except ConfigError:
        db = "?"
    return f"[storage] {db}: {exc}"


def _guard(fn: Any) -> Any:
    """Configuration problems end the command with a one-line error, not a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (OSError, sqlite3.Error) as exc:  # port in use, database not writable, ...
            print(f"error: {_describe(exc, args)}", file=sys.stderr)
            return 2
        except Exception as exc:
            if not isinstance(exc, _pg_errors()):
                raise
            print(f"error: {_describe(exc, args)}", file=sys.stderr)  # PostgreSQL unreachable…
            return 2

    return wrapped


def register(sub: Any) -> None:
    """Add ``csms`` and its sub-commands to the ``mwc`` parser."""
    csms = sub.add_parser("csms", help="the OCPP backend (CSMS) and its operator tools")
    csms.add_argument("--config", help="TOML configuration (default: $MWC_CSMS_CONFIG)")
    csms.add_argument("--db", help="SQLite file or database URL, overrides [storage]")
    csms.set_defaults(handler=lambda a: csms.print_help() or 2)
    cs = csms.add_subparsers(dest="csms_command", metavar="COMMAND")
    # --config/--db are also accepted after the sub-command (SUPPRESS keeps the group's value)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    serve = cs.add_parser("serve", parents=[common], help="run the OCPP endpoint and the REST API")
    serve.add_argument("--ocpp-port", type=int, help="override [ocpp] port (0: any free)")
    serve.add_argument("--api-port", type=int, help="override [api] port (0: any free)")
    serve.add_argument("--ready-file", help="write the bound ports as JSON here once serving")
    serve.set_defaults(handler=_guard(_cmd_serve))

    migrate = cs.add_parser("migrate", parents=[common],
                            help="create or upgrade the database schema, then exit")
    migrate.set_defaults(handler=_guard(_cmd_migrate))

    station = cs.add_parser("station", help="provision stations")
    st = station.add_subparsers(dest="station_command", metavar="COMMAND")
    station.set_defaults(handler=lambda a: station.print_help() or 2)
    add = st.add_parser("add", parents=[common], help="add a station")
    add.add_argument("station_id")
    add.add_argument("--profile", type=int, default=1, choices=[0, 1, 2, 3],
                     help="security profile (0 = no authentication, labs only)")
    add.add_argument("--pending", action="store_true",
                     help="not approved yet: BootNotification answers Pending")
    def password_options(p: argparse.ArgumentParser) -> None:
        pw = p.add_mutually_exclusive_group()
        pw.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
        pw.add_argument("--password-stdin", action="store_true", help="read it from stdin")
        pw.add_argument("--ask-password", action="store_true", help="prompt for it")

    password_options(add)
    add.set_defaults(handler=_guard(_cmd_station_add))
    show = st.add_parser("show", parents=[common], help="one station's record")
    show.add_argument("station_id")
    show.set_defaults(handler=_guard(_cmd_station_show))
    spw = st.add_parser("password", parents=[common],
                        help="replace a station's password in the database (no push)")
    spw.add_argument("station_id")
    password_options(spw)
    spw.set_defaults(handler=_guard(_cmd_station_password))
    approve = st.add_parser("approve", parents=[common], help="approve a Pending station")
    approve.add_argument("station_id")
    approve.set_defaults(handler=_guard(_cmd_station_approve))
    listing = st.add_parser("list", parents=[common], help="list stations")
    listing.set_defaults(handler=_guard(_cmd_station_list))

    token = cs.add_parser("token", help="provision idTokens")
    tk = token.add_subparsers(dest="token_command", metavar="COMMAND")
    token.set_defaults(handler=lambda a: token.print_help() or 2)
    tadd = tk.add_parser("add", parents=[common], help="add or update a token")
    tadd.add_argument("id_token")
    tadd.add_argument("--type", default="ISO14443")
    tadd.add_argument("--status", default="Accepted")
    tadd.add_argument("--expiry", help="ISO 8601 expiry")
    tadd.add_argument("--group", help="group idToken (2.0.1 groupIdToken / 1.6 parentIdTag)")
    tadd.set_defaults(handler=_guard(_cmd_token_add))
    block = tk.add_parser("block", parents=[common], help="block a token")
    block.add_argument("id_token")
    block.set_defaults(handler=_guard(_cmd_token_block))
    unblock = tk.add_parser("unblock", parents=[common], help="accept a blocked token again")
    unblock.add_argument("id_token")
    unblock.set_defaults(handler=_guard(_cmd_token_unblock))
    tlist = tk.add_parser("list", parents=[common], help="list tokens (one JSON per line)")
    tlist.set_defaults(handler=_guard(_cmd_token_list))

    call = cs.add_parser("call", parents=[common],
                         help="send an OCPP command to a connected station")
    call.add_argument("station_id")
    call.add_argument("action", help="OCPP action, e.g. Reset, GetVariables")
    call.add_argument("payload", nargs="?", help="JSON payload (camelCase)")
    call.add_argument("--url", help="REST API base URL (default from [api])")
    call.add_argument("--token", help="bearer token (default $MWC_CSMS_TOKEN or [api] tokens)")
    call.add_argument("--timeout", type=float, help="seconds to wait for the station")
    call.set_defaults(handler=_guard(_cmd_call))


def run(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ocpp_server``: the same commands without ``mwc``."""
    import logging

    import structlog

    parser = argparse.ArgumentParser(prog="python -m ocpp_server")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(["csms", *(argv if argv is not None else sys.argv[1:])])
    level = os.environ.get("MWC_CSMS_LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"error: MWC_CSMS_LOG_LEVEL={level!r} is not a level (use DEBUG, INFO, WARNING, "
              "ERROR or CRITICAL)", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("websockets", "ocpp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
        logging.getLevelNamesMapping().get(level, logging.INFO)), processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        return 130

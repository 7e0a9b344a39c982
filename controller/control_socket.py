"""The local control channel of a running `mwc run`: a Unix socket owned by the service.

Why a Unix socket: a cabinet PC's operator is a shell on that PC (or a service technician's
laptop on its console); commands that change the station must not be reachable from the LAN
without a login. The socket lives in the service's runtime directory (systemd
``RuntimeDirectory=mwcharge`` → ``/run/mwcharge/control.sock``), mode 0660: the service
user, its group (add operators to group ``mwc``) and root may use it, nobody else. No
token, no TLS, no port: file permissions are the access control.

Protocol: one JSON object per line in, one per line out, then the server closes.

- ``{"command": "clear-fault", "gun": N}`` (N from 1) →
  ``{"ok": true, "gun": N, "cleared": …, "state": …, "message": …}``
- ``{"command": "status"}`` → ``{"ok": true, "guns": [{"gun": N, "state": …, "reason": …}]}``
- anything else → ``{"ok": false, "error": "<what was wrong>"}``

The server never blocks the control cycle: a request is parsed and answered in one step of
the event loop (``clear-fault`` only sets the latch the next cycle reads); a client that
sends nothing within ``REQUEST_TIMEOUT_S`` or more than ``MAX_REQUEST`` bytes is answered
with an error and dropped. `mwc clear-fault` is the client (``request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from controller import logs
from controller.operator import (
    Clearable,
    ClearError,
    ModuleClearable,
    clear_gun_fault,
    clear_module_faults,
)

DEFAULT_SOCKET = "/run/mwcharge/control.sock"
MAX_REQUEST = 4096
REQUEST_TIMEOUT_S = 5.0
SOCKET_MODE = 0o660


class ControlError(Exception):
    """The control socket cannot be served or reached; the message says why and where."""


def answer(station: Clearable, raw: bytes) -> dict[str, Any]:
    """The reply to one request line (pure apart from the clear it may make)."""
    try:
        req = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"request is not one JSON object per line: {exc}"}
    if not isinstance(req, dict):
        return {"ok": False, "error": "request must be a JSON object with a \"command\""}
    cmd = req.get("command")
    if cmd == "status":
        return {"ok": True, "guns": [{"gun": s.gun + 1, "state": s.state.value,
                                      "reason": s.reason} for s in station.sessions]}
    if cmd == "clear-fault":
        gun = req.get("gun")
        if not isinstance(gun, int) or isinstance(gun, bool):
            return {"ok": False, "error": f"clear-fault needs \"gun\": an integer from 1, "
                                          f"got {gun!r}"}
        try:
            result = clear_gun_fault(station, gun - 1, "local")
        except ClearError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, **result.to_dict()}
    if cmd == "clear-module" and isinstance(station, ModuleClearable):
        module = req.get("module")
        if not isinstance(module, int) or isinstance(module, bool):
            return {"ok": False, "error": f"clear-module needs \"module\": an integer from 1, "
                                          f"got {module!r}"}
        try:
            res = clear_module_faults(station, module - 1, "local")
        except ClearError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "module": module, "cleared": res.cleared, "message": res.message}
    return {"ok": False, "error": f"unknown command {cmd!r} "
                                  "(known: clear-fault, clear-module, status)"}


class ControlServer:
    """Serves :func:`answer` on a Unix socket at ``path`` (see the module docstring)."""

    def __init__(self, station: Clearable, path: str | Path = DEFAULT_SOCKET) -> None:
        self.station = station
        self.path = Path(path)
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None
        self._log = logs.get_logger("controller.control")

    async def start(self) -> None:
        """Bind the socket. A stale socket file (no one answering) is replaced; a live one
        (another controller running) or any other file there is left alone: ControlError."""
        p = self.path
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise ControlError(f"control socket {p}: a file that is not a socket is "
                                   "in the way; remove it or set control.socket")
            if await _alive(p):
                raise ControlError(f"control socket {p}: another process answers there "
                                   "(a second `mwc run`?)")
            p.unlink()
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(p),
                                                           limit=MAX_REQUEST)
            os.chmod(p, SOCKET_MODE)
        except OSError as exc:
            await self.close()
            raise ControlError(f"control socket {p}: {exc.strerror or exc}") from None
        self._log.info("control socket ready", path=str(p))

    async def close(self) -> None:
        """Stop serving and remove the socket file (only ours: it is a socket)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await logs.closing_step(asyncio.wait_for(server.wait_closed(), 2.0), self._log,
                                "control socket server")
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
                reply = answer(self.station, line)
            except TimeoutError:
                reply = {"ok": False, "error": f"no request within {REQUEST_TIMEOUT_S} s"}
            except asyncio.IncompleteReadError as exc:
                reply = (answer(self.station, exc.partial) if exc.partial
                         else {"ok": False, "error": "empty request"})
            except asyncio.LimitOverrunError:
                reply = {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
            except Exception as exc:  # a bad client never takes the station down
                self._log.exception("control request failed")
                reply = {"ok": False, "error": f"internal error: {exc!r}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await logs.closing_step(asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S),
                                    self._log, "control reply")
        finally:
            writer.close()
            await logs.closing_step(writer.wait_closed(), self._log, "control connection")


async def _alive(path: Path) -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    await logs.closing_step(w.wait_closed(), logs.get_logger("controller.control"),
                            "control socket probe")
    return True


async def request(path: str | Path, payload: dict[str, Any],
                  timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to a running controller; its reply. ControlError when the socket
    cannot be reached (the message names the path and what to check)."""
    p = Path(path)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(p)), timeout)
    except FileNotFoundError:
        raise ControlError(f"no control socket at {p}: is `mwc run` (mwc-controller) "
                           "running, with this control.socket?") from None
    except PermissionError:
        raise ControlError(f"control socket {p}: permission denied (run as root or as a "
                           "member of the service's group, mwc)") from None
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"control socket {p}: cannot connect ({exc!r}); the controller "
                           "is not answering") from None
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"control socket {p}: no answer ({exc!r})") from None
    finally:
        writer.close()
        await logs.closing_step(writer.wait_closed(), logs.get_logger("controller.control"),
                                "control request")
    try:
        reply = json.loads(line)
    except json.JSONDecodeError:
        raise ControlError(f"control socket {p}: unreadable answer {line[:200]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"control socket {p}: unexpected answer {reply!r}")
    return reply

"""One connected station: frame parsing, flood control, the Pending gate and outgoing calls.

``Session`` is mixed into the ``ocpp`` package's ChargePoint (v201 or v16). It replaces the
library's receive loop so that

- a malformed frame is answered with a CALLERROR (id ``-1`` when the id is unreadable) instead
  of being dropped, and never ends the connection;
- a station over its rate budget gets ``GenericError`` (it will retry: nothing is lost);
- a station not yet approved gets ``SecurityError`` for anything but BootNotification;
- CALLRESULTs nobody waits for are dropped instead of piling up in memory;
- frames are not logged at INFO (they carry idTokens; and at 2,000 stations it costs CPU);
- JSON is parsed strictly (``limits.parse_json``: no NaN/Infinity, bounded depth), so a
  hostile frame gets a CALLERROR and the connection stays open;
- a handler failure (InternalError: a bug of ours) logs its traceback once per cause and
  interval (``throttle.py``), not once per frame.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
from ocpp.charge_point import _raise_key_error, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, validate_payload
from ocpp.routing import on

from ocpp_server.config import CsmsConfig
from ocpp_server.limits import InvalidInput, NotJson, check_outgoing, check_tree, parse_json
from ocpp_server.metrics import Metrics
from ocpp_server.repository import Repository, TokenRecord
from ocpp_server.throttle import CauseThrottle, cause_of
from ocpp_server.timeutil import now_iso
from ocpp_server.validation import validate_request

log = structlog.get_logger("ocpp_server.session")


class FrameError(Exception):
    """A frame that is not a valid OCPP-J message; answered with a CALLERROR."""

    def __init__(self, message_id: str, code: str, description: str) -> None:
        super().__init__(description)
        self.message_id, self.code, self.description = message_id, code, description


class StationCallError(Exception):
    """The station answered a command with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any) -> None:
        super().__init__(f"{code}: {description}")
        self.code, self.description, self.details = code, description, details


@functools.lru_cache(maxsize=1024)
def _camel(key: str) -> str:
    return str(next(iter(snake_to_camel_case({key: None}))))


@functools.lru_cache(maxsize=256)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _encode(value: Any) -> Any:
    """A call_result dataclass as OCPP JSON: None dropped, keys camelCased.

    Same result as the library's serialize_as_dict + remove_nones + snake_to_camel_case
    (whose key conversion it reuses, cached), at a fraction of the cost.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_camel(k): _encode(v) for k in _field_names(type(value))
                if (v := getattr(value, k)) is not None}
    if isinstance(value, dict):
        return {_camel(k): _encode(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_encode(v) for v in value if v is not None]
    return value


class OutgoingInvalid(OCPPError):  # type: ignore[misc]
    """A command we were asked to send holds a value no station may get (NaN, 2^63...)."""

    code = "PropertyConstraintViolation"
    default_description = "a value of the request is out of range"


class StationGone(ConnectionError):
    """The station disconnected while a command waited for its answer."""


DISCONNECTED = object()  # queued to wake a pending command when the socket closes


def parse_frame(raw: str | bytes) -> Call | CallResult | CallError:
    """Decode one websocket frame; raises FrameError naming what is wrong.

    A CALL that is not strict JSON but whose messageId is readable gets a FormatViolation
    with that id (the station can match it); otherwise the id is "-1".
    """
    try:
        data = parse_json(raw)
    except NotJson as exc:
        if exc.message_id != "-1":
            raise FrameError(exc.message_id, "FormatViolation", exc.reason) from None
        raise FrameError("-1", "RpcFrameworkError", "message is not valid JSON") from None
    if not isinstance(data, list) or not data:
        raise FrameError("-1", "RpcFrameworkError", "message is not a JSON array")
    mid = data[1] if len(data) > 1 and isinstance(data[1], str) else "-1"
    if mid == "-1" or len(mid) > 36:
        raise FrameError("-1", "RpcFrameworkError", "MessageId missing, not a string or > 36")
    kind = data[0]
    if kind == MessageType.Call:
        if len(data) != 4 or not isinstance(data[2], str) or not isinstance(data[3], dict):
            raise FrameError(mid, "RpcFrameworkError",
                             "CALL must be [2, messageId, action, {payload}]")
        return Call(mid, data[2], data[3])
    if kind == MessageType.CallResult:
        if len(data) != 3 or not isinstance(data[2], dict):
            raise FrameError(mid, "RpcFrameworkError", "CALLRESULT must be [3, messageId, {}]")
        return CallResult(mid, data[2])
    if kind == MessageType.CallError:
        if len(data) != 5:
            raise FrameError(mid, "RpcFrameworkError", "CALLERROR must have 5 elements")
        return CallError(mid, data[2], data[3], data[4])
    raise FrameError(mid, "MessageTypeNotSupported", f"MessageTypeId {kind!r} is not supported")


class TokenBucket:
    """Admits ``rate`` events per second on average with bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Backend:
    """What every session shares: configuration, storage and the live sessions."""

    cfg: CsmsConfig
    repo: Repository
    sessions: dict[str, Session] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    tracebacks: CauseThrottle = field(default_factory=CauseThrottle)


async def authorize(repo: Repository, id_token: str) -> tuple[str, TokenRecord | None]:
    """Status of a token by the backend's list: Unknown, Blocked, Expired or its own status."""
    token = await repo.get_token(id_token)
    if token is None:
        return "Unknown", None
    if token.status == "Accepted" and token.expiry is not None and token.expiry < now_iso():
        return "Expired", token
    return token.status, token


F = TypeVar("F", bound=Callable[..., Any])


def handles(action: str) -> Callable[[F], F]:
    """``ocpp.routing.on`` with a type: registers an ``@on`` handler for ``action``."""
    return cast(Callable[[F], F], on(action))


class Session:
    """Mixin over ``ocpp.ChargePoint``; the subclasses add the ``@on`` handlers."""

    subprotocol: str = ""
    id: str
    _ocpp_version: str

    def __init__(self, station_id: str, connection: Any, backend: Backend, approved: bool,
                 security_profile: int) -> None:
        super().__init__(station_id, connection,  # type: ignore[call-arg]
                         response_timeout=backend.cfg.ocpp.call_timeout)
        self.backend = backend
        self.repo = backend.repo
        self.cfg = backend.cfg.ocpp
        self.approved = approved
        self.security_profile = security_profile
        self.connected_at = now_iso()
        self.last_message_at: str | None = None
        self.evse_status: dict[str, str] = {}
        self.current: Call | None = None  # the CALL being handled (raw camelCase payload)
        self._bucket = TokenBucket(self.cfg.rate_per_s, self.cfg.rate_burst)
        self._warnings = 0

    @functools.cached_property
    def log(self) -> Any:
        """The session's logger, bound on first use: most sessions never log above INFO, and
        binding costs as much as the rest of a connection's setup (a reconnect storm)."""
        return log.bind(station_id=self.id, protocol=self.subprotocol)

    def _warn(self, event: str, **kw: Any) -> None:
        """Log a station's misbehaviour without letting a flood of it flood the log."""
        self._warnings += 1
        if self._warnings <= 20 or self._warnings % 1000 == 0:
            self.log.warning(event, occurrences=self._warnings, **kw)

    # receive side ---------------------------------------------------------------------
    async def start(self) -> None:
        while True:
            raw = await self._connection.recv()  # type: ignore[attr-defined]
            await self.route_message(raw)

    async def route_message(self, raw_msg: str | bytes) -> None:
        self.last_message_at = now_iso()
        try:
            msg = parse_frame(raw_msg)
        except FrameError as exc:
            self._warn("bad_frame", code=exc.code, reason=exc.description)
            code = exc.code
            if code == "FormatViolation" and self._ocpp_version == "1.6":
                code = "FormationViolation"
            await self._send(CallError(exc.message_id, code, exc.description, {}).to_json())
            return
        if isinstance(msg, Call):
            t0 = time.perf_counter()
            ok = await self._on_call(msg)
            self.backend.metrics.observe(msg.action, (time.perf_counter() - t0) * 1000, ok)
        elif self._call_lock.locked():  # type: ignore[attr-defined]
            self._response_queue.put_nowait(msg)  # type: ignore[attr-defined]
        else:
            self._warn("unsolicited_response", message_id=msg.unique_id)

    async def _on_call(self, msg: Call) -> bool:
        """Answer one CALL; False when the answer was a CALLERROR."""
        error: tuple[str, str] | None = None
        if not self._bucket.take():
            error = ("GenericError", "rate limit exceeded; retry later")
        elif not self.approved and msg.action != "BootNotification":
            error = ("SecurityError", "station is not accepted; send BootNotification first")
        if error is not None:
            self._warn("call_refused", action=msg.action[:40], code=error[0])
            await self._send(CallError(msg.unique_id, error[0], error[1], {}).to_json())
            return False
        self.current = msg
        try:
            reply = await self._dispatch(msg)
        except Exception as exc:  # an OCPPError names the problem; anything else is ours
            if not isinstance(exc, OCPPError):
                self._internal_error(msg.action, exc)
            await self._send(msg.create_call_error(exc).to_json())
            return False
        await self._send(reply)
        return True

    def _internal_error(self, action: str, exc: Exception) -> None:
        """Count a bug of ours; its traceback is logged once per cause and interval."""
        self.backend.metrics.internal_errors += 1
        cause = f"{action[:40]}:{cause_of(exc)}"
        allowed, suppressed = self.backend.tracebacks.allow(cause)
        if allowed:
            self.log.error("handler_failed", action=action[:40], cause=cause,
                           suppressed_since_last=suppressed, exc_info=exc)

    async def _dispatch(self, msg: Call) -> str:
        """Validate, run the ``@on`` handler, and encode its answer.

        Replaces the library's ``_handle_call`` on the hot path: the handlers read the raw
        camelCase payload from ``self.current``, so the library's recursive key renaming and
        ``jsonschema`` validation (about 1.3 ms per TransactionEvent) are not needed; the
        schemas are the library's, compiled (``validation.py``).
        """
        handlers = self.route_map.get(msg.action)  # type: ignore[attr-defined]
        if handlers is None or "_on_action" not in handlers:
            _raise_key_error(msg.action, self._ocpp_version)
        validate_request(self._ocpp_version, msg.action, msg.payload)
        response = await handlers["_on_action"]()
        return json.dumps([3, msg.unique_id, _encode(response)], separators=(",", ":"))

    async def _send(self, message: str) -> None:
        await self._connection.send(message)  # type: ignore[attr-defined]

    # send side ------------------------------------------------------------------------
    async def vet_call(self, action: str, payload: dict[str, Any]) -> Call:
        """The CALL ``call_raw`` would send; raises (OutgoingInvalid, OCPPError) as it does
        when the request is out of range or violates the schema, so a caller can check a
        request before recording it."""
        call = Call(str(uuid.uuid4()), action, payload)
        try:
            check_outgoing(payload)
        except InvalidInput as exc:
            raise OutgoingInvalid(str(exc), {"field": exc.field}) from None
        await validate_payload(call, self._ocpp_version)
        return call

    async def call_raw(self, action: str, payload: dict[str, Any],
                       timeout: float | None = None) -> dict[str, Any]:
        """Send a CALL built from a camelCase payload; returns the CALLRESULT payload.

        Raises an OCPPError when the request violates the schema (nothing is sent),
        StationCallError when the station answers with a CALLERROR, TimeoutError when it
        does not answer within ``timeout`` (default: ``call_timeout``).
        """
        call = await self.vet_call(action, payload)
        async with asyncio.timeout(timeout or self.cfg.call_timeout):
            async with self._call_lock:  # type: ignore[attr-defined]
                await self._send(call.to_json())
                while True:
                    response = await self._response_queue.get()  # type: ignore[attr-defined]
                    if response is DISCONNECTED:
                        raise StationGone(f"station {self.id} disconnected")
                    if response.unique_id == call.unique_id:
                        break
        if isinstance(response, CallError):
            raise StationCallError(response.error_code, response.error_description,
                                   response.error_details)
        try:
            check_tree(response.payload)
        except InvalidInput as exc:
            raise StationCallError("FormatViolation", f"the station's answer: {exc}",
                                   {}) from None
        response.action = action
        try:
            await validate_payload(response, self._ocpp_version)
        except Exception as exc:
            self.log.warning("invalid_response", action=action, error=str(exc))
        return dict(response.payload)

    async def admit_boot(self, version: str, info: dict[str, Any]) -> tuple[str, int]:
        """Record a BootNotification and decide it: (status, interval) for either version.

        Accepted with the heartbeat interval for an approved station, else Pending with the
        pending interval; one decision for OCPP 1.6J and 2.0.1.
        """
        await self.repo.record_boot(self.id, version, info)
        station = await self.repo.get_station(self.id)
        self.approved = station is not None and station.approved
        if self.approved:
            return "Accepted", self.cfg.heartbeat_interval
        return "Pending", self.cfg.pending_interval

    def status(self) -> dict[str, Any]:
        """Live connection state for the API."""
        return {"connected": True, "protocol": self.subprotocol,
                "security_profile": self.security_profile, "connected_at": self.connected_at,
                "last_message_at": self.last_message_at, "approved": self.approved,
                "evse_status": dict(self.evse_status)}

"""The storage contract: what the backend needs from a database, and nothing else.

Every write method returns only after the data is durable (committed), because the OCPP
handlers answer a station's CALL after the write returns: what a station was told is
confirmed must survive a backend crash. ``SqliteRepository`` (``storage.py``) is the default
implementation; a Postgres one would implement the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StationRecord:
    """A station the backend knows; ``password_hash`` is a scrypt string, never a password."""

    id: str
    security_profile: int
    approved: bool
    password_hash: str | None = None
    ocpp_version: str | None = None
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_version: str | None = None
    created_at: str | None = None
    last_boot_at: str | None = None
    rated_power_w: float | None = None  # for meter-value plausibility; None: the default

    def public(self) -> dict[str, Any]:
        """The record as the API shows it: with a flag instead of the hash."""
        out = {k: v for k, v in self.__dict__.items() if k != "password_hash"}
        out["has_password"] = self.password_hash is not None
        return out


@dataclass(frozen=True)
class TokenRecord:
    """An idToken (2.0.1) or idTag (1.6) and its authorization data."""

    id_token: str
    type: str = "ISO14443"
    status: str = "Accepted"
    expiry: str | None = None  # ISO 8601 UTC
    group_id: str | None = None


@dataclass(frozen=True)
class TxFilter:
    station_id: str | None = None
    id_token: str | None = None
    active: bool | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    offset: int = 0


class AlreadyExists(Exception):
    """An insert collided with an existing primary key."""


class Repository(Protocol):
    """Persistent state of the backend. All methods are coroutines safe to call concurrently."""

    async def open(self) -> None:
        """Create or migrate the schema; must be called before anything else."""

    async def close(self) -> None:
        """Flush pending writes and release the database."""

    # stations -------------------------------------------------------------------------
    async def add_station(self, station: StationRecord) -> None:
        """Insert a station; raises AlreadyExists when the id is taken."""

    async def get_station(self, station_id: str) -> StationRecord | None: ...

    async def list_stations(self) -> list[StationRecord]: ...

    async def set_station_password(self, station_id: str, password_hash: str | None) -> bool:
        """Replace the password hash; False when the station is unknown."""

    async def set_station_rating(self, station_id: str, rated_power_w: float | None) -> bool:
        """The station's rated power (W) for plausibility checks; None: the backend default.
        False when the station is unknown."""

    async def set_station_approved(self, station_id: str, approved: bool) -> bool:
        """Approve (BootNotification Accepted) or hold back (Pending) a station."""

    async def record_boot(self, station_id: str, ocpp_version: str, info: dict[str, Any]) -> None:
        """Remember vendor/model/serial/firmware from a BootNotification."""

    # tokens ---------------------------------------------------------------------------
    async def upsert_token(self, token: TokenRecord) -> None: ...

    async def get_token(self, id_token: str) -> TokenRecord | None: ...

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def set_token_status(self, id_token: str, status: str) -> bool:
        """Block/unblock a token; False when unknown."""

    # connections and status -----------------------------------------------------------
    async def open_connection(
        self, station_id: str, protocol: str, remote: str, security_profile: int
    ) -> int:
        """Log a websocket connection; returns its id for ``close_connection``."""

    async def close_connection(self, connection_id: int, code: int | None) -> None: ...

    async def record_status(
        self, station_id: str, evse_id: int, connector_id: int, status: str,
        error_code: str | None, timestamp: str,
    ) -> None:
        """Append to the status history."""

    async def latest_statuses(self, station_id: str) -> list[dict[str, Any]]:
        """The most recent status per (evse, connector)."""

    # transactions ---------------------------------------------------------------------
    async def record_transaction_event(self, station_id: str, payload: dict[str, Any]) -> bool:
        """Store a 2.0.1 TransactionEventRequest (camelCase, as received) and its meter values.

        Idempotent on (station, transactionId, seqNo): returns False for a duplicate, which
        changes nothing. Events may arrive in any order; the transaction summary
        (start, end, token, EVSE) is derived from all events seen.
        """

    async def start_transaction_v16(self, station_id: str, payload: dict[str, Any]) -> int:
        """Store a 1.6 StartTransaction and return the backend-assigned transaction id.

        A repeated identical request (same connector, idTag, timestamp, meterStart) returns
        the id already assigned instead of opening a second transaction.
        """

    async def stop_transaction_v16(self, station_id: str, payload: dict[str, Any]) -> bool:
        """Store a 1.6 StopTransaction with its transactionData; False for an unknown id."""

    async def record_meter_values(
        self, station_id: str, evse_id: int, transaction_id: str | None,
        meter_values: list[dict[str, Any]], source: str,
    ) -> None:
        """Store a MeterValues request's samples (2.0.1 or 1.6 shape)."""

    async def list_transactions(self, flt: TxFilter) -> list[dict[str, Any]]: ...

    async def get_transaction(self, tx_pk: int) -> dict[str, Any] | None:
        """One transaction with its events, meter values and delivered energy (Wh)."""

    # everything else a station sends -------------------------------------------------
    async def record_message(self, station_id: str, action: str, payload: dict[str, Any]) -> None:
        """Keep a request that has no table of its own (NotifyReport, DataTransfer, ...)."""

    async def list_messages(
        self, station_id: str, action: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Oldest first, at most ``limit`` (payloads are bounded in depth and size)."""

    async def adopt_remote_start_token(
        self, station_id: str, transaction_id: str, remote_start_id: int
    ) -> str | None:
        """Give a 2.0.1 transaction whose events carry no idToken the token of the
        RequestStartTransaction (kept as a message) with this remoteStartId (F01/F02).

        Returns that token, or None when no such request was sent; a token the station
        reported itself is never overwritten.
        """

    async def record_security_event(
        self, station_id: str, type_: str, timestamp: str, tech_info: str | None
    ) -> None: ...

    async def list_security_events(self, station_id: str) -> list[dict[str, Any]]: ...

    async def record_charging_profile(
        self, station_id: str, evse_id: int, profile: dict[str, Any], status: str
    ) -> None:
        """Remember a charging profile sent to a station and the station's answer."""

    async def list_charging_profiles(self, station_id: str) -> list[dict[str, Any]]: ...

"""``VehicleLink`` over Modbus TCP: one gun's SECC bridge (register map: power/secc_map.py).

The control cycle must never wait for the vehicle, so the link keeps its own asyncio task
(``await link.start_io()`` … ``await link.close()``) that polls the bridge every ``poll_s``
(50 ms): it writes what the station wished since the last poll (a START/STOP command, the
available current and voltage when they changed or every ``keepalive_polls`` polls), then
reads the status block. ``status()`` returns the last decoded status at once, stamped with
``read_at`` from the injected clock. ``poll_once()`` is one such poll, for tests on a
simulated clock.

A missed, late or bad read is *not* an unplug: only a sane status block saying "not plugged"
is. When the bridge does not answer, answers garbage (the logged error names the register
and value) or a Modbus exception, or its heartbeat register has not moved for
``heartbeat_timeout_s``, the link keeps the last sane status with its old ``read_at``, so
it ages: the station cuts the gun to 0 A once it is older than ``vehicle_timeout_s`` and
ends the session only once it is older than ``vehicle_silence_s`` (controller/session.py).
A single slow read on a loaded machine therefore costs at most a pause, never a session.
A bridge that comes back without the energy transfer the station started (it restarted)
gets START again (``RESTART_EVERY_S``), so the running session resumes.
``health`` still says whether the bridge answers (doctor, metrics, logs: one line per
problem and one when it is back). Connection and backoff come from ``power.modbus_base``:
one pymodbus client per link, reconnected by the link itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from controller.vehicle import VehicleStatus
from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceEndpoint,
    DeviceHealth,
    HardwareError,
    LinkSettings,
    ModbusExceptionError,
    ModbusLink,
)
from power.secc_map import (
    SECC_INPUT_COUNT,
    SECC_INPUT_START,
    SeccCommand,
    SeccDecodeError,
    SeccHolding,
    SeccReading,
    decode_status,
    encode_available,
)

#: A bridge that reports no energy transfer during a running session gets START again, at
#: most this often (s): after an SECC / bridge restart the truck waits for it.
RESTART_EVERY_S = 1.0

#: How long close() waits for the polling task to end after cancelling it.
CLOSE_WAIT_S = 2.0


class ModbusVehicleLink:
    """One gun's ``VehicleLink`` to an SECC bridge over Modbus TCP (see the module doc)."""

    def __init__(
        self,
        endpoint: DeviceEndpoint,
        link_settings: LinkSettings | None = None,
        clock: Clock = time.monotonic,
        *,
        name: str | None = None,
        poll_s: float = 0.05,
        keepalive_polls: int = 10,
        heartbeat_timeout_s: float = 0.5,
        link: ModbusLink | None = None,
    ) -> None:
        self.name = name or f"SECC {endpoint}"
        self._log = structlog.get_logger("controller.vehicle")  # (per link: resolved lazily)
        self.clock = clock
        self.poll_s = poll_s
        self.keepalive_polls = max(1, keepalive_polls)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.link = link or ModbusLink(endpoint, self.name, link_settings, clock)
        self.health = DeviceHealth(self.link.settings.max_missed)
        self._status = VehicleStatus(plugged=False, read_at=clock())
        self._reading: SeccReading | None = None  # last sane reply, for diagnostics
        self._heartbeat: int | None = None
        self._heartbeat_at = 0.0
        self._command = SeccCommand.NONE  # pending START/STOP (latest wish wins)
        self._transfer_wanted = False  # START sent and no STOP since
        self._restarted_at = -1e9  # last START re-sent to a bridge that lost the transfer
        self.restarts = 0
        self._available: tuple[float, float] | None = None  # wished
        self._written: list[int] | None = None  # registers 101..104 last written
        self._since_write = 0
        self._logged: str | None = None  # last problem logged (log transitions, not polls)
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        self.errors = 0

    # ------------------------------------------------------------------ VehicleLink
    def status(self) -> VehicleStatus:
        return self._status

    def start(self) -> None:
        self._command = SeccCommand.START
        self._transfer_wanted = True

    def stop(self) -> None:
        self._command = SeccCommand.STOP
        self._transfer_wanted = False

    def set_available(self, current_a: float, voltage_v: float) -> None:
        self._available = (float(current_a), float(voltage_v))

    # ------------------------------------------------------------------ I/O task
    async def start_io(self) -> None:
        """Start polling in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"vehicle {self.name}")

    async def close(self) -> None:
        """Stop polling, tell the bridge STOP if energy transfer is on (or a STOP is
        pending) and the bridge is reachable, disconnect."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: a poll stuck inside the Modbus library must not hold up the stop
            await asyncio.wait([task], timeout=CLOSE_WAIT_S)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved; the link is closing anyway
        if self._reading is not None and self._reading.energy_transfer:
            self._command = SeccCommand.STOP
        if self._command is SeccCommand.STOP and self.link.connected:
            with contextlib.suppress(HardwareError):
                await self.link.run_poll(self._write_command)
        await self.link.close()
        self._status = VehicleStatus(plugged=False, read_at=self.clock())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the task die: a dead link goes stale
                self._lost(f"{self.name}: unexpected error: {exc!r}", bad=True)
            await asyncio.sleep(max(0.0, self.poll_s - (loop.time() - t0)))

    async def poll_once(self) -> None:
        """One poll: pending writes, then the status read; never raises for device trouble."""
        self.polls += 1
        try:
            await self.link.run_poll(self._exchange)
        except (SeccDecodeError, BadReplyError, ModbusExceptionError) as exc:
            self._lost(str(exc), bad=True)
        except HardwareError as exc:
            self._lost(str(exc), bad=False)

    async def _exchange(self) -> None:
        await self._write_command()
        wish = self._available
        if wish is not None:  # (compared as registers: changes below 0.1 A/V are not sent)
            self._since_write += 1
            regs = encode_available(*wish)
            if regs != self._written or self._since_write >= self.keepalive_polls:
                await self.link.write_registers(SeccHolding.AVAILABLE_CURRENT, regs)
                self._written, self._since_write = regs, 0
        regs = await self.link.read_input(SECC_INPUT_START, SECC_INPUT_COUNT)
        now = self.clock()
        try:
            reading = decode_status(regs)
        except SeccDecodeError as exc:
            raise SeccDecodeError(f"{self.name}: {exc}") from None
        self._accept(reading, now)

    async def _write_command(self) -> None:
        cmd = self._command
        if cmd is SeccCommand.NONE:
            return
        try:
            await self.link.write_register(SeccHolding.COMMAND, int(cmd))
        except ModbusExceptionError as exc:  # refused: retrying would not help
            if self._command is cmd:
                self._command = SeccCommand.NONE
            self._log.error("SECC refused command", device=self.name, command=cmd.name,
                       error=str(exc))
            return
        if self._command is cmd:  # (a newer wish that arrived meanwhile stays pending)
            self._command = SeccCommand.NONE

    def _accept(self, r: SeccReading, now: float) -> None:
        if r.heartbeat != self._heartbeat:
            self._heartbeat, self._heartbeat_at = r.heartbeat, now
        elif now - self._heartbeat_at > self.heartbeat_timeout_s:
            self._lost(f"{self.name}: heartbeat (input register 1) stuck at {r.heartbeat} for "
                       f"more than {self.heartbeat_timeout_s} s", bad=True)
            return
        self.health.ok()
        self._reading = r
        if (self._transfer_wanted and r.plugged and not r.energy_transfer
                and not r.stop_requested and self._command is SeccCommand.NONE
                and now - self._restarted_at >= RESTART_EVERY_S):
            # the bridge forgot the transfer (it restarted): the session goes on, ask again
            self._command = SeccCommand.START
            self._restarted_at = now
            self.restarts += 1
            self._log.warning("SECC lost the energy transfer of a running session: START "
                              "sent again", device=self.name)
        if self._logged is not None:
            self._log.info("SECC link ok", device=self.name, after=self._logged)
            self._logged = None
        self._status = VehicleStatus(
            plugged=r.plugged, ev_max_current_a=r.ev_max_current_a,
            ev_max_voltage_v=r.ev_max_voltage_v, target_voltage_v=r.target_voltage_v,
            present_voltage_v=r.present_voltage_v, request_a=r.request_a, soc_pct=r.soc_pct,
            stop_requested=r.stop_requested, id_token=r.id_token, read_at=now,
        )

    def _lost(self, reason: str, *, bad: bool) -> None:
        """Book a failed poll. The status keeps the last sane reading and its ``read_at``
        (it ages; the station decides what that means), never a made-up unplug."""
        self.errors += 1
        if bad:
            self.health.bad(reason)
        else:
            self.health.miss(reason)
        if not self.health.available:
            self._written = None  # rewrite the available values once the bridge is back
        key = reason if bad else "unreachable"  # (unreachable texts vary from poll to poll)
        if key != self._logged and not self.health.available:
            self._log.error("SECC link problem: last vehicle status ageing", device=self.name,
                            error=reason, status_age_s=round(self.clock() - self._status.read_at,
                                                             3))
            self._logged = key

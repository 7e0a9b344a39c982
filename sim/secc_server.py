"""Simulated SECC bridges: each gun's ``TruckSim`` served over Modbus TCP (power/secc_map.py).

In a cabinet the SECC board talks to the truck and a Modbus TCP bridge exposes it; here the
truck simulator is both the gun's electrical load in ``StationPhysics`` and the vehicle behind
the bridge, so a controller in another process (``mwc run``) sees the same truck the physics
charges. Reads return the truck's status at that instant; writes call ``truck.start()`` /
``stop()`` / ``set_available()``. The bridges of all guns share one port of the
``StationSimulator`` (``add_devices``; layout ``base + M + 3``, gun g is unit g + 1), and the
simulator's control device gains the ``SeccSimCommand`` commands: plug, unplug, stop request,
freeze/resume the bridge heartbeat, and ``SECC_DELAY_MS`` (value = milliseconds every answer
of the bridge is held back, 0 = on time): a slow SECC on a loaded cabinet PC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from power.modbus_map import SIM_TARGET_ALL
from power.secc_map import (
    SECC_HOLDING_COUNT,
    SECC_HOLDING_START,
    SECC_INPUT_COUNT,
    SeccCommand,
    SeccDecodeError,
    SeccHolding,
    SeccReading,
    SeccSimCommand,
    decode_available,
    encode_available,
    encode_status,
    secc_port,
    secc_unit,
)
from sim.modbus_server import StationSimulator
from sim.truck import TruckSim

SECC_NAME = "secc"  # the key of the SECC port in StationSimulator.describe()
#: Control-device command (same write as ``SeccSimCommand``): hold every answer of the
#: target bridge(s) back by ``value`` ms (0: answer at once). Not in ``SeccSimCommand`` yet,
#: which lives in power/secc_map.py; 30 keeps clear of its 20..24.
SECC_DELAY_MS = 30


class SeccBridge:
    """One gun's bridge: the truck's status as registers, commands to the truck.

    The heartbeat moves on every status read (a live bridge); ``frozen`` stops it while the
    bridge keeps answering, as a hung SECC behind a live Modbus stack would.
    """

    def __init__(self, gun: int, truck: TruckSim | None) -> None:
        self.gun = gun
        self.truck = truck
        self.heartbeat = 0
        self.frozen = False
        self.delay_s = 0.0  # every answer held back this long (a slow SECC)
        self.last_command = SeccCommand.NONE
        self.answered = 0  # status reads answered (tests: the bridge kept being asked)

    def input_registers(self) -> list[int]:
        if not self.frozen:
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        t = self.truck
        if t is None:
            return encode_status(SeccReading(heartbeat=self.heartbeat))
        s = t.status()
        token = (s.id_token or "")[:20]
        return encode_status(SeccReading(
            plugged=s.plugged, ev_max_current_a=s.ev_max_current_a,
            ev_max_voltage_v=s.ev_max_voltage_v, target_voltage_v=s.target_voltage_v,
            present_voltage_v=s.present_voltage_v, request_a=s.request_a, soc_pct=s.soc_pct,
            stop_requested=s.stop_requested, id_token=token or None,
            heartbeat=self.heartbeat, energy_transfer=s.plugged and t.charging,
        ))

    def holding_registers(self) -> list[int]:
        t = self.truck
        avail = encode_available(t.available_a, t.available_v) if t else [0, 0, 0, 0]
        return [int(self.last_command), *avail]

    def write(self, address: int, values: Sequence[int]) -> ExcCodes | None:
        """Apply a holding-register write; an exception code when refused."""
        regs = self.holding_registers()
        off = address - SECC_HOLDING_START
        if off < 0 or off + len(values) > SECC_HOLDING_COUNT:
            return ExcCodes.ILLEGAL_ADDRESS
        merged = list(regs)
        merged[off : off + len(values)] = [int(v) for v in values]
        try:
            current_a, voltage_v = decode_available(merged, 1)
            command = SeccCommand(merged[0])
        except (SeccDecodeError, ValueError):
            return ExcCodes.ILLEGAL_VALUE
        t = self.truck
        if t is None:
            return ExcCodes.ILLEGAL_VALUE if command is SeccCommand.START else None
        if off <= SeccHolding.COMMAND - SECC_HOLDING_START < off + len(values):
            if command is SeccCommand.START:
                if not t.plugged:
                    return ExcCodes.ILLEGAL_VALUE  # nothing to start: refused
                t.start()
            elif command is SeccCommand.STOP:
                t.stop()
            self.last_command = command
        if off + len(values) > 1:
            t.set_available(current_a, voltage_v)
        return None

    def device(self) -> SimDevice:
        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if self.delay_s > 0.0:
                await asyncio.sleep(self.delay_s)
            if fc == 4:
                regs[0:SECC_INPUT_COUNT] = self.input_registers()
                self.answered += 1
                return None
            if fc == 3 or (fc in (6, 16) and values is None):  # (read-back after a write)
                base = SECC_HOLDING_START - start
                regs[base : base + SECC_HOLDING_COUNT] = self.holding_registers()
                return None
            if fc in (6, 16) and values is not None:
                return self.write(address, [int(v) for v in values])
            return ExcCodes.ILLEGAL_FUNCTION

        return SimDevice(
            id=secc_unit(self.gun),
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(SECC_HOLDING_START, count=SECC_HOLDING_COUNT,
                         datatype=DataType.REGISTERS)],
                [SimData(0, count=SECC_INPUT_COUNT, datatype=DataType.REGISTERS)],
            ),
            action=action,
        )


class SeccBridges:
    """Every gun's bridge, and the control-device commands that act on them."""

    def __init__(self, trucks: Sequence[TruckSim | None]) -> None:
        self.bridges = [SeccBridge(g, t) for g, t in enumerate(trucks)]

    def _targets(self, target: int) -> list[SeccBridge]:
        if target == SIM_TARGET_ALL:
            return list(self.bridges)
        if not 0 <= target < len(self.bridges):
            raise IndexError(target)
        return [self.bridges[target]]

    def delay(self, target: int, ms: int) -> str | None:
        """Hold the answers of ``target`` (a gun, or all) back by ``ms``; refusal text or None."""
        if not 0 <= ms <= 60_000:
            return f"delay {ms} ms out of range 0..60000"
        try:
            bridges = self._targets(target)
        except IndexError:
            return f"gun {target} out of range for SECC_DELAY_MS"
        for b in bridges:
            b.delay_s = ms / 1000.0
        return None

    def command(self, cmd: SeccSimCommand, target: int) -> str | None:
        """Run one ``SeccSimCommand``; the refusal text, or None."""
        try:
            bridges = self._targets(target)
        except IndexError:
            return f"gun {target} out of range for {cmd.name}"
        for b in bridges:
            t = b.truck
            if cmd in (SeccSimCommand.SECC_FREEZE, SeccSimCommand.SECC_RESUME):
                b.frozen = cmd is SeccSimCommand.SECC_FREEZE
            elif t is None:
                if target != SIM_TARGET_ALL:
                    return f"gun {b.gun} has no truck"
            elif cmd is SeccSimCommand.VEHICLE_PLUG:
                t.plug_in()
            elif cmd is SeccSimCommand.VEHICLE_UNPLUG:
                t.unplug()
            elif cmd is SeccSimCommand.VEHICLE_STOP_REQUEST:
                t.request_stop()
        return None

    def attach(self, sim: StationSimulator) -> None:
        """Serve the bridges on the simulator's SECC port and add the control commands."""
        loads = sim.physics.loads
        for b in self.bridges:
            if b.truck is not None and (b.gun >= len(loads) or loads[b.gun] is not b.truck):
                raise ValueError(f"truck of gun {b.gun} is not that gun's load in the physics")

        def handler(cmd: SeccSimCommand) -> Callable[[int, int], str | None]:
            return lambda target, _value: self.command(cmd, target)

        commands = {int(c): handler(c) for c in SeccSimCommand}
        commands[SECC_DELAY_MS] = self.delay
        sim.add_devices(
            SECC_NAME, lambda: [b.device() for b in self.bridges],
            secc_port(sim.base_port, len(sim.physics.modules)),
            info={"units": [secc_unit(g) for g in range(len(self.bridges))]},
            commands=commands,
        )


def serve_trucks(sim: StationSimulator, trucks: Sequence[TruckSim | None]) -> SeccBridges:
    """Attach SECC bridges for ``trucks`` (gun order, each its gun's physics load) to ``sim``
    before ``sim.start()``; ``sim.ports.extra["secc"]`` is the port afterwards."""
    bridges = SeccBridges(trucks)
    bridges.attach(sim)
    return bridges

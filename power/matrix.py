"""Contactor-matrix driver: the ``MatrixDriver`` contract and its Modbus TCP implementation.

The matrix connects any module to either gun. The hardware interlock (a module on at most one
gun) is authoritative: a refused ``connect`` raises ``InterlockRefusedError``. DC contactors
must switch at (near) zero current; that is the control cycle's job, not this driver's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceEndpoint,
    DeviceHealth,
    HardwareError,
    InterlockRefusedError,
    LinkSettings,
    ModbusExceptionError,
    ModbusLink,
)
from power.modbus_map import (
    MATRIX_INPUT_COUNT,
    MatrixFault,
    MatrixInput,
    coil_index,
)

BoolGrid = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class MatrixState:
    """One poll of the matrix at ``read_at``.

    ``closed`` is the auxiliary-contact feedback (what is really closed), ``commanded`` the
    coils, both (M, G) bool. When unavailable they are the last known values (all False if
    none) and ``reason`` says why.
    """

    modules: int
    guns: int
    available: bool
    reason: str | None
    read_at: float
    closed: BoolGrid = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    commanded: BoolGrid = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    fault_word: int = 0

    @property
    def fresh(self) -> bool:
        """Answered this poll: not unavailable, not a tolerated miss ("stale:" reason)."""
        return self.available and not (self.reason or "").startswith("stale:")

    @property
    def welded(self) -> bool:
        return bool(self.fault_word & MatrixFault.WELDED_CONTACT)

    @property
    def interlock_refused(self) -> bool:
        return bool(self.fault_word & MatrixFault.INTERLOCK_REFUSED)

    def module_gun(self) -> npt.NDArray[np.int64]:
        """(M,) int64: the gun each module is closed onto; -1 none, -2 more than one (fault)."""
        closed = self.closed
        out = np.full(self.modules, -1, dtype=np.int64)
        if closed.size == 0:
            return out
        count = closed.sum(axis=1)
        out[count == 1] = np.argmax(closed[count == 1], axis=1)
        out[count > 1] = -2
        return out

    def mismatch(self) -> BoolGrid:
        """Contactors whose feedback differs from the coil (switching, or welded)."""
        return np.asarray(self.closed != self.commanded, dtype=bool)


@runtime_checkable
class MatrixDriver(Protocol):
    """Contract of the contactor matrix (M modules × G guns).

    ``poll`` never raises for device trouble (``available`` False plus a reason).
    ``connect(m, g)`` closes the contactor module m → gun g; it raises
    ``InterlockRefusedError`` when the matrix refuses because m is commanded or still closed on
    another gun (open it and wait for the feedback first: break before make), other
    ``HardwareError`` subclasses when the command did not get through, ``ValueError`` for
    indices out of range. ``disconnect(m, g)`` opens it.
    """

    modules: int
    guns: int

    async def poll(self) -> MatrixState: ...

    async def connect(self, module: int, gun: int) -> None: ...

    async def disconnect(self, module: int, gun: int) -> None: ...

    async def close(self) -> None: ...


class ModbusMatrix:
    """``MatrixDriver`` over Modbus TCP (see ``docs/modbus-map.md``)."""

    def __init__(
        self,
        modules: int,
        guns: int,
        endpoint: DeviceEndpoint,
        settings: LinkSettings | None = None,
        clock: Clock = time.monotonic,
        link: ModbusLink | None = None,
    ) -> None:
        self.modules = modules
        self.guns = guns
        self.clock = clock
        self.link = link or ModbusLink(endpoint, "matrix", settings, clock)
        self.health = DeviceHealth(self.link.settings.max_missed)
        empty = np.zeros((modules, guns), dtype=bool)
        self._last = MatrixState(modules, guns, False, "not polled yet", clock(), empty, empty)

    @property
    def last(self) -> MatrixState:
        return self._last

    async def poll(self) -> MatrixState:
        """Read size and fault word, coils and feedback (three requests on one connection)."""
        n = self.modules * self.guns

        async def read() -> tuple[list[int], list[bool], list[bool]]:
            regs = await self.link.read_input(0, MATRIX_INPUT_COUNT)
            m, g = regs[MatrixInput.MODULES], regs[MatrixInput.GUNS]
            if (m, g) != (self.modules, self.guns):
                raise BadReplyError(
                    f"matrix reports {m} modules × {g} guns, configured "
                    f"{self.modules} × {self.guns}"
                )
            coils = await self.link.read_coils(0, n)
            feedback = await self.link.read_discrete(0, n)
            return regs, coils, feedback

        try:
            regs, coils, feedback = await self.link.run_poll(read)
        except HardwareError as exc:
            self.health.record(exc)
            self._last = replace(self._last, available=self.health.available,
                                 reason=self.health.reason, read_at=self.clock())
            if self.health.available:  # a tolerated miss: coils and feedback are old
                self._last = replace(self._last, reason=f"stale: {exc}")
            return self._last
        self.health.ok()
        shape = (self.modules, self.guns)
        self._last = MatrixState(
            self.modules, self.guns, True, None, self.clock(),
            np.array(feedback, dtype=bool).reshape(shape),
            np.array(coils, dtype=bool).reshape(shape),
            regs[MatrixInput.FAULT_WORD],
        )
        return self._last

    def _index(self, module: int, gun: int) -> int:
        if not 0 <= module < self.modules:
            raise ValueError(f"module {module} outside 0..{self.modules - 1}")
        return coil_index(module, gun, self.guns)

    async def connect(self, module: int, gun: int) -> None:
        """Close module → gun; ``InterlockRefusedError`` if the matrix refuses."""
        idx = self._index(module, gun)
        try:
            await self.link.write_coil(idx, True)
        except ModbusExceptionError as exc:
            try:
                word = (await self.link.read_input(MatrixInput.FAULT_WORD, 1))[0]
            except HardwareError:
                raise exc from None
            if word & MatrixFault.INTERLOCK_REFUSED:
                raise InterlockRefusedError(module, gun, exc.code) from None
            raise

    async def disconnect(self, module: int, gun: int) -> None:
        """Open module → gun (the feedback follows after the contactor's opening time)."""
        await self.link.write_coil(self._index(module, gun), False)

    async def close(self) -> None:
        await self.link.close()

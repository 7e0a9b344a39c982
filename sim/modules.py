"""Physics of one simulated liquid-cooled DC power module.

The model is deliberately small but has the behaviours the controller must cope with:

- output current follows the target with a first-order lag (``current_tau_s``, 10 ms) and is
  capped by the current limit, the thermally derated available current and the rated power;
  a voltage setpoint below the load voltage folds the current back (constant-voltage mode);
- losses from an efficiency curve (about 96 % at mid load) heat a lumped internal node that
  is cooled by a coolant node: ``outlet = inlet + losses / (flow × heat capacity)`` in steady
  state, the internal temperature lags behind;
- available current derates linearly from 100 % at 55 °C internal to 0 at 75 °C; 80 °C trips;
- a watchdog switches the output off when no holding-register write arrived for
  ``watchdog_ms``; the module then waits for ``enable = 1`` again.

Everything is pure and steppable (``step(dt, t, ...)``): no clock and no I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from power.modbus_map import ModuleFault, ModuleStatus


@dataclass(frozen=True, slots=True)
class ModuleParams:
    """Rating and physical constants of a module (defaults: liquid-cooled 40 kW, 100 A)."""

    rated_power_w: float = 40_000.0
    rated_current_a: float = 100.0
    min_voltage_v: float = 150.0
    max_voltage_v: float = 1000.0
    current_tau_s: float = 0.010
    voltage_tau_s: float = 0.010
    cv_band_v: float = 5.0  # current folds back over this band below the voltage setpoint
    # Losses while the output is on: fixed + linear·P + quadratic·P² (≈96 % at 20 kW).
    loss_fixed_w: float = 150.0
    loss_linear: float = 0.0249
    loss_quadratic_per_w: float = 4.61e-7
    idle_loss_w: float = 20.0
    # Coolant loop (water-glycol): flow, volumetric heat capacity, volume in the module.
    coolant_flow_lpm: float = 8.0
    coolant_heat_capacity_j_per_l_k: float = 3780.0
    coolant_volume_l: float = 0.5
    internal_heat_capacity_j_per_k: float = 6000.0
    internal_to_coolant_w_per_k: float = 150.0
    derate_start_c: float = 55.0
    derate_end_c: float = 75.0
    trip_c: float = 80.0
    watchdog_ms: int = 1000
    over_voltage_margin: float = 0.02  # over-voltage above max_voltage × (1 + margin)

    def efficiency(self, output_w: float) -> float:
        """Efficiency at ``output_w`` (for documentation and tests)."""
        if output_w <= 0:
            return 0.0
        return output_w / (output_w + self.losses_w(output_w))

    def losses_w(self, output_w: float) -> float:
        """Losses while the output is on, from the efficiency curve."""
        p = max(0.0, output_w)
        return self.loss_fixed_w + self.loss_linear * p + self.loss_quadratic_per_w * p * p


@dataclass(slots=True)
class SimModule:
    """State of one module; ``step`` advances it, the Modbus layer reads and writes it."""

    index: int
    params: ModuleParams = field(default_factory=ModuleParams)
    # Holding registers (what the controller commands).
    voltage_setpoint_v: float = 0.0
    current_limit_a: float = 0.0
    enabled: bool = False
    watchdog_ms: int = 0
    # Live values.
    voltage_v: float = 0.0
    current_a: float = 0.0
    coolant_in_c: float = 25.0
    coolant_out_c: float = 25.0
    internal_c: float = 25.0
    available_current_a: float = 0.0
    heartbeat: int = 0
    fault_code: int = 0
    watchdog_expired: bool = False
    over_voltage: bool = False
    over_current: bool = False
    # Environment and injected faults.
    flow_factor: float = 1.0  # 0 = pump failure
    injected_fault: int = 0
    last_write_t: float = 0.0
    losses_w: float = 0.0

    def __post_init__(self) -> None:
        self.watchdog_ms = self.params.watchdog_ms
        self.available_current_a = self.params.rated_current_a

    # ------------------------------------------------------------------ derived
    @property
    def faulted(self) -> bool:
        """A fault is latched (the output is held off until a reset clears it)."""
        return self.fault_code != 0

    @property
    def output_on(self) -> bool:
        """The power stage is running."""
        return self.enabled and not self.faulted

    @property
    def status(self) -> int:
        """The status word of input register 12."""
        p = self.params
        s = ModuleStatus(0)
        if not self.faulted and self.internal_c < p.derate_end_c:
            s |= ModuleStatus.READY
        if self.output_on:
            s |= ModuleStatus.OUTPUT_ON
        if self.available_current_a < p.rated_current_a - 1e-6:
            s |= ModuleStatus.DERATING
        if self.faulted:
            s |= ModuleStatus.FAULT
        if self.watchdog_expired:
            s |= ModuleStatus.WATCHDOG_EXPIRED
        if self.internal_c >= p.derate_end_c:
            s |= ModuleStatus.OVER_TEMPERATURE
        if self.over_voltage:
            s |= ModuleStatus.OVER_VOLTAGE
        if self.over_current:
            s |= ModuleStatus.OVER_CURRENT
        return int(s)

    # ------------------------------------------------------------------ commands
    def write_holding(
        self,
        t: float,
        *,
        voltage_setpoint_v: float,
        current_limit_a: float,
        enable: int,
        watchdog_ms: int,
        fault_reset: int,
    ) -> str | None:
        """Apply a holding-register write; returns why it is refused, or None when applied.

        Any accepted write feeds the watchdog. After a watchdog expiry the output stays off
        until ``enable`` is written as 1 again.
        """
        p = self.params
        if not (math.isfinite(voltage_setpoint_v) and 0.0 <= voltage_setpoint_v <= p.max_voltage_v):
            return f"voltage setpoint {voltage_setpoint_v} outside 0..{p.max_voltage_v} V"
        if not (math.isfinite(current_limit_a) and 0.0 <= current_limit_a <= p.rated_current_a):
            return f"current limit {current_limit_a} outside 0..{p.rated_current_a} A"
        if enable not in (0, 1):
            return f"enable must be 0 or 1, got {enable}"
        if fault_reset not in (0, 1):
            return f"fault reset must be 0 or 1, got {fault_reset}"
        self.last_write_t = t
        self.voltage_setpoint_v = voltage_setpoint_v
        self.current_limit_a = current_limit_a
        self.watchdog_ms = watchdog_ms
        if fault_reset:
            self.reset_fault()
        if enable and (not self.enabled or self.watchdog_expired):
            self.watchdog_expired = False
        self.enabled = bool(enable) and not self.watchdog_expired
        return None

    def reset_fault(self) -> None:
        """Clear a latched fault if its cause is gone (an injected fault is sticky)."""
        if self.injected_fault:
            self.fault_code = self.injected_fault
            return
        if self.internal_c < self.params.trip_c - 5.0 and not self.over_voltage:
            self.fault_code = 0

    def inject_fault(self, code: int) -> None:
        """Latch fault ``code`` until ``clear_injected_fault``; the output switches off."""
        self.injected_fault = code
        self.fault_code = code

    def clear_injected_fault(self) -> None:
        """Remove an injected fault; the latch still needs a fault reset from the controller."""
        self.injected_fault = 0

    # ------------------------------------------------------------------ physics
    def step(self, dt: float, t: float, gun_voltage_v: float | None, chiller_c: float) -> None:
        """Advance by ``dt`` seconds at simulated time ``t``.

        ``gun_voltage_v`` is the voltage of the gun the module's contactor connects it to
        (None when it feeds no load), ``chiller_c`` the coolant supply temperature.
        """
        p = self.params
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        if (
            self.enabled
            and self.watchdog_ms > 0
            and t - self.last_write_t > self.watchdog_ms / 1000.0
        ):
            self.enabled = False
            self.watchdog_expired = True

        span = max(1e-9, p.derate_end_c - p.derate_start_c)
        fraction = min(1.0, max(0.0, (p.derate_end_c - self.internal_c) / span))
        self.available_current_a = p.rated_current_a * fraction
        if self.internal_c >= p.trip_c and not self.faulted:
            self.fault_code = int(ModuleFault.OVER_TEMPERATURE)

        # Electrical.
        target_a = 0.0
        if self.output_on and gun_voltage_v is not None:
            v = max(gun_voltage_v, 1.0)
            target_a = min(self.current_limit_a, self.available_current_a, p.rated_power_w / v)
            fold = (self.voltage_setpoint_v - gun_voltage_v) / max(p.cv_band_v, 1e-6)
            target_a *= min(1.0, max(0.0, fold))
        self.current_a += (target_a - self.current_a) * (1.0 - math.exp(-dt / p.current_tau_s))
        if abs(self.current_a) < 1e-6:
            self.current_a = 0.0
        if gun_voltage_v is not None:
            self.voltage_v = gun_voltage_v
        else:
            v_target = self.voltage_setpoint_v if self.output_on else 0.0
            self.voltage_v += (v_target - self.voltage_v) * (1.0 - math.exp(-dt / p.voltage_tau_s))
        self.over_voltage = self.voltage_v > p.max_voltage_v * (1.0 + p.over_voltage_margin)
        if self.over_voltage and self.output_on:
            self.fault_code = int(ModuleFault.OVER_VOLTAGE)
        self.over_current = self.current_a > p.rated_current_a * 1.1

        # Thermal: coolant node and internal node, explicit Euler (callers keep dt small).
        out_w = self.voltage_v * self.current_a
        self.losses_w = p.losses_w(out_w) if self.output_on else p.idle_loss_w
        self.coolant_in_c = chiller_c
        mcp = p.coolant_flow_lpm / 60.0 * self.flow_factor * p.coolant_heat_capacity_j_per_l_k
        c_cool = p.coolant_volume_l * p.coolant_heat_capacity_j_per_l_k
        g = p.internal_to_coolant_w_per_k
        to_coolant = g * (self.internal_c - self.coolant_out_c)
        d_out = (to_coolant - mcp * (self.coolant_out_c - chiller_c)) / c_cool
        d_int = (self.losses_w - to_coolant) / p.internal_heat_capacity_j_per_k
        self.coolant_out_c += d_out * dt
        self.internal_c += d_int * dt

    def max_stable_dt(self) -> float:
        """Largest explicit-Euler step that keeps the thermal model stable (with margin)."""
        p = self.params
        c_cool = p.coolant_volume_l * p.coolant_heat_capacity_j_per_l_k
        mcp = p.coolant_flow_lpm / 60.0 * p.coolant_heat_capacity_j_per_l_k
        g = p.internal_to_coolant_w_per_k
        return 0.5 * min(c_cool / (g + mcp), p.internal_heat_capacity_j_per_k / max(g, 1e-9))

"""The simulators speak standard Modbus TCP: a master independent of pymodbus reads them.

One test hand-builds Modbus TCP frames with ``struct`` on a raw socket; another uses
``mbpoll`` (Debian package ``mbpoll``, a libmodbus-based master) when it is installed. The CLI
test runs ``mwc sim modules`` as a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys

import pytest
from modbus_fixtures import station

from power.modbus_base import DeviceEndpoint
from power.modbus_driver import Hardware, HardwareConfig
from power.modbus_map import INTERLOCK_EXCEPTION_CODE

pytestmark = pytest.mark.timeout(60)


def _request(sock: socket.socket, tid: int, unit: int, pdu: bytes) -> bytes:
    """Send one Modbus TCP ADU (MBAP header + PDU) and return the response PDU."""
    sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
    header = b""
    while len(header) < 7:
        chunk = sock.recv(7 - len(header))
        assert chunk, "connection closed"
        header += chunk
    r_tid, proto, length, r_unit = struct.unpack(">HHHB", header)
    assert (r_tid, proto, r_unit) == (tid, 0, unit)
    body = b""
    while len(body) < length - 1:
        chunk = sock.recv(length - 1 - len(body))
        assert chunk
        body += chunk
    return body


def _raw_session(host: str, port: int, matrix_port: int) -> dict[str, object]:
    out: dict[str, object] = {}
    with socket.create_connection((host, port), timeout=2) as s:
        # fc 4, input registers 200..207: the rating as four ABCD float32.
        body = _request(s, 1, 1, struct.pack(">BHH", 4, 200, 8))
        fc, nbytes = struct.unpack(">BB", body[:2])
        assert (fc, nbytes) == (4, 16)
        out["rating"] = struct.unpack(">ffff", body[2:18])
        # fc 4, register 12: status word (u16).
        body = _request(s, 2, 1, struct.pack(">BHH", 4, 12, 1))
        out["status"] = struct.unpack(">H", body[2:4])[0]
        # fc 16: voltage setpoint 700.0 V and current limit 12.5 A at 100..103.
        values = struct.pack(">ff", 700.0, 12.5)
        body = _request(s, 3, 1, struct.pack(">BHHB", 16, 100, 4, 8) + values)
        assert struct.unpack(">BHH", body) == (16, 100, 4)
        # fc 3: read them back.
        body = _request(s, 4, 1, struct.pack(">BHH", 3, 100, 4))
        out["holding"] = struct.unpack(">ff", body[2:10])
        # An address outside the map is an exception (fc | 0x80, code 2).
        body = _request(s, 5, 1, struct.pack(">BHH", 4, 50, 1))
        out["bad_address"] = struct.unpack(">BB", body)
    with socket.create_connection((host, matrix_port), timeout=2) as s:
        # fc 5 coil 0 on (module 0 -> gun 0), then coil 1 (module 0 -> gun 1) is refused.
        body = _request(s, 1, 1, struct.pack(">BHH", 5, 0, 0xFF00))
        assert struct.unpack(">BHH", body) == (5, 0, 0xFF00)
        body = _request(s, 2, 1, struct.pack(">BHH", 5, 1, 0xFF00))
        out["interlock"] = struct.unpack(">BB", body)
        body = _request(s, 3, 1, struct.pack(">BHH", 4, 0, 3))
        out["matrix_regs"] = struct.unpack(">HHH", body[2:8])
        body = _request(s, 4, 1, struct.pack(">BHH", 1, 0, 4))
        out["coils"] = body[2]
    return out


async def test_raw_socket_master_reads_and_writes_documented_addresses() -> None:
    async with station(2, 2) as st:
        p = st.sim.ports
        out = await asyncio.to_thread(_raw_session, p.host, p.modules[0], p.matrix)
        assert out["rating"] == (40000.0, 100.0, 150.0, 1000.0)
        assert out["status"] == 1  # ready
        assert out["holding"] == (700.0, 12.5)
        assert st.physics.modules[0].voltage_setpoint_v == 700.0
        assert out["bad_address"] == (0x84, 2)
        assert out["interlock"] == (0x85, INTERLOCK_EXCEPTION_CODE)
        assert out["matrix_regs"] == (2, 2, 2)  # M, G, fault word: interlock refused
        assert out["coils"] == 0b0001


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed")
async def test_mbpoll_reads_a_module() -> None:
    async with station(1, 1) as st:
        st.physics.modules[0].internal_c = 31.5
        p = st.sim.ports

        async def mbpoll(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                "mbpoll", "-m", "tcp", "-p", str(p.modules[0]), "-a", "1", "-0", "-1",
                "-o", "2", *args, p.host,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            return out.decode()

        rating = await mbpoll("-t", "3:float", "-B", "-r", "200", "-c", "4")
        assert "[200]: \t40000" in rating and "[206]: \t1000" in rating
        temp = await mbpoll("-t", "3:float", "-B", "-r", "8", "-c", "1")
        assert "[8]: \t31.5" in temp
        status = await mbpoll("-t", "3", "-r", "12", "-c", "1")
        assert "[12]: \t1" in status


async def test_cli_serves_until_stopped_and_injects_faults() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "--log-level", "WARNING",
        "sim", "modules", "--count", "2", "--guns", "2", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        layout = json.loads(line)
        assert layout["modules"]["count"] == 2 and layout["meters"]["units"] == [1, 2]
        host = layout["host"]
        cfg = HardwareConfig(
            tuple(DeviceEndpoint(host, port) for port in layout["modules"]["ports"]),
            DeviceEndpoint(host, layout["matrix"]["port"]),
            tuple(DeviceEndpoint(host, layout["meters"]["port"], u)
                  for u in layout["meters"]["units"]),
        )
        async with Hardware(cfg) as hw:
            snap = await hw.poll_all()
            assert not snap.unavailable
            fault = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "sim", "fault", "module-fault",
                "--target", "1", "--value", "7", "--port", str(layout["control"]["port"]),
                stdout=subprocess.PIPE,
            )
            out, _ = await fault.communicate()
            assert fault.returncode == 0 and out.strip() == b"ok"
            snap = await hw.poll_all()
            assert snap.modules[1].fault_code == 7
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0

"""The private broker fixture survives a port taken between picking and binding it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mqtt_fixtures import Mosquitto, PortTaken, broker, needs_mosquitto


def _taken() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@needs_mosquitto
def test_a_taken_port_moves_the_first_start_to_another(tmp_path: Path) -> None:
    with _taken() as other:
        port = other.getsockname()[1]
        with broker(tmp_path, port=port) as b:
            assert b.port != port
            with socket.create_connection(("127.0.0.1", b.port), timeout=2):
                pass
            assert b.proc is not None and b.proc.poll() is None
            b.restart()  # a restart keeps the port its clients know
            assert b.port != port and b.proc is not None and b.proc.poll() is None


@needs_mosquitto
def test_a_pinned_broker_fails_on_a_taken_port(tmp_path: Path) -> None:
    with _taken() as other:
        b = Mosquitto(tmp_path, port=other.getsockname()[1], pinned=True)
        with pytest.raises(PortTaken, match="taken"):
            b.start()
        assert b.proc is None

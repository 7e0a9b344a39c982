"""Operator mistakes on the command line: one line saying what and where, exit code 2.

Each case runs the real ``mwc`` entry point as a process, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MWC = [sys.executable, "-c", "import sys; from controller.cli import main; sys.exit(main())"]
ENV = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
    "NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}


def mwc(*args: str, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MWC, *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd or ROOT, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The error line; asserts exit code 2, no traceback, and that it names ``words``."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()
              and not line.startswith("{")]  # (JSON log lines are not the message)
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_csms_serve_port_in_use(tmp_path: Path, busy_port: int) -> None:
    cfg = tmp_path / "csms.toml"
    cfg.write_text(f'[storage]\npath = "{tmp_path / "c.db"}"\n[ocpp]\nhost = "127.0.0.1"\n'
                   'port = 0\n[api]\nport = 0\n')
    done = mwc("csms", "--config", str(cfg), "serve", "--ocpp-port", str(busy_port))
    one_line_error(done, "[ocpp] port", f"127.0.0.1:{busy_port}", "in use")
    done = mwc("csms", "--config", str(cfg), "serve", "--api-port", str(busy_port))
    one_line_error(done, "[api]", f"127.0.0.1:{busy_port}", "in use")


def test_csms_example_config_missing_tls_file_named_before_anything_is_created(
        tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "csms.example.toml").read_text()
    db = tmp_path / "state" / "csms.db"
    cfg = tmp_path / "csms.toml"
    cfg.write_text(text.replace("/var/lib/mwc-csms/csms.db", str(db)))
    done = mwc("csms", "--config", str(cfg), "serve")
    one_line_error(done, "ocpp.certfile", "/etc/mwc-csms/pki/csms.crt", "does not exist")
    assert not db.parent.exists()


def test_csms_database_where_it_cannot_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    done = mwc("csms", "--db", str(tmp_path / "file" / "csms.db"), "token", "list")
    one_line_error(done, str(tmp_path / "file"))


def test_sim_modules_port_in_use(busy_port: int) -> None:
    done = mwc("sim", "modules", "--count", "2", "--guns", "1", "--port", str(busy_port))
    one_line_error(done, f"127.0.0.1:{busy_port}", "--port")


def test_unknown_log_level() -> None:
    one_line_error(mwc("--log-level", "verbose", "sim", "modules"), "--log-level",
                   "'verbose'", "DEBUG")
    done = subprocess.run([sys.executable, "-m", "ocpp_server", "token", "list"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**ENV, "MWC_CSMS_LOG_LEVEL": "verbose"})
    one_line_error(done, "MWC_CSMS_LOG_LEVEL", "'VERBOSE'")


@pytest.mark.parametrize(("args", "words"), [
    (["--shorten", "0"], ["--shorten", "> 0"]),
    (["--speed", "-5"], ["--speed", "≥ 0"]),
    (["--speed", "fast"], ["--speed", "'fast'"]),
])
def test_demo_option_out_of_range(args: list[str], words: list[str]) -> None:
    one_line_error(mwc("demo", *args), *words)


def test_demo_out_naming_a_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("{}")
    one_line_error(mwc("demo", "--out", str(target)), "--out", str(target), "not a directory")


def test_interrupted_demo_reports_not_run_for_accounting(tmp_path: Path) -> None:
    """SIGINT part-way: the sessions did not end, so energy and transactions are not_run."""
    out = tmp_path / "out"
    proc = subprocess.Popen([*MWC, "demo", "--no-mqtt", "--out", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # interrupt while the trucks charge (a live line says so)
            seen.append(line)
            if "truck B arrives" in line:
                break
        assert any("truck B arrives" in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"]
    for name in ("energy_matches_meters", "transactions_complete"):
        assert report["checks"][name]["verdict"] == "not_run", report["checks"][name]
        assert "interrupted" in report["checks"][name]["detail"]
    assert "Traceback" not in stderr

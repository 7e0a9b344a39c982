"""A private PostgreSQL cluster for the tests: initdb into a temporary folder, a free port.

PostgreSQL cannot bind port 0 and report it, so a free port is picked and start-up is
retried with another one when something took it in between (``free_port`` races).

Never the machine's own server. Debian's binaries live under /usr/lib/postgresql/<v>/bin
(``make system-deps`` installs them); PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` user. Each test gets a fresh database of the one cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """initdb + pg_ctl on 127.0.0.1:<free port>, trust authentication, C locale."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: run `make system-deps`")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="mwc-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self, *settings: str, attempts: int = 5) -> PgCluster:
        """``settings``: extra ``name=value`` server settings (``-c``)."""
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        log = self.dir / "log"
        for attempt in range(attempts):
            opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                    "-c max_connections=200 -c shared_buffers=64MB"
                    + "".join(f" -c {kv}" for kv in settings))
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log),
                          "-o", opts, "-w", "-t", "60", "start")
                return self
            except subprocess.CalledProcessError:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "already in use" not in text or attempt == attempts - 1:
                    raise RuntimeError(f"PostgreSQL did not start: {text[-2000:]}") from None
                log.unlink()
                self.port = free_port()  # someone took the port between pick and bind
        raise AssertionError("unreachable")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    t0 = time.monotonic()
    cluster = PgCluster().start()
    print(f"private PostgreSQL on port {cluster.port} in {time.monotonic() - t0:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()

"""Helpers every test module may use: wait for a condition, build test certificates.

``eventually`` is the one way a test waits for something another task or process does (no
fixed sleeps): it polls a condition until it holds or a generous deadline passes, then fails
naming what it waited for. ``closed_port`` gives a port where nothing listens and nothing can
start listening while the test runs (servers under test bind port 0 and report theirs);
``free_port_block`` (from ``sim.ports``) gives consecutive free ports below the ephemeral
range for the few that cannot (configuration written before the processes start).
``certificate`` builds a throw-away CA and the leaf certificates the TLS tests need (EC
P-256, valid from five minutes ago for two days).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sim.ports import free_port_block as free_port_block  # the one copy; tests import it here

Condition = Callable[[], Any | Awaitable[Any]]


async def eventually(pred: Condition, timeout: float = 10.0, step: float = 0.01,
                     what: str = "condition", *,
                     proc: asyncio.subprocess.Process | None = None,
                     detail: Callable[[], Any] | None = None) -> Any:
    """Wait until ``pred()`` (sync or async) is truthy; returns that value.

    Fails the test after ``timeout`` seconds naming ``what`` (and ``detail()``, what the
    test wants to see then), or at once when ``proc`` — a process the condition depends
    on — has exited. Deadlines are generous on purpose: a loaded machine is slow, not wrong.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if proc is not None and proc.returncode is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            extra = f"; {detail()!r}" if detail is not None else ""
            raise AssertionError(f"{what} not met within {timeout} s{extra}")
        await asyncio.sleep(step)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the block: bound (without SO_REUSEADDR)
    but not listening, so no other process can take it and start listening there — unlike
    a port merely found free, which may be taken before the test uses it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def logged_events(logger: str) -> Iterator[list[dict[str, Any]]]:
    """The structured events ``logger`` (and its children) log at INFO and up during the
    block, as dicts: how a test learns the port a server started inside the code under test
    bound (port 0; e.g. ``metrics_listening``, ``webview_listening``)."""
    events: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, dict):  # structlog's event dict (controller/logs.py)
                events.append(dict(record.msg))

    handler = Keep(logging.INFO)
    log = logging.getLogger(logger)
    saved = log.level
    log.addHandler(handler)
    if not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
    try:
        yield events
    finally:
        log.removeHandler(handler)
        log.setLevel(saved)


def logged(events: list[dict[str, Any]], event: str, key: str) -> Any:
    """Field ``key`` of the first ``event`` in ``events`` (None until one was logged)."""
    return next((e[key] for e in events if e.get("event") == event and key in e), None)


def listening_ports(pid: int | None = None) -> set[int]:
    """The TCP ports process ``pid`` (this one by default) listens on, from Linux /proc: a
    connection alone may reach another process that has the port."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    inodes[f"socket:[{cols[9]}]"] = int(cols[1].rsplit(":", 1)[1], 16)
    fd_dir = f"/proc/{os.getpid() if pid is None else pid}/fd"
    ports: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                link = os.readlink(f"{fd_dir}/{fd}")
                if link in inodes:
                    ports.add(inodes[link])
    return ports


# ---------------------------------------------------------------------------- certificates
def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Issued:
    """A certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, cert_path: Path, key_path: Path | None = None) -> tuple[Path, Path | None]:
        """PEM files (the key unencrypted, PKCS#8); returns the paths written."""
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        if key_path is not None:
            key_path.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        return cert_path, key_path


def certificate(cn: str, issuer: Issued | None = None, *, ca: bool = False,
                server: bool = False, client: bool = False, key_usage: bool = False,
                key: ec.EllipticCurvePrivateKey | None = None,
                start: dt.datetime | None = None,
                days: float = 2.0) -> Issued:
    """One certificate for ``cn``: self-signed without ``issuer``; ``ca`` makes it a CA
    (``key_usage`` adds the CA key usages), ``server`` adds localhost / 127.0.0.1 names and
    the server usage, ``client`` the client usage. Valid from ``start`` (default five
    minutes ago) for ``days``."""
    key = key or new_key()
    begin = start or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    signer = issuer.key if issuer else key
    b = (x509.CertificateBuilder().subject_name(name(cn))
         .issuer_name(issuer.cert.subject if issuer else name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(begin).not_valid_after(begin + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca and key_usage:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                          crl_sign=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
    if issuer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return Issued(b.sign(signer, hashes.SHA256()), key)

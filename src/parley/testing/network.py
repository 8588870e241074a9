"""Networks of real terminals on loopback, for tests, benchmarks and the demo.

Each terminal is a real ``parley serve`` process with its own data directory
and database; links are real mutual-TLS connections on 127.0.0.1 (optionally
through a ``FaultProxy``). Set-up (keys, pinning) runs in this process with a
cheap key-file cost, since no passphrase here guards anything real.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from parley.config import DataDir
from parley.service import console_tls
from parley.service.setup import init_terminal
from parley.service.terminal import CardBundle, Terminal

__all__ = [
    "PASSPHRASE",
    "TerminalProcess",
    "free_port",
    "make_network",
    "postgres_database",
    "set_peer_quota",
    "wait_until",
]

PASSPHRASE = "loopback-test-passphrase"  # noqa: S105 - guards test keys only
TEST_SCRYPT_N = 2**10


#: Ports handed out under pytest-xdist: 10000-32767, below Linux's ephemeral
#: range (32768-60999), split evenly between the workers.
_WORKER_PORTS = (10_000, 32_768)
#: Ports handed out elsewhere (the demo, benchmarks, a single pytest process):
#: above the ephemeral range, so that the outgoing connections of terminals
#: already running never take a port a terminal started later will listen on.
_OTHER_PORTS = (61_000, 65_536)
_next_port: list[int] = []


def free_port() -> int:
    """A loopback TCP port that is free now, for a terminal started later.

    Under pytest-xdist (``PYTEST_XDIST_WORKER``) each worker takes ports from
    its own slice of ``_WORKER_PORTS`` in turn, from a random start, so two
    workers never hand out the same port and a worker does not hand one out
    twice; otherwise from ``_OTHER_PORTS`` (above the ephemeral range) the same way.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        index = int(worker[2:]) % count
        size = (_WORKER_PORTS[1] - _WORKER_PORTS[0]) // count
        low = _WORKER_PORTS[0] + index * size
    else:
        low, size = _OTHER_PORTS[0], _OTHER_PORTS[1] - _OTHER_PORTS[0]
    if not _next_port:
        _next_port.append(secrets.randbelow(size))
    for _ in range(size):
        port = low + _next_port[0] % size
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {low}-{low + size - 1} for {worker}")


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}: {last!r}")


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one terminal; dropped afterwards."""
    import psycopg

    name = f"parley_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class TerminalProcess:
    """One terminal: its data directory and, while started, its ``parley serve`` process.

    ``serve_env`` is added to the environment of the ``parley serve`` process
    only (not of ``cli``), for instance to run it under libfaketime;
    ``serve_args`` to its command line (``--standby``). ``label`` names its
    output files (``DIR/LABEL-N.out``), so that two processes may share a
    data directory.
    """

    party: str
    data: Path
    peer_port: int
    console_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: list[Path] = field(default_factory=list)
    starts: int = 0
    serve_env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()
    label: str = "serve"
    #: The console listener speaks HTTPS (``console.tls``).
    console_tls: bool = False

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    @property
    def console_url(self) -> str:
        scheme = "https" if self.console_tls else "http"
        return f"{scheme}://127.0.0.1:{self.console_port}"

    def console_verify(self) -> ssl.SSLContext | bool:
        """How a client checks the running console: its certificate (from
        ``serve.json``) is the only one trusted; True for plain HTTP."""
        if not self.console_tls:
            return True
        info = json.loads((self.data / "serve.json").read_text())
        return console_tls.client_context(info["console_certificate_pem"].encode())

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PARLEY_PASSPHRASE"] = PASSPHRASE
        env["PARLEY_DATA"] = str(self.data)
        # The test networks' CLI acts as each terminal's local administrator.
        env["PARLEY_LOCAL_ADMIN"] = "1"
        return env

    def start(self, *, wait: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.starts += 1
        out = self.data / f"{self.label}-{self.starts}.out"
        self.log.append(out)
        with open(out, "wb") as handle:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [
                    sys.executable,
                    "-m",
                    "parley.cli",
                    "--data",
                    str(self.data),
                    "serve",
                    *self.serve_args,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                # PARLEY_LOOP_GUARD: log each database call made on the event loop
                # (see loop_violations).
                env={**self.env, "PARLEY_LOOP_GUARD": "1", **self.serve_env},
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.party} exited with {self.proc.returncode}: {self.output()[-2000:]}"
                )
            try:
                info = json.loads((self.data / "serve.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(self.proc is not None and info.get("pid") == self.proc.pid)

        wait_until(ready, timeout=timeout, what=f"{self.party} to start")

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log if p.exists())

    def loop_violations(self) -> list[str]:
        """The database calls ``parley serve`` made on its event loop (each blocks it)."""
        found = []
        for line in self.output().splitlines():
            if "database_call_on_event_loop" in line:
                try:
                    found.append(str(json.loads(line).get("call", line)))
                except ValueError:
                    found.append(line)
        return found

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            (self.data / "serve.json").unlink()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, method: str, path: str, body: Any = None, *, operator: str = "duty") -> Any:
        """Call the running terminal's operator API; raise on an error status."""
        token = DataDir(self.data).read_token()
        response = httpx.request(
            method,
            self.console_url + "/api/v1" + path,
            json=body,
            headers={"authorization": f"Bearer {token}", "x-parley-operator": operator},
            timeout=30,
            verify=self.console_verify(),
        )
        if response.status_code >= 400:
            raise RuntimeError(
                f"{self.party} {method} {path}: {response.status_code} {response.text[:500]}"
            )
        return response.json()

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "parley.cli", "--data", str(self.data), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"parley {' '.join(args)} on {self.party} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


def set_peer_quota(
    data: Path, *, envelopes_per_minute: int = 0, burst: int = 0, stored_bytes_per_day: int = 0
) -> None:
    """Write a terminal's ``[peer_quota]`` (before it starts; 0 = no limit, the default
    here: benchmarks measure the receive path, not the quota)."""
    store = DataDir(data)
    config = store.load_config()
    config.quota_envelopes_per_minute = envelopes_per_minute
    config.quota_burst = burst
    config.quota_bytes_per_day = stored_bytes_per_day
    store.save_config(config)


def make_network(
    root: Path,
    parties: Sequence[tuple[str, str]],
    *,
    databases: dict[str, str] | None = None,
    link_test_interval: float = 3600.0,
    links: Callable[[str, str, TerminalProcess], list[tuple[str, str]]] | None = None,
    serve_env: Mapping[str, Mapping[str, str]] | None = None,
    console_tls: bool = False,
) -> dict[str, TerminalProcess]:
    """Create terminals that have pinned each other (not started).

    ``links(owner, peer, peer_terminal)`` returns the (name, url) links
    ``owner`` uses to reach ``peer``; by default one link, ``primary``,
    straight to the peer's listener. ``serve_env`` maps a party to extra
    environment variables for its ``parley serve`` process. ``console_tls``:
    the consoles speak HTTPS, each with the certificate its terminal makes.
    """
    terminals: dict[str, TerminalProcess] = {}
    for party, name in parties:
        data = root / party.lower()
        peer_port, console_port = free_port(), free_port()
        init_terminal(
            data,
            party=party,
            name=name,
            passphrase=PASSPHRASE,
            peer_listen=f"127.0.0.1:{peer_port}",
            console_listen=f"127.0.0.1:{console_port}",
            console_tls=console_tls,
            database=(databases or {}).get(party),
            link_test_interval=link_test_interval,
            scrypt_n=TEST_SCRYPT_N,
        )
        terminals[party] = TerminalProcess(
            party,
            data,
            peer_port,
            console_port,
            serve_env=dict((serve_env or {}).get(party, {})),
            console_tls=console_tls,
        )
    bundles = {
        party: CardBundle.from_json(DataDir(t.data).card_file.read_bytes())
        for party, t in terminals.items()
    }
    for owner, terminal in terminals.items():
        local = Terminal.open(terminal.data, PASSPHRASE)
        try:
            for peer, bundle in bundles.items():
                if peer == owner:
                    continue
                peer_links = (
                    links(owner, peer, terminals[peer])
                    if links
                    else [("primary", terminals[peer].peer_url)]
                )
                local.add_peer(bundle, bundle.card.fingerprint, peer_links)
        finally:
            local.engine.dispose()
    return terminals

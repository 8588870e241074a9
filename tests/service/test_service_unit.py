"""``docs/ops/parley.service``: systemd accepts it, it is hardened, and Parley runs under it.

``systemd-analyze verify`` checks every directive (it warns, and still exits
0, on a value it does not know: so its output must be empty). The command
line of ``ExecStart`` must be one the real CLI accepts. Then a terminal serves
under what this machine can impose of the unit without systemd running: its
own unprivileged user, no new privileges, no capabilities, a read-only file
system but for its data directory and ``/tmp``, the passphrase from a
credentials file, and memory that is never both writable and executable
(``MemoryDenyWriteExecute=yes``, imposed with ``PR_SET_MDWE``, which refuses
the same mappings). It exchanges messages with a peer over mutual TLS, checks
an operator's password (Argon2), and ``parley doctor`` run the same way finds
it clean.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import parley
from parley.service.setup import init_terminal
from parley.testing.network import PASSPHRASE, make_network, postgres_database, wait_until
from tests.service.conftest import POSTGRES_ADMIN

# Runs systemd-analyze, the CLI and parley serve as processes.
pytestmark = pytest.mark.subprocess

SOURCE = Path(parley.__file__).resolve().parents[2]
UNIT = SOURCE / "docs" / "ops" / "parley.service"
#: A file the confined terminal must not be able to make: on the root file system,
#: outside /tmp (which stays writable; a checkout may itself live under /tmp).
PROBE = Path("/var/tmp") / f".parley-read-only-probe-{os.getpid()}"
NOBODY = 65534


def _directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Each section's settings, every value of a setting given more than once, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _service() -> dict[str, list[str]]:
    return _directives(UNIT.read_text())["Service"]


def _exec_start() -> list[str]:
    (line,) = _service()["ExecStart"]
    return shlex.split(line)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify also checks that the program exists: this environment's parley stands in
    # for the one installed in /opt/parley.
    program = Path(sys.executable).parent / "parley"
    assert program.exists()
    unit = tmp_path / "parley.service"
    unit.write_text(UNIT.read_text().replace("/opt/parley/bin/parley", str(program)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""

    # The check can fail: a directive systemd does not know is reported.
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictest"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "strictest" in result.stderr


def test_the_unit_is_hardened() -> None:
    service = _service()

    def one(key: str) -> str:
        assert key in service, key
        assert len(service[key]) == 1, service[key]
        return service[key][0]

    assert one("User") == "parley"
    assert one("ProtectSystem") == "strict"
    assert one("ReadWritePaths") == "/var/lib/parley"
    assert one("StateDirectory") == "parley"
    assert one("StateDirectoryMode") == "0700"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "PrivateDevices",
        "MemoryDenyWriteExecute",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert one("AmbientCapabilities") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one("SystemCallFilter") == "@system-service"
    assert one("LoadCredential") == "passphrase:/etc/parley/passphrase"
    assert "DynamicUser" not in service
    argv = _exec_start()
    assert argv[0] == "/opt/parley/bin/parley"
    assert argv[argv.index("--data") + 1] == "/var/lib/parley"
    assert argv[argv.index("--passphrase-file") + 1] == "%d/passphrase"
    assert argv[-1] == "serve"


def test_the_cli_accepts_the_exec_start_command_line(tmp_path: Path) -> None:
    args = [a.replace("%d", str(tmp_path / "credentials")) for a in _exec_start()[1:]]
    shown = subprocess.run(
        [sys.executable, "-m", "parley.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "--standby" in shown.stdout  # serve's own help: every option before it parsed
    refused = subprocess.run(
        [sys.executable, "-m", "parley.cli", "--passphrase-fil", "x", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert refused.returncode == 2


#: Denies memory that is writable and executable at once to this process and every
#: program it starts, as MemoryDenyWriteExecute=yes does, and proves it is denied.
SITECUSTOMIZE = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    try:
        if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError("PR_SET_MDWE failed")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError:
            pass
        else:
            raise OSError("writable and executable memory was still allowed")
        with open(os.environ["MDWE_MARKS"], "a") as marks:
            marks.write(f"{os.getpid()}\\n")
    except BaseException as exc:  # site would only print it and go on
        sys.stderr.write(f"sitecustomize: {exc}\\n")
        os._exit(97)
    """
)

#: In a mount namespace of its own: everything read-only but /tmp (the data directory
#: lives there in tests; the unit's is /var/lib/parley) and /proc, /sys, /dev.
CONFINE = textwrap.dedent(
    """
    set -eu
    mount --bind /tmp /tmp
    mount -o remount,bind,ro /
    if touch "$PROBE" 2>/dev/null; then echo "the root file system is still writable"; exit 90; fi
    exec setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs \\
        --bounding-set=-all --inh-caps=-all "$@"
    """
).format(uid=NOBODY)


def _confined(argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", CONFINE, "confine", *argv],
        env=env,
        text=True,
        **kwargs,
    )


def test_a_terminal_serves_under_the_units_restrictions() -> None:
    # Under /tmp itself: pytest's own temporary directories are closed to other users.
    with tempfile.TemporaryDirectory(prefix="parley-unit-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        _serve_confined(root)


@contextlib.contextmanager
def _passable_by_others(path: Path) -> Iterator[None]:
    """Let other users pass through the directories on the way to ``path`` (search
    only, not list) while the test runs: a checkout in a ``mktemp -d`` directory
    (mode 0700) is closed to the unit's user, who imports Parley from it."""
    closed = [p for p in [path, *path.parents] if not p.stat().st_mode & 0o001]
    foreign = [p for p in closed if p.stat().st_uid != os.getuid()]
    assert not foreign, (
        f"the unit's user (uid {NOBODY}) cannot import Parley from {path}: "
        f"{', '.join(map(str, foreign))} closed to other users (chmod o+x)"
    )
    modes = {p: p.stat().st_mode & 0o7777 for p in closed}
    try:
        for p, mode in modes.items():
            p.chmod(mode | 0o001)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _serve_confined(root: Path) -> None:
    assert shutil.which("unshare")
    assert shutil.which("setpriv")
    with _passable_by_others(Path(parley.__file__).resolve().parent):
        _serve_confined_here(root)


def _serve_confined_here(root: Path) -> None:
    terminals = make_network(root, [("US-EUCOM", "US"), ("RU-GS", "RU")])
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    for terminal in (us, ru):
        (terminal.data / "revocation-certificate.txt").unlink()
    for path in [us.data, *us.data.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    credentials = root / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "passphrase").write_text(PASSPHRASE + "\n")
    (credentials / "passphrase").chmod(0o400)
    for path in (credentials, credentials / "passphrase"):
        os.chown(path, NOBODY, NOBODY)
    hooks = root / "mdwe"
    hooks.mkdir()
    hooks.chmod(0o777)  # the marks are written as the terminal's user
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(hooks), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PYTHONDONTWRITEBYTECODE="1",
        HOME="/nonexistent",
        PROBE=str(PROBE),
        MDWE_MARKS=str(root / "mdwe" / "marks"),
    )
    # As the unit's ExecStart: the passphrase from the credentials directory.
    global_args = ["--data", str(us.data), "--passphrase-file", str(credentials / "passphrase")]
    python = [sys.executable, "-m", "parley.cli", *global_args]
    log = root / "serve.out"
    with open(log, "w") as handle:
        serve = _confined([*python, "serve"], env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        ru.start()
        us.proc = serve  # type: ignore[assignment] # wait_ready reads serve.json's pid
        try:
            us.wait_ready()
        except RuntimeError as exc:
            raise AssertionError(log.read_text()[-3000:]) from exc
        sent = ru.api("POST", "/messages", {"to": ["US-EUCOM"], "precedence": "FLASH", "text": "a"})
        reply = us.api("POST", "/messages", {"to": ["RU-GS"], "precedence": "FLASH", "text": "b"})
        wait_until(
            lambda: (
                "US-EUCOM" in ru.api("GET", f"/messages/{sent['id']}")["receipts"]
                and "RU-GS" in us.api("GET", f"/messages/{reply['id']}")["receipts"]
            ),
            timeout=60,
            what="receipts both ways",
        )
        us.api(
            "POST", "/users", {"name": "duty", "role": "supervisor", "password": "duty-password-1"}
        )
        status = httpx.get(
            us.console_url + "/api/v1/status", auth=("duty", "duty-password-1"), timeout=30
        )
        assert status.status_code == 200
        doctor = _confined(
            [*python, "doctor"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = doctor.communicate(timeout=120)
        assert doctor.returncode == 0, output
        assert "0 warnings, 0 failures" in output, output
        assert "link RU-GS/primary" in output
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=90)
        us.proc = None
        ru.stop()
    assert serve.returncode == 0, log.read_text()[-3000:]
    assert "terminal_stopped" in log.read_text()
    # Both ran with writable-and-executable memory denied (the hook says so, once each).
    marks = (hooks / "marks").read_text().split()
    assert str(serve.pid) in marks
    assert str(doctor.pid) in marks
    assert not PROBE.exists()


@pytest.mark.postgres
def test_a_terminal_on_postgresql_opens_with_write_execute_memory_denied(tmp_path: Path) -> None:
    """psycopg (its compiled driver and libpq) needs no writable-and-executable memory."""
    hooks = tmp_path / "mdwe"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(hooks), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env["MDWE_MARKS"] = str(hooks / "marks")
    with postgres_database(POSTGRES_ADMIN) as url:
        init_terminal(
            tmp_path / "us",
            party="US-EUCOM",
            name="US",
            passphrase=PASSPHRASE,
            database=url,
            scrypt_n=2**10,
        )
        opened = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from parley.service.terminal import Terminal; "
                "t = Terminal.open(__import__('pathlib').Path(sys.argv[1]), sys.argv[2]); "
                "print(t.status()['party'])",
                str(tmp_path / "us"),
                PASSPHRASE,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert opened.returncode == 0, opened.stderr[-3000:]
    assert opened.stdout.strip().endswith("US-EUCOM")
    assert len((hooks / "marks").read_text().split()) == 1

"""The wheel holds everything Parley needs at run time, and a terminal runs from it.

The wheel is built from this checkout (``pip wheel --no-build-isolation``,
hatchling from the dev dependencies, no network), installed with ``pip install
--no-deps --target DIR``, and run with the dependencies of this environment
but not the source tree: every ``parley`` module a command imports must come
from DIR. From the installed copy: ``parley --help``, ``parley init``,
``parley doctor``, and ``parley serve`` answering the console's login page in
Russian (templates and translation catalogs) and its htmx (static files);
``init`` ran the migrations and ``doctor`` reads the form definitions'
neighbours, so what they load is in the wheel too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

import parley
from parley.testing.network import free_port

pytestmark = pytest.mark.subprocess

SOURCE = Path(parley.__file__).resolve().parents[2]
PASSPHRASE = "packaging-test-passphrase"

#: Runs the CLI like the console script, then fails (exit 99) if any parley module it
#: imported does not come from the install directory.
DRIVER = """
import atexit, os, sys
target = os.environ["PARLEY_INSTALLED"]
def only_installed():
    outside = sorted(
        name for name, module in list(sys.modules.items())
        if name.split(".")[0] == "parley"
        and not str(getattr(module, "__file__", None) or "").startswith(target)
    )
    if outside:
        sys.stderr.write(f"imported from outside {target}: {outside}\\n")
        sys.stderr.flush()
        os._exit(99)
atexit.register(only_installed)
sys.argv[0] = "parley"
from parley.cli import main
main()
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel built from this checkout, and the directory it is installed into."""
    assert (SOURCE / "pyproject.toml").exists(), f"parley is not imported from a checkout: {SOURCE}"
    root = tmp_path_factory.mktemp("wheel")
    wheels, target = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(SOURCE), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        timeout=300,
        cwd=root,
    )
    (wheel,) = wheels.glob("parley-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
        cwd=root,
    )
    return wheel, target


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PYTHONPATH=str(target), PARLEY_INSTALLED=str(target), PARLEY_PASSPHRASE=PASSPHRASE)
    return env


def _parley(
    target: Path, cwd: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        env=_env(target),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_the_wheel_holds_the_run_time_files(built: tuple[Path, Path]) -> None:
    """Every file the source tree reads at run time, and the console script."""
    package = SOURCE / "src" / "parley"
    needed = {
        p.relative_to(package.parent).as_posix()
        for pattern in (
            "**/*.py",
            "console/templates/**/*.html",
            "console/static/*",
            "console/locale/*/*.po",
            "forms/definitions/*.json",
            "store/migrations/script.py.mako",
            "py.typed",
        )
        for p in package.glob(pattern)
        if "__pycache__" not in p.parts
    }
    assert "parley/console/static/htmx.min.js" in needed
    assert "parley/store/migrations/versions/0001_initial_schema.py" in needed
    with zipfile.ZipFile(built[0]) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert needed <= names, sorted(needed - names)
    assert "parley = parley.cli:main" in entry_points


def test_the_installed_copy_inits_a_terminal_that_doctor_finds_clean(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    installed = built[1]
    shown = subprocess.run(
        [str(installed / "bin" / "parley"), "--help"],  # the console script pip wrote
        env=_env(installed),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "doctor" in shown
    assert "serve" in shown
    _parley(installed, tmp_path, "--help")  # exits 99 if a module came from elsewhere

    data = tmp_path / "us"
    peer_port, console_port = free_port(), free_port()
    _parley(
        installed,
        tmp_path,
        "--data",
        str(data),
        "init",
        "--party",
        "US-EUCOM",
        "--name",
        "US European Command",
        "--peer-listen",
        f"127.0.0.1:{peer_port}",
        "--console-listen",
        f"127.0.0.1:{console_port}",
        "--scrypt-n",
        "1024",
    )
    (data / "revocation-certificate.txt").unlink()  # to the safe, as init asks
    doctor = _parley(installed, tmp_path, "--data", str(data), "doctor", "--json", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["clean"], [c for c in report["checks"] if c["status"] != "ok"]

    serve = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "--data", str(data), "serve"],
        env=_env(installed),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        console = f"http://127.0.0.1:{console_port}"
        deadline = time.monotonic() + 60
        while not (data / "serve.json").exists():
            assert serve.poll() is None, serve.communicate()[1]
            assert time.monotonic() < deadline, "parley serve did not start"
            time.sleep(0.2)
        login = httpx.get(f"{console}/login", cookies={"parley_lang": "ru"}, timeout=10)
        assert login.status_code == 200
        assert 'lang="ru"' in login.text
        assert "Пароль" in login.text
        htmx = httpx.get(f"{console}/static/htmx.min.js", timeout=10)
        assert htmx.status_code == 200
        assert "htmx" in htmx.text
        served = _parley(installed, tmp_path, "--data", str(data), "doctor", "--json")
        assert json.loads(served.stdout)["clean"]
    finally:
        serve.send_signal(signal.SIGTERM)
        _, errors = serve.communicate(timeout=60)
    assert serve.returncode == 0, errors[-3000:]

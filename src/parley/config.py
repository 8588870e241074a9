"""A terminal's data directory and its TOML configuration.

``DIR/parley.toml`` holds everything an operator may tune; the other files
of the directory are written by Parley itself:

==================  =====================================================
``parley.toml``     configuration (this module)
``identity.key``    private keys, encrypted with the passphrase (0600)
``card.json``       the public card and TLS certificate, to give to peers
``console.token``   the bearer token of the operator API (0600)
``console-tls.pem``  the console listener's own TLS certificate (``console.tls``)
``console-tls.key``  its private key (0600)
``parley.db``       the SQLite database (unless ``database`` says otherwise)
``parley.log``      JSON log lines, one per event
``serve.lock``      held by the running ``parley serve``
``backups/``        automatic backups, unless ``backup.dir`` says otherwise
==================  =====================================================
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import tomli_w

from parley.errors import UsageError

__all__ = [
    "DEFAULT_ACK_DEADLINES",
    "DEFAULT_PEER_QUOTA",
    "TRANSLATION_ENGINES",
    "Config",
    "DataDir",
    "check_console_listen",
    "check_console_name",
    "console_hosts",
    "is_loopback",
    "is_wildcard",
    "parse_duration",
    "parse_hostport",
]

DEFAULT_ACK_DEADLINES = {
    "FLASH": 600,
    "IMMEDIATE": 1800,
    "PRIORITY": 3 * 3600,
    "ROUTINE": 6 * 3600,
}
"""Human acknowledgement targets per precedence, in seconds."""

TRANSLATION_ENGINES = ("auto", "apertium", "argos", "off")
"""The machine translation engines ``[translation] engine`` may name."""

DEFAULT_PEER_QUOTA = {
    "envelopes_per_minute": 600,
    "burst": 3000,
    "stored_bytes_per_day": 1 << 30,
}
"""What one peer may send, by default: far above any traffic a crisis line carries
(the busiest real one, the NRRC, sends about 500 notifications a month), far below
a flood (15,360 FLASH messages at 958 a second)."""


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} must be HOST:PORT, not {text!r}")
    return host, int(port)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float, what: str) -> float | None:
    """Seconds in ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"`` or a number; None for ``"off"``."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        if value in ("", "off", "never"):
            return None
        unit = value[-1] if value[-1] in _UNITS else "s"
        number = value[:-1] if value[-1] in _UNITS else value
        try:
            seconds = float(number) * _UNITS[unit]
        except ValueError:
            raise UsageError(
                f"{what} must be a duration like 6h, 30m or 90s, not {text!r}"
            ) from None
    if not seconds > 0:
        raise UsageError(f"{what} must be positive, not {text!r}")
    return seconds


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """``0.0.0.0`` or ``::``: a listener on every address of the host."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def check_console_name(name: str, what: str = "console.names") -> str:
    """A name or address workstations use to reach the console, lower-cased.

    A DNS name (``parley-ru.mod.example``) or an IP address (``10.20.0.5``,
    ``fd00::5``), without a port: it goes into the console certificate and is
    accepted as the ``Host`` of requests.
    """
    text = name.strip().lower().strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        labels = text.rstrip(".").split(".")
        if len(text) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise UsageError(
                f"{what}: {name!r} is neither a host name (parley-ru.example) "
                "nor an IP address (10.20.0.5), without a port"
            ) from None
        return text.rstrip(".")
    if address.is_unspecified:
        raise UsageError(f"{what}: {name!r} names no host (a wildcard address)")
    return str(address)


def check_console_listen(
    text: str,
    *,
    tls: bool,
    names: Sequence[str] = (),
    what: str = "the console listener",
    tls_option: str = "console.tls",
    names_option: str = "console.names",
) -> tuple[str, int]:
    """``HOST:PORT`` of the console listener, refused where it would be unsafe.

    Plain HTTP is for a loopback address only: the console token, passwords
    and session cookies sent to any other address would cross the network in
    clear. Off loopback the listener needs TLS (``console.tls``). A wildcard
    address (``0.0.0.0``, ``::``) also needs ``console.names``, the names the
    workstations use for this host: the console answers no other ``Host``.
    """
    host, port = parse_hostport(text, what)
    if not is_loopback(host) and not tls:
        raise UsageError(
            f"{what} is {host}, not a loopback address, and {tls_option} is off: the console "
            "token, passwords and session cookies would cross the network in clear. Turn "
            f"TLS on with {tls_option} (the terminal makes its own certificate, whose "
            "fingerprint `parley console cert` prints), or listen on a loopback address "
            "(127.0.0.1, ::1 or localhost) and reach it through an SSH tunnel"
        )
    if is_wildcard(host) and not names:
        raise UsageError(
            f"{what} is the wildcard address {host}: list in {names_option} the names or "
            "addresses the workstations use to reach this console (parley-ru.example, "
            "10.20.0.5): they go into its certificate, and it answers no other Host"
        )
    return host, port


def console_hosts(host: str, port: int, names: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` headers a console listening on ``host:port`` answers.

    Its own address, the ``names`` configured for it (``console.names``), and
    ``localhost``/``127.0.0.1``/``[::1]`` for a loopback or wildcard listener
    (which this host's own CLI reaches there); any other name
    (``evil.example`` resolving to 127.0.0.1, a DNS rebinding attack) is refused.
    """
    accepted = {name.lower() for name in names}
    if not is_wildcard(host):
        accepted.add(host.lower())
    if is_loopback(host) or is_wildcard(host):
        accepted |= {"localhost", "127.0.0.1", "::1"}
    hosts = set()
    for name in accepted:
        shown = f"[{name}]" if ":" in name else name
        hosts.add(f"{shown}:{port}")
        if port == 80:
            hosts.add(shown)
    return frozenset(hosts)


@dataclass(slots=True)
class Config:
    party: str
    name: str
    database: str
    peer_listen: str = "0.0.0.0:7443"
    #: Peer requests served at once; more are answered 503 busy with Retry-After
    #: (``parley.service.peer_api.WorkGate``; urgent deliveries are always served).
    peer_max_concurrent: int = 4
    console_listen: str = "127.0.0.1:7080"
    #: HTTPS on the console listener (required off loopback): the terminal's own
    #: certificate, or the operator's PEM pair in ``console_tls_cert``/``_key``
    #: (relative paths are in the data directory); ``console_names``: the names
    #: and addresses workstations use for it (certificate and ``Host`` check).
    console_tls: bool = False
    console_tls_cert: str = ""
    console_tls_key: str = ""
    console_names: list[str] = field(default_factory=list)
    link_test_interval: float = 3600.0
    link_timeout: float = 10.0
    alarm_command: list[str] = field(default_factory=list)
    ack_deadlines: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ACK_DEADLINES))
    max_clock_skew: float = 600.0
    #: The longest card validity ``peer add`` accepts (3 years).
    max_card_validity_days: int = 1095
    #: Automatic backups by ``parley serve``: the directory ("" = DIR/backups),
    #: how often ("6h"; "off" = never) and how many files are kept.
    backup_dir: str = ""
    backup_every: str = "off"
    backup_keep: int = 7
    #: What one peer may send this terminal's peer listener (``[peer_quota]``,
    #: ``parley.service.quotas``; 0 = no limit): envelopes a minute, sustained;
    #: envelopes at once after a quiet spell; bytes of envelopes a day.
    quota_envelopes_per_minute: int = DEFAULT_PEER_QUOTA["envelopes_per_minute"]
    quota_burst: int = DEFAULT_PEER_QUOTA["burst"]
    quota_bytes_per_day: int = DEFAULT_PEER_QUOTA["stored_bytes_per_day"]
    #: Medium-term encryption keys (forward secrecy): a new key this often, and the
    #: private half of a replaced key destroyed this long after it was replaced.
    encryption_key_rotation: str = "7d"
    encryption_key_grace: str = "14d"
    #: Machine translation of free text (``parley.forms.translate``): the engine
    #: ("auto": Apertium for Russian↔Ukrainian, Argos for the pairs whose models
    #: are installed; "apertium"; "argos"; "off") and how long one may take.
    translation_engine: str = "auto"
    translation_timeout: float = 30.0

    @property
    def rotation_interval(self) -> timedelta:
        """How long one encryption key stays current (``keys.encryption_key_rotation``)."""
        return _required_span(self.encryption_key_rotation, "keys.encryption_key_rotation")

    @property
    def grace_period(self) -> timedelta:
        """How long a replaced key still opens what was sent to it (``encryption_key_grace``)."""
        return _required_span(self.encryption_key_grace, "keys.encryption_key_grace")

    @property
    def backup_interval(self) -> float | None:
        """Seconds between automatic backups, or None when they are off."""
        return parse_duration(self.backup_every, "backup.every")

    def ack_deadline(self, precedence: str) -> timedelta:
        return timedelta(
            seconds=self.ack_deadlines.get(precedence, DEFAULT_ACK_DEADLINES["ROUTINE"])
        )

    def to_toml(self) -> str:
        data: dict[str, Any] = {
            "party": self.party,
            "name": self.name,
            "database": self.database,
            "peer": {"listen": self.peer_listen, "max_concurrent": self.peer_max_concurrent},
            "console": {
                "listen": self.console_listen,
                "tls": self.console_tls,
                "names": self.console_names,
                "tls_cert": self.console_tls_cert,
                "tls_key": self.console_tls_key,
            },
            "links": {"test_interval": self.link_test_interval, "timeout": self.link_timeout},
            "alarms": {"command": self.alarm_command},
            "ack_deadlines": self.ack_deadlines,
            "protocol": {
                "max_clock_skew": self.max_clock_skew,
                "max_card_validity_days": self.max_card_validity_days,
            },
            "backup": {
                "dir": self.backup_dir,
                "every": self.backup_every,
                "keep": self.backup_keep,
            },
            "peer_quota": {
                "envelopes_per_minute": self.quota_envelopes_per_minute,
                "burst": self.quota_burst,
                "stored_bytes_per_day": self.quota_bytes_per_day,
            },
            "keys": {
                "encryption_key_rotation": self.encryption_key_rotation,
                "encryption_key_grace": self.encryption_key_grace,
            },
            "translation": {
                "engine": self.translation_engine,
                "timeout": self.translation_timeout,
            },
        }
        header = (
            "# Parley terminal configuration. Times are in seconds.\n"
            "# console.listen: plain HTTP on a loopback address only; elsewhere tls = true.\n"
            "# console.tls: HTTPS with the terminal's own certificate (`parley console\n"
            "#   cert` prints its fingerprint), or tls_cert/tls_key (PEM files) of yours.\n"
            "# console.names: the names or addresses workstations use for the console\n"
            "#   (in its certificate; no other Host is answered).\n"
            "# peer.max_concurrent: peer requests served at once; more are answered\n"
            "#   503 busy with Retry-After (FLASH and IMMEDIATE deliveries always served).\n"
            "# links.test_interval: how often each link is tested (3600 = hourly).\n"
            "# alarms.command: a program (and arguments) run for each alarm, with the\n"
            "#   alarm as JSON on its standard input; [] for none.\n"
            "# protocol.max_card_validity_days: the longest card validity peer add accepts.\n"
            '# backup: automatic encrypted backups by parley serve: every ("6h", "30m";\n'
            '#   "off"), into dir ("" = DIR/backups), keeping the newest keep files.\n'
            "# peer_quota: what each peer may send (0 = no limit): envelopes_per_minute\n"
            "#   sustained, burst at once, stored_bytes_per_day; beyond it: 429.\n"
            "# keys.encryption_key_rotation: a new encryption key this often (forward\n"
            "#   secrecy); keys.encryption_key_grace: a replaced key's private half is\n"
            '#   destroyed this long after it was replaced ("7d", "14d", "30m").\n'
            "# translation.engine: machine translation of free text, a reading aid never\n"
            '#   signed: "auto" (Apertium for Russian-Ukrainian, Argos Translate for the\n'
            '#   pairs whose models are installed), "apertium", "argos" or "off";\n'
            "#   translation.timeout: the longest one translation may take.\n"
        )
        return header + tomli_w.dumps(data)

    @classmethod
    def from_toml(cls, text: str, source: str) -> Config:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{source} is not valid TOML: {exc}") from None
        try:
            deadlines = dict(DEFAULT_ACK_DEADLINES)
            deadlines.update({str(k): int(v) for k, v in data.get("ack_deadlines", {}).items()})
            quota = dict(DEFAULT_PEER_QUOTA)
            quota.update(data.get("peer_quota", {}))
            command = data.get("alarms", {}).get("command", [])
            console = data.get("console", {})
            if isinstance(command, str):
                command = [command] if command else []
            config = cls(
                party=str(data["party"]),
                name=str(data["name"]),
                database=str(data["database"]),
                peer_listen=str(data.get("peer", {}).get("listen", "0.0.0.0:7443")),
                peer_max_concurrent=int(data.get("peer", {}).get("max_concurrent", 4)),
                console_listen=str(console.get("listen", "127.0.0.1:7080")),
                console_tls=_boolean(console.get("tls", False), f"console.tls in {source}"),
                console_tls_cert=str(console.get("tls_cert", "")),
                console_tls_key=str(console.get("tls_key", "")),
                console_names=[
                    check_console_name(str(n), f"console.names in {source}")
                    for n in _string_list(console.get("names", []))
                ],
                link_test_interval=float(data.get("links", {}).get("test_interval", 3600)),
                link_timeout=float(data.get("links", {}).get("timeout", 10)),
                alarm_command=[str(c) for c in command],
                ack_deadlines=deadlines,
                max_clock_skew=float(data.get("protocol", {}).get("max_clock_skew", 600)),
                max_card_validity_days=int(
                    data.get("protocol", {}).get("max_card_validity_days", 1095)
                ),
                backup_dir=str(data.get("backup", {}).get("dir", "")),
                backup_every=str(data.get("backup", {}).get("every", "off")),
                backup_keep=int(data.get("backup", {}).get("keep", 7)),
                quota_envelopes_per_minute=int(quota["envelopes_per_minute"]),
                quota_burst=int(quota["burst"]),
                quota_bytes_per_day=int(quota["stored_bytes_per_day"]),
                encryption_key_rotation=str(
                    data.get("keys", {}).get("encryption_key_rotation", "7d")
                ),
                encryption_key_grace=str(data.get("keys", {}).get("encryption_key_grace", "14d")),
                translation_engine=str(data.get("translation", {}).get("engine", "auto")),
                translation_timeout=float(data.get("translation", {}).get("timeout", 30)),
            )
            for key, value in quota.items():
                if key not in DEFAULT_PEER_QUOTA or not int(value) >= 0:
                    raise UsageError(
                        f"peer_quota.{key} in {source}: expected one of "
                        f"{', '.join(DEFAULT_PEER_QUOTA)}, a whole number, 0 for no limit"
                    )
            config.rotation_interval, config.grace_period  # noqa: B018 - refuse a bad value now
            if bool(config.console_tls_cert) != bool(config.console_tls_key):
                raise UsageError(
                    f"console.tls_cert and console.tls_key in {source} go together: "
                    "a certificate and its private key (PEM files), or neither"
                )
            if config.console_tls_cert and not config.console_tls:
                raise UsageError(
                    f"console.tls_cert in {source} is set but console.tls is off: "
                    "set tls = true to serve the console with it"
                )
            if config.peer_max_concurrent < 1:
                raise UsageError(
                    f"peer.max_concurrent in {source}: expected a whole number of at least 1"
                )
            parse_duration(config.backup_every, f"backup.every in {source}")
            if config.max_card_validity_days < 1:
                raise UsageError(f"protocol.max_card_validity_days in {source} must be at least 1")
            if config.translation_engine not in TRANSLATION_ENGINES:
                raise UsageError(
                    f"translation.engine in {source} must be one of "
                    f"{', '.join(TRANSLATION_ENGINES)}, not {config.translation_engine!r}"
                )
            if not config.translation_timeout > 0:
                raise UsageError(f"translation.timeout in {source} must be positive")
            if config.backup_keep < 1:
                raise UsageError(f"backup.keep in {source} must be at least 1")
            return config
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{source}: missing or invalid setting {exc}") from None


def _string_list(value: Any) -> list[Any]:
    """A TOML list, or one string standing for a list of one."""
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be true or false, not {value!r}")
    return value


def _required_span(text: str, what: str) -> timedelta:
    seconds = parse_duration(text, what)
    if seconds is None:
        raise UsageError(f"{what} cannot be off: give a duration like 7d, 14d or 30m")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class DataDir:
    """The files of one terminal's data directory."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "parley.toml"

    @property
    def key_file(self) -> Path:
        return self.path / "identity.key"

    @property
    def card_file(self) -> Path:
        return self.path / "card.json"

    @property
    def token_file(self) -> Path:
        return self.path / "console.token"

    @property
    def sqlite_file(self) -> Path:
        return self.path / "parley.db"

    @property
    def log_file(self) -> Path:
        return self.path / "parley.log"

    @property
    def console_cert_file(self) -> Path:
        return self.path / "console-tls.pem"

    @property
    def console_key_file(self) -> Path:
        return self.path / "console-tls.key"

    @property
    def lock_file(self) -> Path:
        return self.path / "serve.lock"

    def exists(self) -> bool:
        return self.config_file.exists()

    def require(self) -> None:
        if not self.config_file.exists():
            raise UsageError(
                f"{self.path} is not a Parley data directory (no parley.toml); "
                "create one with `parley --data DIR init`"
            )

    def load_config(self) -> Config:
        self.require()
        return Config.from_toml(self.config_file.read_text("utf-8"), str(self.config_file))

    def save_config(self, config: Config) -> None:
        write_private(self.config_file, config.to_toml().encode(), mode=0o644)

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        write_private(self.token_file, token.encode() + b"\n")
        return token

    def read_token(self) -> str:
        try:
            return self.token_file.read_text("ascii").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the console token {self.token_file}: {exc}") from None


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` atomically to ``path`` with ``mode`` (owner-only by default)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

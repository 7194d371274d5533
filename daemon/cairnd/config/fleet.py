"""The `[fleet]` table of the configuration (SPEC sections 9 and 17), validated at start:
every bad value is refused with a message naming its key (`fleet.<key>`).

The fleet is closed by default (SPEC 17): whoever can publish to its stream runs
commands on every host. So a NATS server is joined only with credentials
(`nats_credentials`, a creds file; or `nats_user` and `nats_password`; or `nats_token`),
and the store only with credentials (`store_credentials`, a file of AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY; else the usual AWS_* variables), unless every address is on
loopback or `insecure = true` says the operator chose it; and a plain-text address
(`nats://`, `ws://`, `http://`, `git://`) off loopback is refused unless `insecure =
true`. Secrets are kept out of every `repr` and never put in a URL (a URL with a
password in it is refused: URLs are shown by `cairnd status` and in logs).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# S3 bucket names (the strict, DNS-compatible rule AWS applies to new buckets).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

KEYS = ("host", "nats", "store", "store_endpoint", "store_region", "checkpoints",
        "lease_seconds", "wait_seconds", "nats_credentials", "nats_user", "nats_password", "nats_token",
        "nats_tls_ca", "store_credentials", "insecure", "accept_new")
_ENV_CREDENTIALS = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_WEB_IDENTITY_TOKEN_FILE",),
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI",), ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",))
MAX_CREDENTIALS_FILE = 64 * 1024


class FleetConfigError(ValueError):
    """A bad [fleet] value; the message names the key."""


@dataclass(frozen=True)
class NatsAuth:
    """How this host proves itself to NATS, and how it checks the server. Secrets are
    left out of `repr` (a config printed in a traceback or a log shows none)."""

    credentials: str | None = None  # a creds file (JWT and nkey seed)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None  # the CA that signed the server's certificate

    @property
    def given(self) -> bool:
        return bool(self.credentials or self.user or self.token)


@dataclass(frozen=True)
class StoreKeys:
    """S3 credentials read from `store_credentials` (never from a URL)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None


@dataclass(frozen=True)
class FleetConfig:
    host: str
    nats: tuple[str, ...]          # server URLs
    bucket: str
    prefix: str                    # key prefix inside the bucket, "" or ending with "/"
    store_endpoint: str | None
    store_region: str | None
    checkpoints: str               # URL or absolute path of the bare checkpoint repository
    lease_seconds: float = 15.0    # a lease not renewed for this long has lapsed
    wait_seconds: float = 120.0    # how long a result waits for NATS or the store before failing
    accept_new: bool = True        # false: this host takes no unowned work (draining it)
    nats_auth: NatsAuth = field(default_factory=NatsAuth)
    store_keys: StoreKeys | None = None  # None: the usual AWS_* variables (or none, on loopback)
    insecure: bool = False         # the operator accepts an open or plain-text fleet

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def _default_host() -> str:
    name = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64] or "host"
    return cleaned if HOST_RE.match(cleaned) else f"h{cleaned}"[:64]


def _string(table: dict[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FleetConfigError(f"fleet.{key} = {value!r} must be a non-empty string")
    return value


def _required(table: dict[str, Any], key: str, example: str) -> str:
    value = _string(table, key)
    if value is None:
        raise FleetConfigError(f"fleet.{key} is missing (for example {key} = {example!r})")
    return value


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise FleetConfigError(f"fleet.{key} = {value!r} must be a positive number of seconds")
    return float(value)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _no_password_in(key: str, url: str) -> None:
    """Refuse a secret in a URL: any user info in a NATS or store address (a token
    spelled `nats://TOKEN@host` too), a password in the checkpoint repository's."""
    parts = urlsplit(url)
    if parts.password is not None or (key != "checkpoints" and parts.username is not None):
        secret_key = {"nats": "nats_user/nats_password", "store_endpoint": "store_credentials"}.get(
            key, "a credential helper")
        raise FleetConfigError(f"fleet.{key}: a password in the URL would be shown wherever the URL is "
                               f"(status, logs): put it in {secret_key} instead")


def _private_file(key: str, path_text: str) -> str:
    """An absolute path to a regular file others cannot read (a secret), or the error."""
    path = os.path.expanduser(path_text)
    if not os.path.isabs(path):
        raise FleetConfigError(f"fleet.{key} = {path_text!r} must be an absolute path")
    try:
        found = os.stat(path)
    except OSError as exc:
        raise FleetConfigError(f"fleet.{key} = {path_text!r}: {exc.strerror}") from None
    if not stat.S_ISREG(found.st_mode):
        raise FleetConfigError(f"fleet.{key} = {path_text!r} is not a file")
    if stat.S_IMODE(found.st_mode) & 0o004:
        raise FleetConfigError(f"fleet.{key} = {path_text!r} is readable by every user (mode "
                               f"{stat.S_IMODE(found.st_mode):04o}): `chmod o-rwx {path}`")
    return path


def read_store_credentials(key: str, path_text: str) -> StoreKeys:
    """AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN, AWS_REGION too) from
    a file of `NAME=VALUE` lines (`export `, quotes and `#` comments allowed, as in an
    env file); FleetConfigError naming `key` when they are not there. No value is ever
    put in a message."""
    path = _private_file(key, path_text)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CREDENTIALS_FILE).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetConfigError(f"fleet.{key} = {path_text!r} cannot be read: {exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise FleetConfigError(f"fleet.{key} = {path_text!r}: line {number} is not NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not values.get(name)]
    if missing:
        raise FleetConfigError(f"fleet.{key} = {path_text!r} has no {' and no '.join(missing)}")
    return StoreKeys(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"],
                     values.get("AWS_SESSION_TOKEN") or None, values.get("AWS_REGION") or None)


def _nats_auth(table: dict[str, Any]) -> NatsAuth:
    creds = _string(table, "nats_credentials")
    user, password = _string(table, "nats_user"), _string(table, "nats_password")
    token = _string(table, "nats_token")
    if (user is None) != (password is None):
        given, other = ("nats_user", "nats_password") if user is not None else ("nats_password", "nats_user")
        raise FleetConfigError(f"fleet.{given} is set without fleet.{other}: set both")
    kinds = [name for name, value in (("nats_credentials", creds), ("nats_user", user), ("nats_token", token))
             if value is not None]
    if len(kinds) > 1:
        raise FleetConfigError(f"fleet.{kinds[0]} and fleet.{kinds[1]} are both set: NATS takes one way "
                               "to authenticate (a creds file, a user and password, or a token)")
    if creds is not None and importlib.util.find_spec("nkeys") is None:
        raise FleetConfigError("fleet.nats_credentials: signing with a creds file needs the nkeys package, "
                               "which is not installed (pip install 'nats-py[nkeys]'), or use fleet.nats_user "
                               "and fleet.nats_password, or fleet.nats_token")
    ca = _string(table, "nats_tls_ca")
    return NatsAuth(credentials=_private_file("nats_credentials", creds) if creds else None,
                    user=user, password=password, token=token,
                    tls_ca=_readable_file("nats_tls_ca", ca) if ca else None)


def _readable_file(key: str, path_text: str) -> str:
    path = os.path.expanduser(path_text)
    if not os.path.isabs(path) or not os.path.isfile(path):
        raise FleetConfigError(f"fleet.{key} = {path_text!r} must be the absolute path of a file")
    return path


def _has_env_credentials(environ: Mapping[str, str]) -> bool:
    return any(all(environ.get(name) for name in names) for names in _ENV_CREDENTIALS)


def parse_fleet(table: Any, environ: Mapping[str, str] | None = None) -> FleetConfig:
    """`[fleet]` as parsed TOML -> FleetConfig, or FleetConfigError naming the key.
    `environ` (default: this process's) is where the usual AWS_* credentials are
    looked for when `store_credentials` is not set."""
    environ = os.environ if environ is None else environ
    if not isinstance(table, dict):
        raise FleetConfigError("fleet must be a table ([fleet])")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise FleetConfigError(f"fleet.{unknown[0]} is not a known key (known: {', '.join(KEYS)})")
    host = _string(table, "host") or _default_host()
    if not HOST_RE.match(host):
        raise FleetConfigError(f"fleet.host = {host!r} must be letters, digits, '-' or '_' (at most 64)")

    nats_value = _required(table, "nats", "nats://127.0.0.1:4222")
    servers = tuple(part.strip() for part in nats_value.split(","))
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise FleetConfigError(f"fleet.nats = {nats_value!r}: {server!r} is not a nats://HOST:PORT URL")
        try:
            parts.port
        except ValueError:
            raise FleetConfigError(f"fleet.nats = {nats_value!r}: {server!r} has a bad port") from None

    store = _required(table, "store", "s3://cairnd/prod")
    parts = urlsplit(store)
    if parts.scheme != "s3" or not parts.netloc:
        raise FleetConfigError(f"fleet.store = {store!r} must be s3://BUCKET[/PREFIX]")
    if not BUCKET_RE.match(parts.netloc):
        raise FleetConfigError(f"fleet.store = {store!r}: {parts.netloc!r} is not a valid bucket name")
    prefix = parts.path.strip("/")
    prefix = f"{prefix}/" if prefix else ""

    endpoint = _string(table, "store_endpoint")
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise FleetConfigError(f"fleet.store_endpoint = {endpoint!r} must be an http:// or https:// URL")
    region = _string(table, "store_region")

    checkpoints = _required(table, "checkpoints", "ssh://git@host/cairnd.git")
    if not (checkpoints.startswith("/") or re.match(r"^(ssh|git|https?|file)://", checkpoints)
            or re.match(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:", checkpoints)):
        raise FleetConfigError(f"fleet.checkpoints = {checkpoints!r} must be a git URL or an absolute path")

    accept_new = table.get("accept_new", True)
    if not isinstance(accept_new, bool):
        raise FleetConfigError(f"fleet.accept_new = {accept_new!r} must be true or false")
    lease_seconds = _seconds(table, "lease_seconds", 15.0)
    wait_seconds = _seconds(table, "wait_seconds", 120.0)
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise FleetConfigError(f"fleet.insecure = {insecure!r} must be true or false")
    nats_auth = _nats_auth(table)
    store_file = _string(table, "store_credentials")
    store_keys = read_store_credentials("store_credentials", store_file) if store_file else None
    _closed(servers, endpoint, checkpoints, nats_auth, store_keys is not None or _has_env_credentials(environ),
            insecure)

    return FleetConfig(
        host=host, nats=servers, bucket=parts.netloc, prefix=prefix, store_endpoint=endpoint,
        store_region=region, checkpoints=checkpoints,
        lease_seconds=lease_seconds, wait_seconds=wait_seconds,
        accept_new=accept_new,
        nats_auth=nats_auth, store_keys=store_keys, insecure=insecure,
    )


def _closed(servers: tuple[str, ...], endpoint: str | None, checkpoints: str, nats_auth: NatsAuth,
            store_credentials: bool, insecure: bool) -> None:
    """Refuse an open or plain-text fleet off loopback, unless `insecure = true`."""
    for server in servers:
        _no_password_in("nats", server)
    if endpoint is not None:
        _no_password_in("store_endpoint", endpoint)
    if re.match(r"^[a-z]+://", checkpoints):
        _no_password_in("checkpoints", checkpoints)
    if insecure:
        return
    remote = [server for server in servers if not is_loopback_host(urlsplit(server).hostname)]
    for server in remote:
        scheme = urlsplit(server).scheme
        if scheme in ("nats", "ws"):
            secure = "tls" if scheme == "nats" else "wss"
            raise FleetConfigError(
                f"fleet.nats = {server!r} is plain text off loopback: credentials and every request would "
                f"cross the network readable; use {secure}://{server.split('://', 1)[1]} (with fleet.nats_tls_ca "
                "for a private CA), or set fleet.insecure = true")
    if remote and not nats_auth.given:
        raise FleetConfigError(
            f"fleet.nats = {remote[0]!r} is not on loopback and no NATS credentials are set: whoever can "
            "publish there runs commands on every host; set fleet.nats_credentials (a creds file), "
            "fleet.nats_user and fleet.nats_password, or fleet.nats_token (or fleet.insecure = true)")
    store_host = urlsplit(endpoint).hostname if endpoint else None
    store_remote = endpoint is None or not is_loopback_host(store_host)
    if endpoint is not None and store_remote and urlsplit(endpoint).scheme == "http":
        raise FleetConfigError(
            f"fleet.store_endpoint = {endpoint!r} is plain text off loopback: use https:// "
            "(or set fleet.insecure = true)")
    if store_remote and not store_credentials:
        raise FleetConfigError(
            "fleet.store_credentials is not set and no AWS credentials are in the environment: the store "
            f"({endpoint or 'AWS S3'}) holds every session's log; set fleet.store_credentials to a file of "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or fleet.insecure = true)")
    if re.match(r"^(http|git)://", checkpoints) and not is_loopback_host(urlsplit(checkpoints).hostname):
        raise FleetConfigError(
            f"fleet.checkpoints = {checkpoints!r} is plain text off loopback: use ssh:// or https:// "
            "(or set fleet.insecure = true)")

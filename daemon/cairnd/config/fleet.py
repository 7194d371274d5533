"""The `[fleet]` table of the configuration (SPEC sections 9 and 17), validated at start:
every bad value is refused with a message naming its key (`fleet.<key>`)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# S3 bucket names (the strict, DNS-compatible rule AWS applies to new buckets).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

KEYS = ("host", "nats", "store", "store_endpoint", "store_region", "checkpoints",
        "lease_seconds", "wait_seconds", "accept_new")


class FleetConfigError(ValueError):
    """A bad [fleet] value; the message names the key."""


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


def parse_fleet(table: Any) -> FleetConfig:
    """`[fleet]` as parsed TOML -> FleetConfig, or FleetConfigError naming the key."""
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

    return FleetConfig(
        host=host, nats=servers, bucket=parts.netloc, prefix=prefix, store_endpoint=endpoint,
        store_region=region, checkpoints=checkpoints,
        lease_seconds=_seconds(table, "lease_seconds", 15.0),
        wait_seconds=_seconds(table, "wait_seconds", 120.0),
        accept_new=accept_new,
    )

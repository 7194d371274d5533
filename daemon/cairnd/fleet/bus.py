"""NATS JetStream, as the fleet uses it: one work-queue stream of requests, and
key-value buckets for results, leases, hosts, session descriptors and claims.

    stream CAIRND_REQUESTS (work queue)   subjects cairnd.req.any         new, fork, and
                                                                          requests about an
                                                                          unowned session
                                                   cairnd.req.host.<host> requests about a
                                                                          session <host> owns
    bucket cairnd_results    request key -> the result body (SPEC 6), created once
    bucket cairnd_owners     session -> {"host", "until"}: the lease (leases.py)
    bucket cairnd_hosts      host -> {"until", "sessions", "room"}: heartbeats
    bucket cairnd_sessions   session -> how to materialise it (origin, title, agent ...)
    bucket cairnd_claims     request key -> {"host", "session"}: who started it

A message is the request's own JSON, byte for byte, with headers naming the request
id, when it was received and by which host. The first submission carries
`Nats-Msg-Id` = the request id, so JetStream drops a second submission of the same
request (a spool door resubmitting after a restart) within its duplicate window;
the results bucket catches any later one.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import nats
import orjson
from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from cairnd.errors import CairnError
from cairnd.config.fleet import FleetConfig, NatsAuth
from cairnd.journal import event

STREAM = "CAIRND_REQUESTS"


def connect_options(auth: NatsAuth, servers: tuple[str, ...]) -> dict[str, Any]:
    """nats-py's connect options for this host's credentials (SPEC 17): a creds file, a
    user and password, or a token; TLS checked against `nats_tls_ca` when given (else the
    system's CAs), for `tls://` and `wss://` servers."""
    options: dict[str, Any] = {}
    if auth.credentials:
        options["user_credentials"] = auth.credentials
    elif auth.user:
        options["user"], options["password"] = auth.user, auth.password
    elif auth.token:
        options["token"] = auth.token
    if auth.tls_ca or any(server.startswith(("tls://", "wss://")) for server in servers):
        options["tls"] = ssl.create_default_context(cafile=auth.tls_ca)
    return options
SUBJECT_ANY = "cairnd.req.any"
SUBJECT_PREFIX = "cairnd.req."
RESULTS, OWNERS, HOSTS, SESSIONS, CLAIMS = (
    "cairnd_results", "cairnd_owners", "cairnd_hosts", "cairnd_sessions", "cairnd_claims")
ANY_CONSUMER = "any"

H_REQUEST = "Cairnd-Request-Id"
H_RECEIVED = "Cairnd-Received-At"
H_ORIGIN = "Cairnd-Origin"

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


def host_subject(host: str) -> str:
    return f"{SUBJECT_PREFIX}host.{host}"


def host_consumer(host: str) -> str:
    return f"host_{host}"


def request_key(request_id: str) -> str:
    """A request id as a KV key: `r.<id>` when NATS takes it as it is, else `h.<hex>`
    (ids may hold `..` or end with `.`, which keys may not)."""
    if _PLAIN_KEY.match(request_id):
        return f"r.{request_id}"
    return f"h.{request_id.encode().hex()}"


def request_id_of_key(key: str) -> str:
    kind, _, rest = key.partition(".")
    return bytes.fromhex(rest).decode() if kind == "h" else rest


@dataclass
class Bus:
    fleet: FleetConfig
    nc: Any
    js: Any
    results: KeyValue
    owners: KeyValue
    hosts: KeyValue
    sessions: KeyValue
    claims: KeyValue

    @classmethod
    async def connect(cls, fleet: FleetConfig, *, name: str = "cairnd", attempts: int | None = None) -> Bus:
        """Connect (retrying while NATS is away; `attempts` bounds it) and make sure the
        stream and the buckets exist (creating them is idempotent across hosts)."""
        delay, tried = 0.2, 0
        while True:
            try:
                nc = await nats.connect(
                    servers=list(fleet.nats), name=name, connect_timeout=2,
                    max_reconnect_attempts=1, reconnect_time_wait=0.5, allow_reconnect=True,
                    error_cb=_quiet, disconnected_cb=_disconnected, reconnected_cb=_reconnected,
                    **connect_options(fleet.nats_auth, fleet.nats),
                )
                # Once connected, reconnect for ever: a NATS restart must not end the host.
                # (Asked for at connect, nats-py would also retry the first connect for ever.)
                nc.options["max_reconnect_attempts"] = -1
                break
            except Exception as exc:  # nats raises several kinds (NoServers, OSError, timeouts)
                tried += 1
                if attempts is not None and tried >= attempts:
                    raise CairnError("fleet_unavailable",
                                     f"cannot reach NATS at {', '.join(fleet.nats)} (fleet.nats): {exc}") from None
                if tried == 1:
                    event(logging.WARNING, f"NATS at {', '.join(fleet.nats)} unreachable ({exc}); retrying")
                await anyio.sleep(delay)
                delay = min(delay * 2, 3.0)
        js = nc.jetstream(timeout=5)
        await ensure_stream(js, fleet)
        buckets = {}
        for bucket in (RESULTS, OWNERS, HOSTS, SESSIONS, CLAIMS):
            buckets[bucket] = await ensure_bucket(js, bucket)
        return cls(fleet, nc, js, buckets[RESULTS], buckets[OWNERS], buckets[HOSTS],
                   buckets[SESSIONS], buckets[CLAIMS])

    async def close(self) -> None:
        self.nc._disconnected_cb = None  # leaving on purpose: nothing to warn about
        try:
            await self.nc.close()
        except Exception:
            pass

    # -- requests ---------------------------------------------------------------------

    async def submit(self, subject: str, data: bytes, request_id: str, received_at: str,
                     origin: str, *, first: bool = True) -> None:
        headers = {H_REQUEST: request_id, H_RECEIVED: received_at, H_ORIGIN: origin}
        if first:
            headers["Nats-Msg-Id"] = request_id
        await self.js.publish(subject, data, stream=STREAM, headers=headers)

    async def queue_depth(self) -> dict[str, int]:
        """Messages waiting, in all and per subject."""
        info = await self.js.stream_info(STREAM, subjects_filter=f"{SUBJECT_PREFIX}>")
        subjects = info.state.subjects or {}
        return {"total": info.state.messages, **{k[len(SUBJECT_PREFIX):]: v for k, v in subjects.items()}}

    # -- results ----------------------------------------------------------------------

    async def put_result(self, request_id: str, body: bytes) -> bool:
        """Write a request's result once: True if this call wrote it, False if a
        result was already there (which then stays: exactly one per request)."""
        try:
            await self.results.create(request_key(request_id), body)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def get_result(self, request_id: str) -> bytes | None:
        return await get_value(self.results, request_key(request_id))


async def get_value(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, NotFoundError):
        return None
    return entry.value


async def get_json(kv: KeyValue, key: str) -> tuple[dict[str, Any], int] | None:
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, NotFoundError):
        return None
    if entry.value is None:
        return None
    return orjson.loads(entry.value), entry.revision


async def ensure_stream(js: Any, fleet: FleetConfig) -> None:
    config = api.StreamConfig(
        name=STREAM, subjects=[f"{SUBJECT_PREFIX}>"], retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE, duplicate_window=120.0, allow_direct=True,
    )
    try:
        await js.add_stream(config)
    except Exception as exc:
        # Another host made it first with the same config: fine. Anything else is real.
        try:
            await js.stream_info(STREAM)
        except Exception:
            raise exc from None


async def ensure_bucket(js: Any, bucket: str) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except Exception:
        pass
    try:
        return await js.create_key_value(bucket=bucket, history=1, storage=api.StorageType.FILE)
    except Exception:
        return await js.key_value(bucket)


async def ensure_consumer(js: Any, durable: str, subject: str, ack_wait: float) -> Any:
    """A pull subscription on the durable consumer `durable` (made if missing)."""
    config = api.ConsumerConfig(
        durable_name=durable, filter_subject=subject, ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait, max_deliver=-1, max_ack_pending=-1,
    )
    return await js.pull_subscribe(subject, durable=durable, stream=STREAM, config=config)


async def _quiet(exc: Exception) -> None:
    event(logging.DEBUG, f"NATS: {exc}")


async def _disconnected() -> None:
    event(logging.WARNING, "NATS: disconnected; reconnecting (turns go on locally)")


async def _reconnected() -> None:
    event(logging.INFO, "NATS: reconnected")

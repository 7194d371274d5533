"""Ownership: a session is owned by one host at a time, through a lease in JetStream's
key-value store (bucket cairnd_owners: session -> {"host", "until"}).

Every change is a compare-and-set on the key's revision, so two hosts can never both
take a lapsed lease. The owner renews its leases every third of the lease time; a
lease whose `until` has passed has lapsed and any host may take it (takeover).
Hosts announce themselves the same way (bucket cairnd_hosts), which is how `cairnd
status` and takeover tell a live host from a dead one. `until` is wall-clock time:
hosts of a fleet keep their clocks in step (NTP), as any lease system assumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cairnd.fleet.bus import get_json


@dataclass(frozen=True)
class Lease:
    host: str
    until: float
    revision: int = 0

    def alive(self, now: float) -> bool:
        return self.until > now


def lease_of(value: dict[str, Any] | None, revision: int = 0) -> Lease | None:
    if not isinstance(value, dict) or not isinstance(value.get("host"), str):
        return None
    until = value.get("until")
    return Lease(value["host"], float(until) if isinstance(until, (int, float)) else 0.0, revision)


def decide(current: Lease | None, me: str, now: float) -> str:
    """What `me` may do with a session's lease: "create" (none yet), "renew" (mine),
    "take" (lapsed), or "wait" (another live host owns it)."""
    if current is None:
        return "create"
    if current.host == me:
        return "renew"
    if not current.alive(now):
        return "take"
    return "wait"


class Leases:
    def __init__(self, kv: KeyValue, host: str, seconds: float) -> None:
        self.kv = kv
        self.host = host
        self.seconds = seconds
        self.held: dict[str, int] = {}   # session -> revision of our lease

    async def current(self, session_id: str) -> Lease | None:
        found = await get_json(self.kv, session_id)
        return lease_of(*found) if found else None

    async def owner(self, session_id: str) -> str | None:
        """The host whose lease on the session is alive, or None."""
        lease = await self.current(session_id)
        return lease.host if lease is not None and lease.alive(time.time()) else None

    def _value(self) -> bytes:
        return orjson.dumps({"host": self.host, "until": time.time() + self.seconds})

    async def acquire(self, session_id: str, *, steal_own: bool = True) -> tuple[bool, Lease | None]:
        """Try to own the session. Returns (owned, the lease as it was before)."""
        before = await self.current(session_id)
        action = decide(before, self.host, time.time())
        try:
            if action == "create":
                self.held[session_id] = await self.kv.create(session_id, self._value())
            elif action in ("renew", "take"):
                if action == "renew" and not steal_own:
                    return False, before
                assert before is not None
                self.held[session_id] = await self.kv.update(session_id, self._value(), last=before.revision)
            else:
                return False, before
        except KeyWrongLastSequenceError:
            return False, await self.current(session_id)
        return True, before

    async def renew(self, session_id: str) -> bool:
        """Extend our lease; False when it is no longer ours (we were too slow)."""
        revision = self.held.get(session_id)
        if revision is None:
            return False
        try:
            self.held[session_id] = await self.kv.update(session_id, self._value(), last=revision)
            return True
        except KeyWrongLastSequenceError:
            self.held.pop(session_id, None)
            return False

    async def release(self, session_id: str) -> None:
        revision = self.held.pop(session_id, None)
        if revision is None:
            return
        try:
            await self.kv.update(session_id, orjson.dumps({"host": self.host, "until": 0}), last=revision)
        except KeyWrongLastSequenceError:
            pass

    async def all(self) -> dict[str, Lease]:
        out: dict[str, Lease] = {}
        try:
            keys = await self.kv.keys()
        except Exception:  # NoKeysError: an empty bucket
            return out
        for key in keys:
            lease = await self.current(key)
            if lease is not None:
                out[key] = lease
        return out


async def beat(kv: KeyValue, host: str, seconds: float, info: dict[str, Any]) -> None:
    """This host is alive for `seconds` more."""
    await kv.put(host, orjson.dumps({**info, "host": host, "until": time.time() + seconds}))


async def hosts(kv: KeyValue) -> dict[str, dict[str, Any]]:
    """Every host that ever beat, with `alive` computed now."""
    out: dict[str, dict[str, Any]] = {}
    try:
        keys = await kv.keys()
    except Exception:
        return out
    now = time.time()
    for key in keys:
        found = await get_json(kv, key)
        if found is None:
            continue
        value = found[0]
        value["alive"] = float(value.get("until", 0)) > now
        out[key] = value
    return out

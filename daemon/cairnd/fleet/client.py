"""The fleet from the command line (SPEC 17): `cairnd` with [fleet] in its configuration
puts a request straight on the stream and waits for its result in the results bucket;
`cairnd status` shows the hosts alive, the sessions each owns and the queue depth."""

from __future__ import annotations

import time
from typing import Any

import anyio
import orjson

from cairnd.errors import CairnError
from cairnd.sessionlog.entries import now_timestamp
from cairnd.fleet.bus import Bus
from cairnd.fleet.host import route
from cairnd.fleet.leases import Leases, hosts
from cairnd.config.fleet import FleetConfig
from cairnd.spool.requests import validate_request


async def _connect(fleet: FleetConfig) -> Bus:
    return await Bus.connect(fleet, name="cairnd-cli", attempts=max(2, int(fleet.wait_seconds / 3)))


async def submit(fleet: FleetConfig, request: dict[str, Any], request_id: str, *,
                 timeout: float | None, wait: bool = True) -> dict[str, Any] | None:
    """Put `request` on the fleet's stream; its result (None when `timeout` passes
    first, or when not waiting). CairnError: invalid request, or NATS unreachable."""
    parsed = validate_request(request)
    bus = await _connect(fleet)
    try:
        session = getattr(parsed, "session", None)
        owner = await Leases(bus.owners, "cli", fleet.lease_seconds).owner(session) if session else None
        await bus.submit(route(parsed, owner), orjson.dumps(request), request_id, now_timestamp(), "cli")
        if not wait:
            return None
        started = time.monotonic()
        pause = 0.02
        while True:
            body = await bus.get_result(request_id)
            if body is not None:
                return orjson.loads(body)
            if timeout is not None and time.monotonic() - started >= timeout:
                return None
            await anyio.sleep(pause)
            pause = min(pause * 1.5, 0.5)
    finally:
        await bus.close()


def submit_sync(fleet: FleetConfig, request: dict[str, Any], request_id: str, *,
                timeout: float | None, wait: bool = True) -> dict[str, Any] | None:
    return anyio.run(lambda: submit(fleet, request, request_id, timeout=timeout, wait=wait))


async def status(fleet: FleetConfig) -> dict[str, Any]:
    """Hosts (alive or not, with the sessions each owns now), and the queue."""
    bus = await Bus.connect(fleet, name="cairnd-status", attempts=2)
    try:
        known = await hosts(bus.hosts)
        leases = await Leases(bus.owners, "status", fleet.lease_seconds).all()
        now = time.time()
        owned: dict[str, list[str]] = {}
        unowned = []
        for sid, lease in sorted(leases.items()):
            if lease.alive(now):
                owned.setdefault(lease.host, []).append(sid)
            elif lease.until:
                unowned.append(sid)
        out_hosts = []
        for name in sorted(set(known) | set(owned)):
            info = known.get(name, {})
            out_hosts.append({"host": name, "alive": bool(info.get("alive")),
                              "turns_in_flight": info.get("turns", 0), "sessions": owned.get(name, [])})
        return {"host": fleet.host, "nats": list(fleet.nats), "store": fleet.store_url,
                "checkpoints": fleet.checkpoints, "hosts": out_hosts, "awaiting_takeover": unowned,
                "queue": await bus.queue_depth()}
    finally:
        await bus.close()


def status_sync(fleet: FleetConfig) -> dict[str, Any]:
    try:
        return anyio.run(status, fleet)
    except CairnError as exc:
        return {"host": fleet.host, "error": exc.as_dict()}


def format_fleet(info: dict[str, Any]) -> list[str]:
    if "error" in info:
        return [f"  fleet      unreachable: {info['error']['message']}"]
    queue = info["queue"]
    waiting = ", ".join(f"{k} {v}" for k, v in sorted(queue.items()) if k != "total")
    lines = [f"  fleet      this host {info['host']}; {info['store']}; queue depth {queue['total']}"
             + (f" ({waiting})" if waiting else "")]
    for host in info["hosts"]:
        state = "alive" if host["alive"] else "dead"
        sessions = host["sessions"]
        shown = ", ".join(sessions[:8]) + (" ..." if len(sessions) > 8 else "")
        lines.append(f"    {host['host']:<16} {state:<5} {len(sessions)} session(s)"
                     + (f": {shown}" if sessions else ""))
    if info["awaiting_takeover"]:
        lines.append(f"    awaiting takeover: {', '.join(info['awaiting_takeover'])}")
    return lines

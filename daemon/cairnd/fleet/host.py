"""This host's part in the fleet (SPEC 17): the daemon with `[fleet]` hands it the
requests of its spool (the door), and it feeds the daemon the requests of the fleet.

    spool door    a request validated from this host's spool goes on the stream
                  (routed: a session's requests to its owner, new and fork to any
                  host); its result comes back from the results bucket into done/
                  or failed/, as the spool client expects
    intake        this host pulls from its own subject always, and from `any` while
                  it has room (never with fleet.accept_new = false: a host being
                  drained); a request about a session another live host owns is
                  forwarded there; one about an unowned session is taken over first
    publishing    before a result leaves this host, every checkpoint of the sessions
                  it names is pushed and their logs are mirrored; then the result is
                  created, once, in the results bucket, and the message acked
    upkeep        heartbeat, lease renewal, the running logs' mirror, and the sweep:
                  sessions whose lease lapsed are taken over, the requests left on a
                  dead host's subject are handled or forwarded

The daemon calls `door` and `intake`/`upkeep`, and answers a request taken from the
stream through its origin (`FleetStream.reply`); nothing else of it knows about the
fleet, and the fleet knows the daemon only through `fleet/port.DaemonPort`. Who owns a session and taking one over live in `fleet/ownership`
(SessionOwnership); pushing checkpoints and mirroring logs in `fleet/mirror`
(LogMirror); FleetHost mixes both in and holds the state they share.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from cairnd.sessionlog.entries import now_timestamp
from cairnd.errors import CairnError
from cairnd.fleet import remote
from cairnd.fleet.bus import (
    ANY_CONSUMER, H_RECEIVED, H_REQUEST, SUBJECT_ANY, Bus, ensure_consumer, get_json, host_consumer,
    host_subject, request_id_of_key, request_key,
)
from cairnd.fleet.leases import Leases, beat, hosts
from cairnd.fleet.logstore import LogStore, StoreConflict, make_store
from cairnd.fleet.mirror import LogMirror
from cairnd.fleet.ownership import SessionOwnership
from cairnd.config.fleet import FleetConfig
from cairnd.journal import event
from cairnd.spool.requests import ForkRequest, NewRequest, PromptRequest, Request, decode_json, validate_request
from cairnd.spool.protocol import Claimed

if TYPE_CHECKING:
    from cairnd.fleet.port import DaemonPort


@dataclass(frozen=True)
class FleetStream:
    """The origin of a request taken from the fleet's stream (a spool.protocol.Door): it
    is answered in the results bucket, then its message is acked."""

    host: FleetHost
    message: Any  # the stream's message (nats.aio.msg.Msg)
    from_any: bool  # taken from `any` (counts against this host's room), not its own subject

    async def reply(self, claimed: Claimed, body: dict[str, Any]) -> None:
        await self.host.publish(claimed, body, self)


def route(request: Request, owner: str | None) -> str:
    """The subject a request goes to: a session's own requests to its owner; new,
    fork, and requests about a session nobody owns now, to any host."""
    if isinstance(request, (NewRequest, ForkRequest)) or owner is None:
        return SUBJECT_ANY
    return host_subject(owner)


class FleetHost(SessionOwnership, LogMirror):
    def __init__(self, daemon: DaemonPort, fleet: FleetConfig) -> None:
        self.daemon = daemon
        self.fleet = fleet
        self.me = fleet.host
        self.layout = daemon.layout
        self.bus: Bus | None = None
        self.logs = LogStore(make_store(fleet))
        self.leases: Leases | None = None
        self.door_pending: dict[str, Claimed] = {}       # request id -> spool claim waiting for its result
        self.pushed: dict[str, int] = {}                  # session -> log bytes scanned for checkpoints
        self.session_locks: dict[str, anyio.Lock] = {}
        self.taking: dict[str, anyio.Lock] = {}
        self.any_in_flight = 0
        self.others: dict[str, dict[str, Any]] = {}      # the fleet's hosts, as last seen
        self.tickers: dict[str, anyio.CancelScope] = {}

    # -- start --------------------------------------------------------------------------

    async def connect(self) -> None:
        self.bus = await Bus.connect(self.fleet, name=f"cairnd-{self.me}")
        self.leases = Leases(self.bus.owners, self.me, self.fleet.lease_seconds)
        await self._beat()
        # Leases this host held before a restart: still ours if they have not lapsed.
        for sid, lease in (await self.leases.all()).items():
            if lease.host == self.me and lease.alive(time.time()):
                owned, _ = await self.leases.acquire(sid)
                if owned:
                    event(logging.INFO, "lease kept across a restart", session=sid)
        event(logging.INFO, f"fleet: host {self.me} joined ({', '.join(self.fleet.nats)}, {self.fleet.store_url})")

    @property
    def _bus(self) -> Bus:
        assert self.bus is not None
        return self.bus

    @property
    def _leases(self) -> Leases:
        assert self.leases is not None
        return self.leases

    def _lock(self, table: dict[str, anyio.Lock], key: str) -> anyio.Lock:
        return table.setdefault(key, anyio.Lock())

    def clone_repo(self, url: str, ref: str) -> tuple[Path, str]:
        """`new` with a git URL: this host's own clone of it, and `ref` in it. Blocking."""
        clone = remote.clone_url(self.layout.root, url)
        return clone, remote.resolve_in_clone(clone, ref)

    # -- the spool door ------------------------------------------------------------------

    async def door(self, claimed: Claimed, request: Request) -> None:
        """A valid request from this host's spool: into the fleet. Its result comes back
        through `_watch_results`; past fleet.wait_seconds without NATS it fails."""
        rid = claimed.request_id
        assert rid is not None and claimed.data is not None
        self.door_pending[rid] = claimed
        deadline = time.monotonic() + self.fleet.wait_seconds
        delay = 0.1
        while True:
            try:
                existing = await self._bus.get_result(rid)
                if existing is not None:
                    await self._to_spool(rid, existing)
                    return
                owner = await self._leases.owner(request.session) if hasattr(request, "session") else None
                await self._bus.submit(route(request, owner), claimed.data, rid, claimed.received_at, self.me)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.door_pending.pop(rid, None)
                    await self.daemon.publish_local(claimed, orjson.loads(claimed.data), request.kind, CairnError(
                        "fleet_unavailable",
                        f"request {rid} could not be put on the fleet's stream within "
                        f"{self.fleet.wait_seconds:g} s (fleet.wait_seconds): {exc}"))
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _to_spool(self, rid: str, body: bytes) -> None:
        claimed = self.door_pending.pop(rid, None)
        if claimed is None:
            return
        await self.daemon.write_result(claimed, orjson.loads(body))

    async def _watch_results(self) -> None:
        """Results of door requests, as they are created anywhere in the fleet; a poll
        of the pending ones too, for what a broken watch (NATS restarting) missed."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_results)
            while True:
                try:
                    watcher = await self._bus.results.watchall(include_history=False)
                    async for entry in watcher:
                        if entry is None or entry.value is None:
                            continue
                        rid = request_id_of_key(entry.key)
                        if rid in self.door_pending:
                            await self._to_spool(rid, entry.value)
                except Exception as exc:
                    event(logging.DEBUG, f"fleet: results watch ended ({exc}); watching again")
                await anyio.sleep(0.5)

    async def _poll_results(self) -> None:
        while True:
            await anyio.sleep(1.0)
            for rid in list(self.door_pending):
                try:
                    body = await self._bus.get_result(rid)
                except Exception:
                    break
                if body is not None:
                    await self._to_spool(rid, body)

    # -- intake ------------------------------------------------------------------------------

    async def intake(self) -> None:
        """Pull requests: this host's own subject, and `any` while there is room. Runs
        until cancelled (the daemon stopping)."""
        ack_wait = self.fleet.lease_seconds
        own = await ensure_consumer(self._bus.js, host_consumer(self.me), host_subject(self.me), ack_wait)
        anyone = await ensure_consumer(self._bus.js, ANY_CONSUMER, SUBJECT_ANY, ack_wait)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pull, own, False)
            if self.fleet.accept_new:
                tg.start_soon(self._pull, anyone, True)
            tg.start_soon(self._watch_results)
            tg.start_soon(self._sweep_loop)

    def _room(self) -> bool:
        return self.any_in_flight < max(1, self.daemon.config.max_parallel_forks)

    def _spread_delay(self) -> float:
        """A host that owns more sessions than the least loaded live host waits a little
        before taking new work from `any`, so new sessions spread over the fleet."""
        mine = len(self._leases.held)
        counts = [int(info.get("sessions", 0)) for name, info in self.others.items()
                  if info.get("alive") and name != self.me]
        if not counts:
            return 0.0
        return min(1.0, 0.15 * max(0, mine - min(counts)))

    async def _pull(self, sub: Any, gated: bool) -> None:
        while True:
            if gated:
                while not self._room():
                    await anyio.sleep(0.02)
                delay = self._spread_delay()
                if delay:
                    await anyio.sleep(delay)
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except Exception:  # nats' timeout when nothing waits; its errors while reconnecting
                await anyio.sleep(0.05)
                continue
            for msg in msgs:
                await self.handle_safely(msg, from_any=gated)

    async def handle_safely(self, msg: Any, *, from_any: bool = False) -> None:
        """`handle`, where a failure (NATS or the store away, a conflict) puts the
        message back for later instead of ending the host."""
        try:
            await self.handle(msg, from_any=from_any)
        except Exception as exc:
            event(logging.WARNING, f"fleet: request put back for later: {exc!r}")
            try:
                await msg.nak(delay=1.0)
            except Exception:
                pass  # redelivered after the ack wait

    async def handle(self, msg: Any, *, from_any: bool = False) -> None:
        """One message of the stream: answered already, forwarded to its owner, or run here."""
        headers = msg.headers or {}
        rid = headers.get(H_REQUEST)
        if not rid:
            await msg.term()
            return
        if await self._bus.get_result(rid) is not None:
            await msg.ack()  # a duplicate delivery of a request already answered
            return
        received = headers.get(H_RECEIVED) or now_timestamp()
        try:
            request = validate_request(decode_json(msg.data))
        except CairnError as exc:
            await self._publish_body(msg, rid, self._error_body(rid, msg.data, None, received, exc))
            return
        claim_key = request_key(rid)
        claim = await get_json(self._bus.claims, claim_key)
        session = getattr(request, "session", None)
        if session is not None and not isinstance(request, ForkRequest):
            owner = await self._ensure_owner(session)
            if owner is not None and owner != self.me:
                await self._bus.submit(host_subject(owner), msg.data, rid, received, self.me, first=False)
                await msg.ack()
                return
        claim_value = claim[0] if claim else None
        if claim_value is not None:
            if claim_value.get("host") == self.me and rid in self.tickers:
                # A second copy of a request this host is running now (a door resubmitted
                # it past the stream's duplicate window): its result comes from the first.
                await msg.ack()
                return
        if claim_value is not None and claim_value.get("host") != self.me and isinstance(request, PromptRequest):
            # Another host started this turn and died: the turn was cut (its log, taken
            # over, ends it interrupted). It is not run again.
            await self._publish_body(msg, rid, self._error_body(rid, msg.data, request.kind, received, CairnError(
                "turn_interrupted", f"the turn of request {rid} on session {session} was cut when host "
                                    f"{claim_value.get('host')} stopped")))
            return
        if isinstance(request, ForkRequest):
            try:
                await self._ensure_readable(request.session)
            except CairnError:
                pass  # the fork handler says what is wrong (unknown_session ...)
        await self._bus.claims.put(claim_key, orjson.dumps({"host": self.me, "at": time.time()}))
        claimed = Claimed(name=f"{rid}.json", request_id=rid, received_at=received, data=msg.data,
                          recovered=claim_value is not None and claim_value.get("host") == self.me,
                          origin=FleetStream(self, msg, from_any))
        if from_any:
            self.any_in_flight += 1
        self._tick(rid, msg)
        self.daemon.dispatch(claimed)

    def _tick(self, rid: str, msg: Any) -> None:
        """Tell JetStream the request is being worked on, so it is not redelivered while
        this host lives (a turn may take longer than the ack wait)."""
        scope = anyio.CancelScope()
        self.tickers[rid] = scope

        async def ticker() -> None:
            with scope:
                while True:
                    await anyio.sleep(self.fleet.lease_seconds / 3)
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass
        self.daemon.start_soon(ticker)

    # -- publishing a result -------------------------------------------------------------------

    async def publish(self, claimed: Claimed, body: dict[str, Any], stream: FleetStream) -> None:
        """The result of a request this host ran: sessions synced, new ones leased and
        described, then the result created once in the bucket, then the ack."""
        rid = claimed.request_id
        assert rid is not None
        try:
            body = await self._settle(body)
        except CairnError as exc:
            event(logging.WARNING, f"fleet: {body.get('kind')} failed: {exc.code}: {exc.message}", request=rid)
            body = {**{k: v for k, v in body.items() if k != "result"}, "status": "error", "error": exc.as_dict()}
        await self._publish_body(stream.message, rid, body)
        if stream.from_any:
            self.any_in_flight -= 1

    async def _settle(self, body: dict[str, Any]) -> dict[str, Any]:
        request = body.get("request") if isinstance(body.get("request"), dict) else {}
        result = body.get("result") if isinstance(body.get("result"), dict) else {}
        kind = body.get("kind")
        named = [s for s in (result.get("session"), request.get("session"), result.get("abandoned"))
                 if isinstance(s, str)]
        sessions = self.daemon.sessions
        for sid in dict.fromkeys(named):
            row = await anyio.to_thread.run_sync(sessions.registry.get, sid)
            if row is None:
                continue
            if sid not in self._leases.held:
                if row.state == "ready" and ((kind in ("new", "fork") and sid == result.get("session"))
                                             or (kind == "rewind" and sid == result.get("abandoned"))):
                    await self._sync_new(sid, row)
                elif kind not in ("new", "fork") and sid == request.get("session") and row.state == "ready":
                    # This host ran it, but lost the session meanwhile (its lease lapsed
                    # under load): what it did counts only if the store still takes it.
                    try:
                        await self.sync(sid)
                    except StoreConflict as exc:
                        raise CairnError("fleet_conflict", f"request ran on host {self.me} after another host "
                                         f"took session {sid} over; it is not part of the session: {exc.message}")
                continue
            if row.state == "deleted":
                await self._forget_session(sid)
                continue
            await self.sync(sid)
        return body

    async def _publish_body(self, msg: Any, rid: str, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        delay = 0.1
        while True:
            try:
                created = await self._bus.put_result(rid, data)
                if not created:
                    event(logging.WARNING, f"fleet: request {rid} already had a result; this one is dropped",
                          request=rid)
                break
            except Exception as exc:
                # NATS away: the result waits (the turn is done, its log is mirrored). When
                # stopping, the message is redelivered and answered from the log.
                if self.daemon.stopping and delay >= 2.0:
                    event(logging.ERROR, f"fleet: result of {rid} not written while stopping ({exc})", request=rid)
                    return
                event(logging.WARNING, f"fleet: cannot write the result of {rid} ({exc}); retrying", request=rid)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        scope = self.tickers.pop(rid, None)
        if scope is not None:
            scope.cancel()
        try:
            await msg.ack()
        except Exception:
            pass  # redelivered later: answered from the bucket

    def _error_body(self, rid: str, data: bytes, kind: str | None, received: str, error: CairnError) -> dict[str, Any]:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raw = None
        return {"id": rid, "kind": kind, "status": "error", "request": raw, "error": error.as_dict(),
                "received_at": received, "finished_at": now_timestamp()}

    # -- upkeep ----------------------------------------------------------------------------------

    async def upkeep(self) -> None:
        """Heartbeat and lease renewal every third of the lease; the running logs' mirror
        every second. Runs until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_loop)
            tg.start_soon(self._mirror_loop)

    async def _beat(self) -> None:
        info = {"sessions": len(self.leases.held) if self.leases else 0,
                "turns": self.daemon.sessions.turns_in_flight, "pid": os.getpid()}
        await beat(self._bus.hosts, self.me, self.fleet.lease_seconds, info)
        self.others = await hosts(self._bus.hosts)

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.fleet.lease_seconds / 3)
            try:
                await self._beat()
                for sid in list(self._leases.held):
                    if not await self._leases.renew(sid):
                        event(logging.ERROR, "fleet: lost the lease of a session (another host took it)", session=sid)
                        runner = self.daemon.sessions.runners.pop(sid, None)
                        if runner is not None:
                            await runner.close()
            except Exception as exc:
                event(logging.WARNING, f"fleet: heartbeat failed ({exc})")

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()

"""Session ownership in the fleet (SPEC 17), FleetHost's part that decides and takes
who owns a session: the owner of a session now, taking a session over (its lease,
then this host's copy rebuilt from the store and the checkpoint repository), a
session's copy made readable here for a fork, and the sweep that takes over sessions
whose lease lapsed and handles the requests left on a dead host's subject.
"""

from __future__ import annotations

import logging
import time

import anyio
import orjson

from cairnd.fleet.bus import ensure_consumer, get_json, host_consumer, host_subject
from cairnd.fleet.logstore import StoreConflict
from cairnd.fleet.materialise import Descriptor, materialise
from cairnd.fleet.hostparts import HostParts
from cairnd.journal import event
from cairnd.sessionlog.file import SessionLog
from cairnd.checkpoints.checkpoint import taker_for
from cairnd.sessionlog.turns import close_open_turn



class SessionOwnership(HostParts):
    """Mixed into FleetHost: which host owns a session, and taking sessions over."""

    async def _ensure_owner(self, session: str) -> str | None:
        """Who owns `session` now; if nobody (its lease lapsed, or it never had one
        because it is unknown), this host takes it over when the fleet knows it."""
        lease = await self._leases.current(session)
        if lease is not None and lease.alive(time.time()) and lease.host != self.me:
            return lease.host
        # Ours, or nobody's: through take_over even when this host holds the lease, so a
        # request that comes while a takeover is rebuilding the session waits for it.
        if await self.take_over(session):
            return self.me
        lease = await self._leases.current(session)
        return lease.host if lease is not None and lease.alive(time.time()) else None

    async def descriptor(self, session: str) -> Descriptor | None:
        found = await get_json(self._bus.sessions, session)
        return Descriptor.of(session, found[0]) if found else None

    async def take_over(self, session: str) -> bool:
        """Own `session` here: take its lease, and rebuild it from the store and the
        checkpoint repository unless this host's copy is already the stored one."""
        async with self._lock(self.taking, session):
            if session in self._leases.held:
                return True
            descriptor = await self.descriptor(session)
            if descriptor is None or descriptor.deleted:
                return False
            owned, before = await self._leases.acquire(session)
            if not owned:
                return False
            try:
                for attempt in range(10):
                    try:
                        await self._materialise(descriptor, with_worktree=True,
                                                trust_local=before is not None and before.host == self.me)
                        break
                    except StoreConflict:
                        # The former owner was still writing (its lease lapsed under load,
                        # not with its life): it stops once it fails to renew. Read again.
                        if attempt == 9:
                            raise
                        event(logging.WARNING, "fleet: the former owner was still writing; reading the "
                                               "session again", session=session)
                        await anyio.sleep(self.fleet.lease_seconds / 3)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._leases.release(session)
                raise
            how = f"from {before.host}" if before is not None and before.host != self.me else "again"
            event(logging.WARNING if before is not None and before.host != self.me else logging.INFO,
                  f"fleet: took session over {how}", session=session)
            return True

    async def _materialise(self, descriptor: Descriptor, *, with_worktree: bool, trust_local: bool = False) -> None:
        """Make this host's copy of the session the stored one. `trust_local`: the last
        lease was this host's own, so nobody else wrote since and the local copy is the
        latest (a restart): the store is not even read, so it may be away."""
        sid = descriptor.session
        sessions = self.daemon.sessions
        local = self.layout.log_path(sid)
        row = await anyio.to_thread.run_sync(sessions.registry.get, sid)
        usable = (row is not None and row.state == "ready" and local.exists()
                  and (row.worktree.exists() or not with_worktree))
        if usable and trust_local:
            current = True
        else:
            stored = await self.logs.rebuild(sid)
            current = usable and await anyio.to_thread.run_sync(local.read_bytes) == stored
        if not current:
            runner = sessions.runners.pop(sid, None)
            if runner is not None:
                await runner.close()
            await anyio.to_thread.run_sync(lambda: materialise(
                self.layout, sessions.registry, descriptor, stored, self.fleet.checkpoints,
                with_worktree=with_worktree))
            forget = getattr(sessions, "checkpoints", None)
            if forget is not None:
                forget.forget(sid)
        self.logs.forget(sid)
        self.pushed.pop(sid, None)
        if with_worktree:
            row = await anyio.to_thread.run_sync(sessions.registry.get, sid)
            assert row is not None
            # A turn its host's death cut ends interrupted, as after a local crash.
            log = await anyio.to_thread.run_sync(SessionLog, local)
            try:
                turns, closed = await close_open_turn(log, sid, row.worktree, limiter=None,
                                                      max_file_bytes=self.daemon.config.snapshot_max_file_bytes,
                                                      take=taker_for(self.layout))
            finally:
                log.close()
            if closed is not None:
                event(logging.WARNING, f"turn {turns - 1} was cut when its host stopped: recorded as interrupted",
                      session=sid)
                await anyio.to_thread.run_sync(sessions.registry.set_turns, sid, turns)
            if not trust_local:  # (else the next result's publication mirrors it)
                await self.sync(sid)

    async def _ensure_readable(self, session: str) -> None:
        """A fork of `session` is about to be made here: its log and checkpoint objects
        must be this host's up-to-date copy (materialised without a worktree)."""
        if session in self._leases.held:
            return
        descriptor = await self.descriptor(session)
        if descriptor is None:
            return
        async with self._lock(self.taking, session):
            await self._materialise(descriptor, with_worktree=False)


    async def _forget_session(self, sid: str) -> None:
        descriptor = await self.descriptor(sid)
        if descriptor is not None:
            await self._bus.sessions.put(sid, orjson.dumps({**descriptor.as_dict(), "deleted": True}))
        await self._leases.release(sid)


    async def _sweep_loop(self) -> None:
        """Take over sessions whose lease lapsed; handle what dead hosts left queued."""
        while True:
            await anyio.sleep(max(0.2, self.fleet.lease_seconds / 4))
            try:
                await self._sweep()
            except Exception as exc:
                event(logging.WARNING, f"fleet: sweep failed ({exc})")

    async def _sweep(self) -> None:
        if not self.fleet.accept_new:
            return  # a host being drained takes on no session nobody holds: the others do
        now = time.time()
        for sid, lease in (await self._leases.all()).items():
            if lease.host == self.me or lease.alive(now) or lease.until == 0:
                continue
            if await self.take_over(sid):
                pass
        for name, info in self.others.items():
            if name == self.me or info.get("alive"):
                continue
            await self._drain(name)

    async def _drain(self, host: str) -> None:
        """Requests routed to a dead host: handled here (owner checks forward them on)."""
        try:
            sub = await ensure_consumer(self._bus.js, host_consumer(host), host_subject(host), self.fleet.lease_seconds)
        except Exception:
            return
        try:
            while True:
                try:
                    msgs = await sub.fetch(8, timeout=0.3)
                except Exception:
                    return
                for msg in msgs:
                    await self.handle_safely(msg)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass


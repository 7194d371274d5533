"""The daemon (`cairnd serve`): intake from the spool, scheduling (per-session queues,
limits), life cycle, signals, sd_notify, the watchdog and status, in one anyio task group.

Data flows one way: spool (claim) -> requests.admit -> lanes (how a session's requests
wait for each other) -> sessions (runner, forker) -> the request's origin (spool
result_body, publish; or the door it came through). Service never reads request bytes or writes a file format
itself: it schedules. Every claimed request ends in exactly one `Spool.publish`,
whatever happens to it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from cairnd import journal
from cairnd.spool import doorbell
from cairnd.state import privacy
from cairnd.serve import recovery
from cairnd.state import statelock
from cairnd.config.settings import Config, load_config
from cairnd.agent.confinement import fallback_notice
from cairnd.state.durable import write_atomic
from cairnd.sessionlog.entries import now_timestamp
from cairnd.errors import CairnError, internal_error_text
from cairnd.journal import event
from cairnd.spool.requests import Admitted, Origin, Request, RewindRequest, admit
from cairnd.serve.lanes import SessionQueue, Work, lane_of
from cairnd.serve.sdnotify import Notifier, watchdog_interval
from cairnd.sessions.handlers import Sessions
from cairnd.spool.protocol import Claimed, Spool, SpoolFile, result_body
from cairnd.state.statelock import AlreadyRunning

if TYPE_CHECKING:
    from cairnd.fleet.host import FleetHost  # imported when [fleet] is set: NATS and S3 load only then


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None,
                 config_loader: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.layout = config.layout
        self.spool = Spool(self.layout.spool)
        self.notifier = notifier or Notifier()
        self.config_loader = config_loader
        self._running: Sessions | None = None  # the sessions, while the daemon runs
        self._recovered_requests: list[Claimed] = []  # found in cur/ at start, run once serving
        self.fleet: FleetHost | None = None  # with [fleet] (SPEC 17)
        self.queues: dict[str, SessionQueue] = {}
        self.claim_lock = anyio.Lock()
        self.in_flight = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.stopping = False
        self.started_at = now_timestamp()
        self._status_written = 0.0
        self._lock_fd: int | None = None
        self._work: anyio.abc.TaskGroup | None = None
        # watchfiles' watch thread only looks at this event (it cannot be cancelled):
        # set it before cancelling intake, or stopping waits for its timeout.
        self._stop_watching = anyio.Event()

    # -- life cycle -----------------------------------------------------------------

    async def run(self) -> int:
        access = privacy.claim(self.layout.root)  # before anything is created there
        self.layout.create()
        self._lock_fd = statelock.acquire(self.layout.root)
        if access.warning:
            event(logging.WARNING, access.warning)
        try:
            # The signal receiver spans the whole run, agents' shutdown included: a stop
            # signal at any moment is ours to handle, never the default handler's (which
            # would kill the daemon and orphan agents still being stopped).
            async with anyio.create_task_group() as signals:
                intake_scope = anyio.CancelScope()
                grace_scope = anyio.CancelScope()
                signals.start_soon(self._handle_signals, intake_scope, grace_scope)
                web = None
                if self.config.web.listen is not None:  # [web] listen: the web view too
                    from cairnd.web.server import EmbeddedWeb, token_place  # uvicorn loads only then
                    web = EmbeddedWeb(self.config)
                    url = await signals.start(web.run)
                    event(logging.INFO, f"web view on {url} (its token: {token_place(self.config)})")
                async with Sessions(self.config) as sessions:
                    self._running = sessions
                    sessions.on_turn_start = self._status_soon
                    notice = fallback_notice(sessions.sandbox, [p.sandbox for p in self.config.agents.values()])
                    if notice:
                        event(logging.WARNING, notice)
                    recovered = await recovery.recover(
                        self.layout, sessions.registry, self.spool,
                        max_file_bytes=self.config.snapshot_max_file_bytes, limiter=sessions.io_limiter)
                    self._recovered_requests = recovered.requests
                    if self.config.fleet is not None:
                        from cairnd.fleet.host import FleetHost  # NATS and S3 load only then
                        self.fleet = FleetHost(self, self.config.fleet)  # self is its DaemonPort
                        sessions.url_repos = self.fleet.clone_repo
                        await self.fleet.connect()
                    try:
                        await self._serve(intake_scope, grace_scope)
                    finally:
                        if self.fleet is not None:
                            with anyio.CancelScope(shield=True):
                                await self.fleet.close()
                if web is not None:
                    await web.stop()
                signals.cancel_scope.cancel()
            event(logging.INFO, "cairnd stopped")
            return 0
        finally:
            status = self.layout.status
            status.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    async def _serve(self, intake_scope: anyio.CancelScope, grace_scope: anyio.CancelScope) -> None:
        async with anyio.create_task_group() as work:
            self._work = work
            if self.fleet is not None:
                work.start_soon(self.fleet.upkeep)
            with intake_scope:
                await self._intake()
            # Intake is stopped: nothing new is claimed. Let work finish, within a bound.
            self.stopping = True
            self.notifier.notify(STOPPING=1, STATUS="stopping: finishing work in flight")
            event(logging.INFO, f"stopping: {self.in_flight} request(s) in flight, "
                                f"waiting up to {self.config.stop_timeout_seconds:g} s")
            with grace_scope, anyio.move_on_after(self.config.stop_timeout_seconds):
                await self.idle.wait()
            if self.in_flight:
                event(logging.WARNING, f"recording {self.in_flight} request(s) in flight as interrupted")
            work.cancel_scope.cancel()

    async def _intake(self) -> None:
        async with anyio.create_task_group() as intake:
            watching = anyio.Event()
            intake.start_soon(self._watch, watching)
            with anyio.move_on_after(5):
                await watching.wait()
            if not watching.is_set():
                event(logging.WARNING, "inotify did not confirm the watch in 5 s; relying on rescans")
            # Requests recovery found in cur/: run again, before anything new.
            for claimed in self._recovered_requests:
                self.dispatch(claimed)
            self._recovered_requests = []
            await self.scan()
            intake.start_soon(self._rescan_loop)
            if self.fleet is not None:
                intake.start_soon(self.fleet.intake)
            intake.start_soon(self._watchdog_loop)
            self.notifier.notify(READY=1, STATUS=self._status_line())
            event(logging.INFO, f"cairnd ready: serving {self.layout.root} (pid {os.getpid()})")
            await self._write_status(force=True)

    async def _handle_signals(self, intake_scope: anyio.CancelScope, grace_scope: anyio.CancelScope) -> None:
        """SIGTERM/SIGINT: stop intake and let work finish within stop_timeout_seconds;
        a second one stops waiting. SIGHUP: reload agent profiles."""
        try:
            await self._receive_signals(intake_scope, grace_scope)
        finally:
            # The receiver closes only after every agent is stopped, and closing it
            # restored the default handlers. In the same breath (no await between),
            # ignore later stop signals at the kernel: nothing is left to stop, and the
            # exit status stays the one run() chose. (A Python-level handler would not
            # do: the interpreter resets those to the default while it finalizes.)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)

    async def _receive_signals(self, intake_scope: anyio.CancelScope, grace_scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                    continue
                name = signal.Signals(signum).name
                if self.stopping and grace_scope.cancel_called:
                    event(logging.INFO, f"received {name} again: already stopping agents")
                elif not intake_scope.cancel_called:
                    event(logging.INFO, f"received {name}")
                    self._stop_watching.set()
                    intake_scope.cancel()
                else:
                    event(logging.INFO, f"received {name} again: not waiting for work in flight")
                    grace_scope.cancel()

    def _reload(self) -> None:
        if self.config_loader is None or self._running is None:
            return
        try:
            fresh = self.config_loader()
        except Exception as exc:  # a broken file must not stop a running daemon
            event(logging.ERROR, f"SIGHUP: configuration not reloaded: {exc}")
            return
        self.sessions.reload_agents(fresh.agents, fresh.default_agent)
        event(logging.INFO, f"SIGHUP: agent profiles reloaded ({', '.join(sorted(fresh.agents))})")

    # -- intake ---------------------------------------------------------------------

    async def _watch(self, watching: anyio.Event) -> None:
        await doorbell.watch(self.spool.new, self.scan, watching, self._stop_watching)

    async def _rescan_loop(self) -> None:
        # inotify drops events silently when its queue overflows: scan on a timer too.
        while True:
            await anyio.sleep(self.config.rescan_seconds)
            await self.scan()
            await self._write_status()

    async def _watchdog_loop(self) -> None:
        interval = self.config.watchdog_seconds or watchdog_interval()
        if interval is None:
            return
        while True:
            # Sent from the event loop itself: if the loop is stuck, systemd notices.
            self.notifier.notify(WATCHDOG=1)
            await anyio.sleep(interval)

    async def scan(self) -> None:
        async with self.claim_lock:
            names = await anyio.to_thread.run_sync(self.spool.pending)
            for name in names:
                if self.stopping:
                    return
                claimed = await anyio.to_thread.run_sync(self.spool.claim, name)
                if claimed is not None:
                    self.dispatch(claimed)
        await self._write_status()

    # -- dispatch -------------------------------------------------------------------

    def dispatch(self, claimed: Claimed) -> None:
        """Schedule a claimed request (from the spool, or the fleet's stream)."""
        assert self._work is not None
        self._request_in()
        admitted = admit(claimed.data, claimed.problem)
        if admitted.request is None:
            self._work.start_soon(self._publish_refusal, claimed, admitted)
            return
        request = admitted.request
        work = Work(claimed, request, admitted.echo)
        event(logging.INFO, f"{request.kind} request received", request=claimed.request_id,
              session=getattr(request, "session", None))
        if self.fleet is not None and isinstance(claimed.origin, SpoolFile):
            # This host's spool is a door into the fleet: the request goes on the
            # stream, and its result comes back into done/ or failed/.
            self._work.start_soon(self._enter_fleet, claimed, request)
            return
        lane = lane_of(request)
        if lane == "now":
            self._work.start_soon(self._run, work)
            return
        session = getattr(request, "session")
        queue = self.queues.setdefault(session, SessionQueue())
        # After a rewind, forks and lands wait for it in the queue: it replaces the log
        # they would read.
        if lane == "beside" and not queue.rewinds_ahead:
            queue.forks_in_flight += 1
            self._work.start_soon(self._run_beside, work, queue)
        else:
            queue.rewinds_ahead += isinstance(request, RewindRequest)
            queue.items.append(work)
            if not queue.running:
                queue.running = True
                self._work.start_soon(self._drain_session, session, queue)

    def _handler(self, request: Request) -> Callable[..., Awaitable[Mapping[str, Any]]]:
        sessions = self.sessions
        handlers: dict[str, Callable[..., Awaitable[Mapping[str, Any]]]] = {
            "new": sessions.new, "prompt": sessions.prompt, "fork": sessions.fork, "rewind": sessions.rewind,
            "land": sessions.land, "cancel": sessions.cancel, "delete": sessions.delete, "check": sessions.check,
        }
        return handlers[request.kind]

    async def _enter_fleet(self, claimed: Claimed, request: Request) -> None:
        try:
            await self.fleet.door(claimed, request)
        finally:
            self._request_out()

    @property
    def sessions(self) -> Sessions:
        assert self._running is not None, "the daemon's sessions exist only while it runs"
        return self._running

    def start_soon(self, func: Callable[[], Awaitable[Any]]) -> None:
        """Start a task in the work group: it lives as long as the daemon's work."""
        assert self._work is not None
        self._work.start_soon(func)

    async def _drain_session(self, session_id: str, queue: SessionQueue) -> None:
        try:
            while queue.items:
                work = queue.items.popleft()
                if lane_of(work.request) == "exclusive":
                    # A fork that arrived before the delete (rewind) still sees its parent
                    # (as it was).
                    while queue.forks_in_flight:
                        await queue.forks_done.wait()
                try:
                    await self._run(work)
                finally:
                    queue.rewinds_ahead -= isinstance(work.request, RewindRequest)
        finally:
            queue.running = False
            if not queue.items and not queue.forks_in_flight:
                self.queues.pop(session_id, None)

    async def _run_beside(self, work: Work, queue: SessionQueue) -> None:
        try:
            await self._run(work)
        finally:
            queue.forks_in_flight -= 1
            if not queue.forks_in_flight:
                queue.forks_done.set()
                queue.forks_done = anyio.Event()

    async def _run(self, work: Work) -> None:
        claimed = work.claimed
        try:
            try:
                result = await self._handler(work.request)(work.request, Origin(claimed.request_id,
                                                                                  claimed.recovered))
            except CairnError as exc:
                with anyio.CancelScope(shield=True):
                    await self._publish(claimed, work.echo, work.request.kind, error=exc)
                return
            except anyio.get_cancelled_exc_class():
                # The daemon is stopping past its bound: the handler has recorded what
                # it could; the request stays in cur/ only if it never started a turn.
                raise
            except Exception as exc:
                event(logging.ERROR, f"internal error in {work.request.kind}: {exc!r}",
                      request=claimed.request_id, session=getattr(work.request, "session", None), exc_info=True)
                with anyio.CancelScope(shield=True):
                    await self._publish(claimed, work.echo, work.request.kind,
                                        error=CairnError("internal", internal_error_text(exc, self.layout.root)))
                return
            with anyio.CancelScope(shield=True):
                await self._publish(claimed, work.echo, work.request.kind, result=result)
        finally:
            self._request_out()

    async def _publish_refusal(self, claimed: Claimed, admitted: Admitted) -> None:
        try:
            assert admitted.error is not None
            await self._publish(claimed, admitted.echo, admitted.kind, error=admitted.error)
        finally:
            self._request_out()

    async def _publish(self, claimed: Claimed, echo: Any, kind: str | None, *,
                       result: Mapping[str, Any] | None = None, error: CairnError | None = None) -> None:
        """Answer a request by the way it came in."""
        body = result_body(claimed, echo, kind, finished_at=now_timestamp(), result=result, error=error)
        if isinstance(claimed.origin, SpoolFile):
            # A request whose JSON cannot travel in its result is kept beside it as <name>.raw.
            await self.write_result(claimed, body, keep_raw=echo is None)
        else:
            await claimed.origin.reply(claimed, body)
        level = logging.INFO if error is None else logging.WARNING
        what = "ok" if error is None else f"failed: {error.code}: {error.message}"
        session = (result or {}).get("session") if result else (echo.get("session") if isinstance(echo, dict) else None)
        event(level, f"{kind or 'request'} {what}", request=claimed.request_id,
              session=session if isinstance(session, str) else None)

    async def publish_local(self, claimed: Claimed, echo: Any, kind: str | None, error: CairnError) -> None:
        """A request of this host's spool answered here (the fleet could not take it)."""
        await self._publish(claimed, echo, kind, error=error)

    async def write_result(self, claimed: Claimed, body: dict[str, Any], *, keep_raw: bool = False) -> None:
        """Write a result into this host's spool; retried while the disk refuses."""
        delay = 0.05
        while True:
            try:
                await anyio.to_thread.run_sync(lambda: self.spool.publish(claimed, body, keep_raw=keep_raw))
                break
            except OSError as exc:
                # A full disk or an unwritable done/: the request stays in cur/ and we
                # retry; it is answered once the trouble clears, never dropped. When
                # stopping, cur/ keeps it for the next start to answer.
                event(logging.ERROR, f"cannot publish the result of {claimed.name}: {exc}; "
                                     + ("leaving it in cur/ for the next start" if self.stopping else "retrying"),
                      request=claimed.request_id)
                if self.stopping:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _request_in(self) -> None:
        """A request is in flight (claimed, not yet answered)."""
        self.in_flight += 1
        if self.idle.is_set():
            self.idle = anyio.Event()

    def _request_out(self) -> None:
        """A request is answered (or left for the next start): one fewer in flight."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()
        # Keep `cairnd status` current: throttled while busy, always once idle.
        if self._work is not None and not self.stopping:
            self._work.start_soon(self._write_status, self.in_flight == 0)

    def _status_soon(self) -> None:
        """status.json rewritten now (a turn started): not throttled, so a reader sees it."""
        if self._work is not None and not self.stopping:
            self._work.start_soon(self._write_status, True)

    # -- status -------------------------------------------------------------------------

    def _status_line(self) -> str:
        depths = self.spool.depths()
        turns = self._running.turns_in_flight if self._running else 0
        return f"queue: {depths['new']} new, {depths['cur']} in progress; {turns} turn(s) running"

    async def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_written < 1.0:
            return
        self._status_written = now
        line = self._status_line()
        self.notifier.notify(STATUS=line)
        status = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": now_timestamp(),
            "in_flight": self.in_flight,
            "turns_in_flight": self._running.turns_in_flight if self._running else 0,
            "active_agents": self._running.active_agents if self._running else 0,
            "stopping": self.stopping,
            "sandbox": self._running.sandbox.describe() if self._running else None,
        }
        path = self.layout.status
        try:
            await anyio.to_thread.run_sync(lambda: write_atomic(path, orjson.dumps(status), sync_dir=False))
        except OSError as exc:  # a full disk: the status file is a convenience, the daemon stays up
            event(logging.WARNING, f"cannot write {path}: {exc}")


def serve(config_file: str | None = None, verbose: bool = False) -> int:
    journal.setup(logging.DEBUG if verbose else logging.INFO)
    config = load_config(config_file)
    if config.web.listen is not None:
        from cairnd.web.server import check_listen
        from cairnd.web.token import web_token
        check_listen(config.web.listen, config.web.token)  # refused before anything starts
        web_token(config)  # made, or a bad token file refused, before anything starts too
    daemon = Daemon(config, config_loader=lambda: load_config(config_file))
    try:
        return anyio.run(daemon.run)
    except AlreadyRunning as exc:
        event(logging.ERROR, str(exc))
        return 1


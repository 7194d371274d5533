"""The spool's doorbell: what wakes intake when a request lands in `new/`.

On Linux an inotify descriptor (`cairnd.inotify`) sleeping in the event loop; where
that is not available, watchfiles (portable; it polls its queue from a thread). Either
way only the wake-up matters, never the names: the caller scans the folder, and scans
on a timer too, since a watch can drop events.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import watchfiles
from watchfiles._rust_notify import WatchfilesRustInternalError

from cairnd import inotify
from cairnd.journal import event


async def watch(folder: Path, ring: Callable[[], Awaitable[None]], watching: anyio.Event,
                stop: anyio.Event) -> None:
    """Call `ring()` whenever something arrives in `folder`, until cancelled (or, on the
    portable watcher, until `stop` is set: its thread cannot be cancelled). `watching` is
    set once arrivals are sure to ring, so the caller may scan and say READY."""
    if inotify.available():
        try:
            directory_watch = inotify.DirectoryWatch(folder)
        except OSError as exc:
            event(logging.WARNING, f"inotify unavailable ({exc}); watching with watchfiles")
        else:
            with directory_watch:
                # The watch exists once add_watch returned: anything renamed in from
                # now on rings.
                watching.set()
                while True:
                    await anyio.wait_readable(directory_watch.fd)
                    directory_watch.drain()
                    await ring()
    await _watch_portably(folder, ring, watching, stop)


async def _watch_portably(folder: Path, ring: Callable[[], Awaitable[None]], watching: anyio.Event,
                          stop: anyio.Event) -> None:
    probe = folder / f".cairnd-probe-{os.getpid()}"

    async def send_probe() -> None:
        # A dot name: ignored by the spool, but it proves the watcher sees the folder.
        await anyio.sleep(0.02)
        while not watching.is_set():
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
            await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_probe)
        while not stop.is_set():
            restart = False
            try:
                # watchfiles batches for 1.6 s by default; a spool wants milliseconds.
                async for _changes in watchfiles.awatch(
                    folder, watch_filter=None, debounce=50, step=1, recursive=False,
                    ignore_permission_denied=True, stop_event=stop, rust_timeout=1000,
                ):
                    if not watching.is_set():
                        watching.set()
                    await ring()
            except* WatchfilesRustInternalError as group:
                # A name it cannot decode (not UTF-8) ends its watch. Only the wake-up
                # matters, never the names: watch again, and ring for what it missed.
                event(logging.WARNING, f"watch of {folder} restarted: {group.exceptions[0]}")
                restart = True
            if restart:
                await anyio.sleep(0.05)
                await ring()

"""The spool's doorbell rings when a request is renamed into new/: through inotify on
Linux, and through watchfiles where inotify is not there (forced here)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from cairnd import inotify
from cairnd.spool import doorbell

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("portable", [False, True], ids=["inotify", "watchfiles"])
async def test_an_arrival_rings_once_the_watch_is_up(tmp_path: Path, portable: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if portable:
        monkeypatch.setattr(inotify, "available", lambda: False)
    elif not inotify.available():
        pytest.skip("inotify is Linux-only")
    new, tmp = tmp_path / "new", tmp_path / "tmp"
    new.mkdir()
    tmp.mkdir()
    rang = anyio.Event()

    async def ring() -> None:
        rang.set()

    watching, stop = anyio.Event(), anyio.Event()
    with anyio.fail_after(30):  # a bound against a hang, not a timing claim
        async with anyio.create_task_group() as tg:
            tg.start_soon(doorbell.watch, new, ring, watching, stop)
            await watching.wait()
            rang = anyio.Event()  # the portable watcher's own probe may have rung
            (tmp / "r1.json").write_bytes(b"{}")
            os.rename(tmp / "r1.json", new / "r1.json")
            await rang.wait()
            stop.set()
            tg.cancel_scope.cancel()

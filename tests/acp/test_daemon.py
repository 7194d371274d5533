"""A daemon and `cairnd acp` on one state directory (SPEC 18, docs/editors.md): the
editor's process is the one writer of the session it serves; the daemon refuses to
write it meanwhile (session_busy), forks it all the same, and takes it over from the
log once the editor has gone."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from acpkit import repo_at
from daemonproc import Daemon
from test_client import Editor, editor, opened

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_daemon_leaves_the_editors_session_to_it_then_takes_it_over(tmp_path):
    repo = repo_at(tmp_path)
    client, spawned = editor(tmp_path, repo)
    daemon = Daemon(tmp_path / "state")
    try:
        async with spawned as (conn, _proc):
            await opened(conn)
            session = (await conn.new_session(cwd=str(repo), mcp_servers=[])).session_id
            ed = Editor(conn, client)
            await ed.say(session, "write a.txt: one")
            await ed.say(session, "write b.txt: two")
            await anyio.to_thread.run_sync(daemon.start)
            busy = await anyio.to_thread.run_sync(daemon.request, {"kind": "prompt", "session": session,
                                                                    "text": "echo from the spool"})
            assert busy["status"] == "error" and busy["error"]["code"] == "session_busy", busy
            assert "cairnd acp" in busy["error"]["message"]
            fork = await anyio.to_thread.run_sync(daemon.request, {"kind": "fork", "session": session,
                                                                    "user_message_index": 1})
            assert fork["status"] == "ok", fork
            forked = Path(fork["result"]["worktree"])
            assert (forked / "a.txt").exists() and not (forked / "b.txt").exists()
            _, text = await ed.say(session, "echo still the editor's")
            assert "history=2" in text, text  # nothing of the daemon's reached the session
        # the editor has gone: the daemon writes the session, its agent given the history from the log
        taken = await anyio.to_thread.run_sync(daemon.request, {"kind": "prompt", "session": session,
                                                                 "text": "echo from the spool"})
        assert taken["status"] == "ok", taken
        log = (tmp_path / "state" / "sessions" / session / "log.ndjson").read_text()
        assert "history=3" in log  # the daemon's agent knew the editor's three turns
    finally:
        if daemon.proc is not None:
            assert daemon.stop() == 0, daemon.stderr()[-2000:]

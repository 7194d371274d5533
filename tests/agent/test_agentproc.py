"""One agent process: started in its worktree with the profile's environment, its
stderr kept in a bounded file, and stopped by the ladder (stdin EOF, SIGTERM, SIGKILL to
its whole process group) whatever it does. Real processes, no agent protocol needed."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from cairnd.agent.acpclient import WorktreeClient
from cairnd.agent.process import (
    STDERR_TAIL_LINES,
    AgentProcess,
    Launch,
    StderrFile,
    describe_exit,
    host_agent,
    spawn_agent,
)
from cairnd.errors import CairnError
from cairnd.sessionlog.file import SessionLog
from cairnd.agent.tap import Tap

pytestmark = pytest.mark.anyio


def launch(tmp_path: Path, script: str, stop_timeout: float = 0.3) -> Launch:
    return Launch(session_id="s1", name="test", command=(sys.executable, "-c", script), cwd=tmp_path,
                  env={"CAIRND_AGENTPROC_TEST": "yes"}, stderr_path=tmp_path / "s1" / "agent.stderr",
                  stop_timeout=stop_timeout)


@asynccontextmanager
async def hosted(tmp_path: Path, script: str, stop_timeout: float = 0.3) -> AsyncIterator[AgentProcess]:
    with SessionLog(tmp_path / "s1" / "log.ndjson") as log:
        async with anyio.create_task_group() as tg:
            client = WorktreeClient(tmp_path, "allow_once", None)
            agent = await tg.start(host_agent, launch(tmp_path, script, stop_timeout), client, Tap(log))
            yield agent
            agent.stop()
            await agent.exited.wait()


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# -- the functional core ----------------------------------------------------------------


def test_an_exit_is_told_with_the_last_stderr_lines() -> None:
    many = "\n".join(f"line {n}" for n in range(50))
    told = describe_exit("claude", 1, many)
    assert told.startswith("agent 'claude' exited with status 1; its last stderr lines:\n")
    assert told.count("\n") == STDERR_TAIL_LINES and told.endswith("line 49") and "line 29\n" not in told
    assert describe_exit("x", -9, "") == "agent 'x' was killed by signal 9 (no stderr output)"
    assert describe_exit("x", None, "").startswith("agent 'x' stopped answering")


def test_the_stderr_file_keeps_the_latest_output_within_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "agent.stderr"
    path.write_bytes(b"--- starting\n")
    sink = StderrFile(path, keep=1000)
    for n in range(500):
        sink.write(f"stderr line {n:04d}\n".encode())
        assert path.stat().st_size <= 2000
    sink.close()
    text = path.read_text()
    assert len(text) >= 1000 - len("stderr line 0000\n") and text.endswith("stderr line 0499\n")
    assert text.startswith("stderr line ")  # cut at a line start


# -- real processes ---------------------------------------------------------------------


@pytest.mark.slow
async def test_an_agent_that_ignores_eof_and_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(child.pid, file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    async with hosted(tmp_path, script) as agent:
        while not agent.stderr_tail.strip():
            await anyio.sleep(0.02)
        grandchild = int(agent.stderr_tail.split()[0])
    assert agent.process.returncode == -9
    for _ in range(200):  # the grandchild is reaped by init once killed
        if not alive(grandchild):
            break
        await anyio.sleep(0.02)
    assert not alive(grandchild)


async def test_an_agent_retired_between_turns_may_finish_writing_its_own_state(tmp_path: Path) -> None:
    # As claude-agent-acp after a cancel: it never exits on EOF, while its Claude Code
    # child is still busy with the turn it ended and writes its record of it last.
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time\\n"
        "end = time.monotonic() + 1.5\\n"
        "while time.monotonic() < end: pass\\n"
        "open(\\'written.txt\\', \\'w\\').write(\\'done\\')\\n"
        "time.sleep(60)'])\n"
        "print('up', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    async with hosted(tmp_path, script, stop_timeout=30) as agent:
        while not agent.stderr_tail.strip():
            await anyio.sleep(0.02)
        agent.stop(between_turns=True)
        await agent.exited.wait()
    assert (tmp_path / "written.txt").read_text() == "done"  # not cut short by the ladder
    assert agent.process.returncode == -15  # then stopped by SIGTERM: it never exits on EOF


async def test_an_agent_gets_the_worktree_and_the_profile_env_and_its_stderr_is_kept(tmp_path: Path) -> None:
    script = ("import os, sys\n"
              "print(os.getcwd(), os.environ['CAIRND_AGENTPROC_TEST'], file=sys.stderr)\n"
              "sys.stderr.write('x' * 3_000_000 + '\\nthe end\\n')\n")
    async with hosted(tmp_path, script) as agent:
        await agent.exited.wait()
    assert agent.process.returncode == 0
    assert agent.describe_exit().endswith("the end")
    kept = (tmp_path / "s1" / "agent.stderr").read_bytes()
    assert kept.endswith(b"\nthe end\n") and len(kept) <= 2 * (1 << 20) + 4096


async def test_an_agent_that_cannot_be_started_is_agent_failed(tmp_path: Path) -> None:
    missing = Launch(session_id="s1", name="missing", command=(str(tmp_path / "no-such-agent"),), cwd=tmp_path,
                     env={}, stderr_path=tmp_path / "s1" / "agent.stderr", stop_timeout=1.0)
    with pytest.raises(CairnError) as failed:
        await spawn_agent(missing)
    assert failed.value.code == "agent_failed" and "cannot start agent 'missing'" in failed.value.message

"""SPEC 6 and 7 through the real daemon: a subprocess on a temp state dir, driven only
by dropping files into its spool."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemonproc import Daemon
from gitrepos import git_text


pytestmark = pytest.mark.repo(files={"README.md": "hello\n", "src/app.py": "print('hi')\n"})


@pytest.fixture(scope="module")
def daemon(shared_daemon: Daemon) -> Daemon:
    """The tests of this module that take `daemon` share one: each adds sessions of its
    own and none stops it. Those that stop or restart a daemon start their own."""
    return shared_daemon


@pytest.mark.slow
def test_new_prompt_fork_cancel_delete(daemon: Daemon, repo: Path):
    new = daemon.ok({"kind": "new", "repo": str(repo), "title": "demo"})
    session, worktree = new["session"], Path(new["worktree"])
    assert worktree.is_dir() and (worktree / "README.md").read_text() == "hello\n"
    assert new["headSha"] == git_text(repo, "rev-parse", "HEAD")

    first = daemon.ok({"kind": "prompt", "session": session, "text": "write a.txt: one\ncommit: add a"})
    assert first["turn"] == 0 and first["stopReason"] == "end_turn"
    second = daemon.ok({"kind": "prompt", "session": session, "text": "write b.txt: two\nwrite a.txt: changed"})
    assert second["turn"] == 1 and second["checkpoint"]["dirty"] is True
    daemon.ok({"kind": "prompt", "session": session, "text": "delete b.txt"})

    fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": 2})
    assert fork["parent"] == session and fork["state"] == "checkpoint"
    assert fork["prefill"] == "delete b.txt"
    fork_tree = Path(fork["worktree"])
    assert (fork_tree / "b.txt").read_text() == "two\n"
    assert (fork_tree / "a.txt").read_text() == "changed\n"
    assert not (worktree / "b.txt").exists()
    assert fork["title"] == "demo (fork 1)"

    answer = daemon.ok({"kind": "prompt", "session": fork["session"], "text": "hello"})
    assert answer["turn"] == 2

    assert daemon.ok({"kind": "cancel", "session": session}) == {"session": session, "cancelled": False}
    deleted = daemon.ok({"kind": "delete", "session": session})
    assert deleted["session"] == session and not worktree.exists()
    gone = daemon.request({"kind": "prompt", "session": session, "text": "x"})
    assert gone["status"] == "error" and gone["error"]["code"] == "session_deleted"
    # The fork lives on without its parent.
    assert daemon.ok({"kind": "prompt", "session": fork["session"], "text": "still here"})["turn"] == 3


@pytest.mark.slow
def test_fork_with_prompt_runs_the_first_turn(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write x.txt: 1"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "write x.txt: 2"})
    fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1, "prompt": "append x.txt: 3"})
    assert fork["stopReason"] == "end_turn" and fork["turn"] == 1
    assert (Path(fork["worktree"]) / "x.txt").read_text() == "1\n3\n"
    assert "history=1" in (Path(fork["log"]).read_text())


def test_cancel_acts_on_the_turn_in_flight(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    slow = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 60"})
    deadline = time.monotonic() + 30
    while True:
        cancel = daemon.ok({"kind": "cancel", "session": session})
        if cancel["cancelled"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert cancel["cancelled"] is True
    result = daemon.wait(slow, timeout=30)
    assert result["status"] == "ok" and result["result"]["stopReason"] == "cancelled"


@pytest.mark.parametrize("k, code", [(-1, "fork_out_of_range"), (2, "fork_out_of_range"),
                                     (10**6, "fork_out_of_range"), (1, "fork_in_sub_session")])
def test_fork_errors(daemon: Daemon, repo: Path, k: int, code: str):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "delegate: look around"})["session"]
    result = daemon.request({"kind": "fork", "session": session, "user_message_index": k})
    assert result["status"] == "error" and result["error"]["code"] == code, result
    assert str(k) in result["error"]["message"]


def test_fork_of_unknown_and_deleted_sessions(daemon: Daemon, repo: Path):
    result = daemon.request({"kind": "fork", "session": "nope", "user_message_index": 0})
    assert result["error"]["code"] == "unknown_session"
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    daemon.ok({"kind": "delete", "session": session})
    result = daemon.request({"kind": "fork", "session": session, "user_message_index": 0})
    assert result["error"]["code"] == "session_deleted"


def test_fork_with_a_collected_commit_is_commit_missing(daemon: Daemon, repo: Path, tmp_path: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a: 1"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "write a: 2"})
    log = daemon.state / "sessions" / session / "log.ndjson"
    text = log.read_text()
    head = git_text(repo, "rev-parse", "HEAD")
    log.write_text(text.replace(head, "0" * 40))
    result = daemon.request({"kind": "fork", "session": session, "user_message_index": 1})
    assert result["error"]["code"] == "commit_missing", result


def test_new_errors(daemon: Daemon, repo: Path, tmp_path: Path):
    (tmp_path / "plain").mkdir()
    cases = [
        ({"kind": "new", "repo": str(tmp_path / "missing")}, "repo_not_found"),
        ({"kind": "new", "repo": str(tmp_path / "plain")}, "not_a_git_repo"),
        ({"kind": "new", "repo": str(repo), "ref": "no-such-branch"}, "bad_ref"),
        ({"kind": "new", "repo": str(repo), "agent": "nobody"}, "agent_unknown"),
        ({"kind": "new", "repo": "relative"}, "bad_request"),
    ]
    for request, code in cases:
        result = daemon.request(request)
        assert result["status"] == "error" and result["error"]["code"] == code, (request, result)


@pytest.mark.slow
def test_crashing_agent_is_agent_failed_and_the_session_goes_on(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a: 1"})["session"]
    result = daemon.request({"kind": "prompt", "session": session, "text": "write b: 2\ncrash"})
    assert result["error"]["code"] == "agent_failed"
    again = daemon.ok({"kind": "prompt", "session": session, "text": "hello"})
    assert again["turn"] == 2


def test_requests_of_one_session_run_in_arrival_order(daemon: Daemon, repo: Path):
    new = daemon.ok({"kind": "new", "repo": str(repo)})
    ids = [daemon.drop({"kind": "prompt", "session": new["session"], "text": f"append log.txt: {n}"})
           for n in range(5)]
    turns = [daemon.wait(i)["result"]["turn"] for i in ids]
    assert turns == [0, 1, 2, 3, 4]
    assert (Path(new["worktree"]) / "log.txt").read_text() == "0\n1\n2\n3\n4\n"


def test_duplicate_ids_keep_the_first_result(daemon: Daemon, repo: Path):
    first = daemon.drop({"kind": "cancel", "session": "abc"}, request_id="same")
    assert daemon.wait(first)["error"]["code"] == "unknown_session"
    daemon.drop({"kind": "new", "repo": str(repo)}, request_id="same")
    dup = daemon.wait("same", name="same.dup-1.json")
    assert dup["error"]["code"] == "duplicate_id" and dup["request"]["kind"] == "new"
    assert daemon.result("same.json")["error"]["code"] == "unknown_session"


def test_requests_dropped_while_down_are_picked_up(tmp_path: Path, repo: Path):
    daemon = Daemon(tmp_path / "state")
    (daemon.spool / "tmp").mkdir(parents=True)
    (daemon.spool / "new").mkdir(parents=True)
    rid = daemon.drop({"kind": "new", "repo": str(repo)})
    daemon.start()
    try:
        assert daemon.wait(rid)["status"] == "ok"
    finally:
        assert daemon.stop() == 0


def test_sigterm_exits_zero_and_says_stopping(start_daemon: Callable[..., Daemon]):
    daemon = start_daemon()
    assert daemon.proc is not None
    daemon.proc.terminate()
    daemon.wait_for("STOPPING=1")
    assert daemon.stop() == 0


def _agent_pids(state: Path) -> set[int]:
    """Processes whose working directory is inside the state directory: the agents."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(state)):
                pids.add(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_stop_signals_at_any_moment_of_a_stop_exit_zero_leaving_no_agent(
        tmp_path: Path, repo: Path, signame: str):
    """A second, third... stop signal while the daemon is stopping (work finishing, then
    agents being stopped) is handled, never left to the default handler."""
    import signal as signals

    daemon = Daemon(tmp_path / "state", {"stop_timeout_seconds": 2}).start()
    sessions = [daemon.ok({"kind": "new", "repo": str(repo), "prompt": "hello"})["session"]
                for _ in range(3)]
    daemon.drop({"kind": "prompt", "session": sessions[0], "text": "sleep: 30"})
    deadline = time.monotonic() + 30
    while len(_agent_pids(daemon.state)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    agents = _agent_pids(daemon.state)
    assert len(agents) >= 3
    assert daemon.proc is not None
    sig = getattr(signals, signame)
    daemon.proc.send_signal(sig)
    # Keep signalling, 50 ms apart, through every phase of the stop until it exits.
    while daemon.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            daemon.proc.send_signal(sig)
        except ProcessLookupError:
            break
    assert daemon.proc.wait(30) == 0, daemon.stderr()
    daemon.close_socket()
    alive = {pid for pid in agents if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()}
    assert not alive, f"agents left running: {alive}"


@pytest.mark.slow
def test_sighup_reloads_agent_profiles(tmp_path: Path, repo: Path):
    import signal as signals
    import sys

    from daemonproc import write_config

    daemon = Daemon(tmp_path / "state").start()
    try:
        before = daemon.request({"kind": "new", "repo": str(repo), "agent": "second"})
        assert before["error"]["code"] == "agent_unknown"
        write_config(daemon.config, {**daemon.settings, "agents": {
            "second": {"command": [sys.executable, "-m", "cairnd.agents.reference"]}}})
        daemon.proc.send_signal(signals.SIGHUP)
        deadline = time.monotonic() + 10
        while "agent profiles reloaded" not in daemon.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        after = daemon.ok({"kind": "new", "repo": str(repo), "agent": "second", "prompt": "hello"})
        assert after["stopReason"] == "end_turn"
        log = Path(after["log"]).read_text()
        assert '"adapter":"second"' in log
    finally:
        assert daemon.stop() == 0


def test_daemon_log_lines_carry_priority_and_ids(start_daemon: Callable[..., Daemon], repo: Path):
    daemon = start_daemon()  # its own: every line of its stderr is checked
    rid = daemon.drop({"kind": "new", "repo": str(repo)})
    session = daemon.wait(rid)["result"]["session"]
    # The line about a result is written just after the result file: wait for it.
    deadline = time.monotonic() + 30
    while f"session={session}" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = daemon.stderr().splitlines()
    assert all(line.startswith("<") and line[1].isdigit() and line[2] == ">" for line in lines), lines
    assert any(f"request={rid}" in line and f"session={session}" in line for line in lines)


def test_a_second_daemon_on_the_same_state_dir_refuses(daemon: Daemon):
    second = Daemon(daemon.state)
    second.config = daemon.config
    second.start(wait_ready=False)
    assert second.proc.wait(30) == 1
    assert "already serving" in second.stderr()

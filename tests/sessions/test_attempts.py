"""SPEC 19 attempts: many tries from one moment, each exact at the cut plus its own turn,
a check in each recorded in its log, compare, and all or none."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from cairnd.errors import CairnError
from cairnd.sessionlog.entries import method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from cairnd.sessions import attempts
from cairnd.spool.requests import ForkRequest
from cairnd.state.layout import StateLayout
from cairnd.state.registry import Registry
from daemonproc import Daemon
from gitrepos import index_state, make_repo, tree_state

SECOND = {"command": [sys.executable, "-m", "cairnd.agents.reference"]}


@pytest.fixture(scope="module")
def daemon(start_module_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon with a second agent profile beside the reference one, shared by the tests
    that take it: each makes a repository and sessions of its own."""
    return start_module_daemon({"agents": {"second": SECOND}})


@pytest.fixture
def own_daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """The same, for a test that counts every session the daemon has."""
    return start_daemon({"agents": {"second": SECOND}})


def two_turns(daemon: Daemon, tmp_path: Path) -> tuple[str, Path]:
    """A session of two turns whose tree is dirty at the cut (message 1)."""
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n", "keep.txt": "k\n"})
    made = daemon.ok({"kind": "new", "repo": str(repo), "title": "Plan", "prompt": "write a.txt: 1\ndelete keep.txt"})
    daemon.ok({"kind": "prompt", "session": made["session"], "text": "write a.txt: 2\nwrite later.txt: x"})
    return made["session"], repo


def check_entries(daemon: Daemon, session: str) -> list[dict]:
    log = StateLayout(daemon.state).log_path(session)
    found = []
    for _, line in iter_lines(log):
        message = parse_message(line)
        if message and method_of(message) == "_cairnd/check":
            found.append(message["params"])
    return found


# ------------------------------------------------------------------------------- pure parts


def test_tries_of_each_form():
    base = dict(session="s1", user_message_index=1)
    assert attempts.tries_of(ForkRequest(**base, count=2, prompt="p")) == [attempts.Try("p", None)] * 2
    assert attempts.tries_of(ForkRequest(**base, prompts=("a", "b"))) == [attempts.Try("a", None),
                                                                         attempts.Try("b", None)]
    assert attempts.tries_of(ForkRequest(**base, agents=("x", "y"), prompt="p")) == [attempts.Try("p", "x"),
                                                                                    attempts.Try("p", "y")]
    assert attempts.tries_of(ForkRequest(**base, prompts=("a", "b"), agents=("x", "y"))) == [
        attempts.Try("a", "x"), attempts.Try("b", "y")]


def test_try_titles_go_on_from_the_tries_already_made_at_the_cut():
    assert attempts.try_titles("Plan", [], 3) == ["Plan (try 1)", "Plan (try 2)", "Plan (try 3)"]
    assert attempts.try_titles("Plan", ["Plan (try 2)", "Plan (fork 4)", "Other (try 9)"], 2) == [
        "Plan (try 3)", "Plan (try 4)"]


# ------------------------------------------------------------------------------- through the daemon


@pytest.mark.slow
def test_three_tries_from_message_1_each_exact_at_the_cut_plus_its_own_change(daemon, tmp_path: Path):
    session, _repo = two_turns(daemon, tmp_path)
    oracle = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})  # the cut, as one fork
    at_cut = tree_state(Path(oracle["worktree"])), index_state(Path(oracle["worktree"]))
    prompts = ["write c.txt: one", "write c.txt: two", "append a.txt: three"]
    result = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1, "prompts": prompts},
                       timeout=120)
    assert result["parent"] == session and result["user_message_index"] == 1
    tries = result["sessions"]
    assert [t["title"] for t in tries] == ["Plan (try 1)", "Plan (try 2)", "Plan (try 3)"]
    assert len({t["session"] for t in tries}) == 3 and all(t["turn"] == 1 for t in tries)
    assert all(t["prefill"].startswith("write a.txt: 2") and t["state"] == "checkpoint" for t in tries)
    files, _index = at_cut
    for attempt, own in zip(tries, [{b"c.txt": "one"}, {b"c.txt": "two"}, {b"a.txt": "1\nthree"}]):
        now = tree_state(Path(attempt["worktree"]))
        assert {path: value for path, value in now.items() if path not in own} == \
            {path: value for path, value in files.items() if path not in own}
        for path, text in own.items():
            assert (Path(attempt["worktree"]) / path.decode()).read_text() == text + "\n"
    assert b"later.txt" not in tree_state(Path(tries[0]["worktree"]))
    # More tries at the same cut go on counting.
    more = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1, "count": 1})
    assert [t["title"] for t in more["sessions"]] == ["Plan (try 4)"] and "turn" not in more["sessions"][0]


@pytest.mark.slow
def test_tries_with_two_agent_profiles_and_a_check_that_passes_in_one_and_fails_in_the_other(daemon, tmp_path):
    session, _repo = two_turns(daemon, tmp_path)
    result = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1,
                        "prompts": ["write pass.txt: yes", "write other.txt: no"], "agents": ["reference", "second"],
                        "check": ["sh", "-c", "echo checking; test -f pass.txt"]}, timeout=120)
    first, second = result["sessions"]
    assert first["check"]["exit"] == 0 and second["check"]["exit"] == 1
    assert first["check"]["output"] == second["check"]["output"] == "checking\n"
    assert first["check"]["turns"] == second["check"]["turns"] == 2
    registry = Registry(StateLayout(daemon.state).db)
    assert [registry.get(t["session"]).agent for t in (first, second)] == ["reference", "second"]
    for attempt, code in ((first, 0), (second, 1)):
        (entry,) = check_entries(daemon, attempt["session"])
        assert entry["command"] == ["sh", "-c", "echo checking; test -f pass.txt"]
        assert entry["exit"] == code and entry["turns"] == 2 and entry["output"] == "checking\n"
        assert entry["worktreeSha"] == attempt["checkpoint"]["worktreeSha"]
    # compare: the tries side by side (--siblings), as SPEC 19's JSON.
    out = subprocess.run([sys.executable, "-m", "cairnd", "-c", str(daemon.config), "compare", "--json",
                          "--siblings", first["session"]], capture_output=True, check=True)
    compared = orjson.loads(out.stdout)
    assert set(compared) == {"parent", "user_message_index", "sessions"}
    assert compared["parent"] == session and compared["user_message_index"] == 1
    rows = {row["session"]: row for row in compared["sessions"]}
    assert set(rows) == {first["session"], second["session"]}
    one = rows[first["session"]]
    assert set(one) == {"session", "title", "agent", "turns", "state", "files", "check"}
    assert one["files"] == [{"path": "pass.txt", "status": "A", "added": 1, "removed": 0}]
    assert one["check"] == {"command": ["sh", "-c", "echo checking; test -f pass.txt"], "exit": 0, "turns": 2}
    assert rows[second["session"]]["agent"] == "second" and rows[second["session"]]["check"]["exit"] == 1


@pytest.mark.slow
def test_check_records_exit_output_tail_and_a_timeout(daemon, tmp_path: Path):
    session, _repo = two_turns(daemon, tmp_path)
    big = daemon.ok({"kind": "check", "session": session,
                     "command": [sys.executable, "-c", "import sys; sys.stdout.write('x' * 70000 + 'END'); sys.exit(3)"]})
    assert big["exit"] == 3 and big["timed_out"] is False
    assert len(big["output"].encode()) == 64 * 1024 and big["output"].endswith("END")
    slow = daemon.ok({"kind": "check", "session": session, "command": ["sleep", "30"], "timeout": 0.5})
    assert slow["exit"] is None and slow["timed_out"] is True
    entries = check_entries(daemon, session)
    assert [(e["exit"], e["timedOut"], e["turns"]) for e in entries] == [(3, False, 2), (None, True, 2)]


def test_check_is_confined_as_the_agent_is(daemon, tmp_path: Path):
    from cairnd.agent.confinement import detect
    if not detect().available:
        pytest.skip("no Landlock on this kernel: agents and checks run unconfined")
    session, repo = two_turns(daemon, tmp_path)
    escaped = daemon.ok({"kind": "check", "session": session,
                         "command": ["sh", "-c", f"echo inside > inside.txt; echo owned > {repo}/escaped.txt"]})
    assert escaped["exit"] != 0 and not (repo / "escaped.txt").exists()
    worktree = daemon.state / "worktrees" / session / "project"
    assert (worktree / "inside.txt").read_text() == "inside\n"


@pytest.mark.slow
def test_check_on_a_deleted_session_and_bad_attempts_fail_naming_the_value(own_daemon, tmp_path: Path):
    daemon = own_daemon
    session, _repo = two_turns(daemon, tmp_path)
    unknown = daemon.request({"kind": "fork", "session": session, "user_message_index": 1,
                              "agents": ["reference", "nosuch"]})
    assert unknown["error"]["code"] == "agent_unknown" and "'nosuch'" in unknown["error"]["message"]
    ranged = daemon.request({"kind": "fork", "session": session, "user_message_index": 7, "count": 2})
    assert ranged["error"]["code"] == "fork_out_of_range"
    missing = daemon.request({"kind": "check", "session": session, "command": ["no-such-program-here"]})
    assert missing["error"]["code"] == "bad_request" and "no-such-program-here" in missing["error"]["message"]
    assert {row.id for row in Registry(StateLayout(daemon.state).db).sessions(("ready", "creating"))} == {session}
    daemon.ok({"kind": "delete", "session": session})
    gone = daemon.request({"kind": "check", "session": session, "command": ["true"]})
    assert gone["error"]["code"] == "session_deleted"


# ------------------------------------------------------------------------------- all or none

CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from cairnd.sessions import attempts
    from cairnd.state.layout import StateLayout
    from cairnd.state.registry import Registry
    state, session, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    def crash(step):
        if step == stop:
            os._exit(9)
    attempts._reached = crash
    layout = StateLayout(Path(state))
    registry = Registry(layout.db)
    parent = registry.get(session)
    attempts.make_tries(layout, registry, parent, 1, [attempts.Try(None, None)] * 3, request_id="r1",
                        max_file_bytes=1 << 20)
""")


@pytest.mark.parametrize("step", attempts.STEPS)
def test_a_crash_while_making_tries_leaves_none_after_recovery(tmp_path: Path, step: str):
    from cairnd.serve import recovery
    from test_forker import Parent
    parent = Parent(tmp_path, linked=True)
    parent.turn("edit a", lambda: (parent.repo / "a.txt").write_text("a1\n"))
    parent.turn("edit more", lambda: (parent.repo / "a.txt").write_text("a2\n"))
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(parent.layout.root), parent.id, step],
                          capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    registry = Registry(parent.layout.db)
    assert len(registry.sessions(("creating",))) == 3
    done = recovery.Recovered()
    recovery.finish_creations(parent.layout, registry, done, 1 << 20)
    assert len(done.rolled_back) == 3
    assert [row.id for row in registry.sessions(("ready", "creating"))] == [parent.id]
    assert sorted(p.name for p in (parent.layout.root / "worktrees").iterdir()) == [parent.id]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=parent.source, capture_output=True, text=True).stdout
    assert len(worktrees.splitlines()) == 2  # the repository's own and the session's


def test_a_failure_while_building_one_try_rolls_every_try_back(tmp_path: Path, monkeypatch):
    from cairnd.sessions import forker
    from test_forker import Parent
    parent = Parent(tmp_path, linked=True)
    parent.turn("edit a", lambda: (parent.repo / "a.txt").write_text("a1\n"))
    real = forker.write_initial_log
    calls = []

    def refuse_the_second(layout, session_id, *args, **kwargs):
        calls.append(session_id)
        if len(calls) == 2:
            raise CairnError("internal", "the disk refused")
        return real(layout, session_id, *args, **kwargs)
    monkeypatch.setattr(forker, "write_initial_log", refuse_the_second)
    with pytest.raises(CairnError):
        attempts.make_tries(parent.layout, parent.registry, parent.row, 1, [attempts.Try(None, None)] * 3,
                            request_id="r1", max_file_bytes=1 << 20)
    assert [row.id for row in parent.registry.sessions(("ready", "creating"))] == [parent.id]
    assert sorted(p.name for p in (parent.layout.root / "worktrees").iterdir()) == [parent.id]
    assert sorted(p.name for p in (parent.layout.root / "sessions").iterdir()) == [parent.id]


def test_land_prompt_land_again_is_a_fast_forward_through_the_daemon(daemon, tmp_path: Path):
    from gitrepos import git_text
    session, repo = two_turns(daemon, tmp_path)
    first = daemon.ok({"kind": "land", "session": session, "branch": "pr"})
    daemon.ok({"kind": "prompt", "session": session, "text": "write more.txt: m\ncommit: the agent's own"})
    again = daemon.ok({"kind": "land", "session": session, "branch": "pr"})
    assert again["previous"] == first["commit"] and again["moved"] == "fast-forward" and again["unchanged"] is False
    assert git_text(repo, "rev-parse", f"{again['commit']}^1") == first["commit"]
    assert git_text(repo, "show", "pr:more.txt") == "m"
    same = daemon.ok({"kind": "land", "session": session, "branch": "pr"})
    assert same["unchanged"] is True and git_text(repo, "rev-parse", "pr") == again["commit"]
    back = daemon.request({"kind": "land", "session": session, "branch": "pr", "turn": 1})
    assert back["error"]["code"] == "branch_exists"


@pytest.mark.slow
def test_the_command_line_forks_tries_checks_and_compares(daemon, tmp_path: Path):
    session, _repo = two_turns(daemon, tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cairnd", "-c", str(daemon.config), *args],
                              capture_output=True, text=True, timeout=120)

    made = cli("fork", session, "--at", "1", "-n", "2", "-m", "write x.txt: 1", "--json",
               "--check", "--", "sh", "-c", "test -f x.txt")
    assert made.returncode == 0, made.stderr
    tries = orjson.loads(made.stdout)["result"]["sessions"]
    assert [t["title"] for t in tries] == ["Plan (try 1)", "Plan (try 2)"]
    assert all(t["check"]["exit"] == 0 and t["turn"] == 1 for t in tries)
    pairs = cli("fork", session, "--at", "1", "--agent", "second", "--agent", "reference", "-m", "a", "-m", "b",
                "--json")
    assert pairs.returncode == 0, pairs.stderr
    assert [t["title"] for t in orjson.loads(pairs.stdout)["result"]["sessions"]] == ["Plan (try 3)", "Plan (try 4)"]
    failing = cli("check", tries[0]["session"], "--", "sh", "-c", "echo nope; exit 3")
    assert failing.returncode == 3 and "nope" in failing.stdout and "failed (exit 3)" in failing.stdout
    table = cli("compare", "--siblings", tries[0]["session"])
    assert table.returncode == 0 and "Plan (try 4)" in table.stdout and "exit 3 @2" in table.stdout
    usage = cli("fork", session, "--at", "1", "-n", "2", "--check")
    assert usage.returncode == 2 and "--check needs the command" in usage.stderr
    bad = cli("fork", session, "--at", "1", "-n", "17")
    assert bad.returncode == 1 and "count 17 is out of range" in bad.stderr

"""SPEC 16 through the real daemon: the reference agent's `run:` line, confined by Landlock
to its worktree, the repository's git directory, its HOME and its TMPDIR."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cairnd.agent import sandbox
from cairnd.agent.confinement import Confinement, carve, git_paths
from daemonproc import Daemon
from gitrepos import git_text, make_repo

landlock = pytest.mark.skipif(sandbox.abi_version() < 1, reason="this kernel offers no Landlock")


# -- the rules, as data ---------------------------------------------------------------------


def test_carve_grants_a_tree_less_the_protected_paths_inside_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for d in (".cache/x", ".local/share", ".local/state/cairnd/sessions", ".local/state/other", "src/repo/.git"):
        (home / d).mkdir(parents=True)
    (home / ".bashrc").write_text("")
    (home / "link").symlink_to(home / ".local/state/cairnd")
    state, source = home / ".local/state/cairnd", home / "src/repo"
    assert sorted(carve(home, [state, source])) == sorted([
        home / ".bashrc", home / ".cache", home / ".local/share", home / ".local/state/other"])
    assert carve(home, [tmp_path / "elsewhere"]) == [home]
    # A tree inside a protected one was granted on purpose (HOME under the state dir).
    assert carve(state / "sessions", [state]) == [state / "sessions"]


def test_git_paths_of_a_linked_worktree_and_of_the_main_one(tmp_path: Path) -> None:
    common = tmp_path / "repo/.git"
    assert git_paths(common / "worktrees/wt", common) == [
        common / "objects", common / "refs", common / "logs", common / "worktrees/wt"]
    assert git_paths(common, common) == [common]


def test_wrap_names_every_writable_place_and_gives_a_private_tmpdir(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "home/src/project", {"README.md": "hello\n"})
    state, home = tmp_path / "home/.local/state/cairnd", tmp_path / "home"
    worktree = state / "worktrees/s1/project"
    worktree.parent.mkdir(parents=True)
    git_text(repo, "worktree", "add", "-q", "--detach", str(worktree))
    (home / ".cache").mkdir()
    confinement = Confinement(worktree=worktree, source=repo, state_dir=state, tmpdir=state / "tmp/s1",
                              agent_dir=state / "agents/reference", git_dir=repo / ".git/worktrees/project",
                              common_dir=repo / ".git")
    argv, env = confinement.wrap(["sh", "-c", "true"], {"HOME": str(home), "PATH": os.environ["PATH"]})
    assert argv[-4:] == ["--", "sh", "-c", "true"]
    written = {Path(argv[i + 1]) for i, arg in enumerate(argv) if arg == "--write"}
    common = repo / ".git"
    assert {worktree, common / "objects", common / "refs", common / "logs", common / "worktrees/project",
            state / "tmp/s1", state / "agents/reference", home / ".cache", Path("/dev/null")} <= written
    assert not {state, repo, home, common, tmp_path} & written
    assert env["TMPDIR"] == env["TMP"] == env["TEMP"] == str(state / "tmp/s1")
    assert stat.S_IMODE((state / "tmp/s1").stat().st_mode) == 0o700
    with pytest.raises(FileNotFoundError):
        confinement.wrap(["no-such-agent-xyz"], {"HOME": str(home), "PATH": os.environ["PATH"]})


# -- through the daemon -------------------------------------------------------------------------


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    """A user's home holding the state directory (the default place) and the checkout."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    return {"home": home, "state": home / ".local/state/cairnd", "agent_home": tmp_path / "agent-home",
            "repo": make_repo(home / "src/project", {"README.md": "hello\n"})}


@pytest.fixture
def start(place: dict[str, Path], start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """A daemon whose state directory is in the user's home (HOME is that home), with
    these agent profiles (by default one, own_home, whose HOME is a directory of its own)."""
    def started(agents: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Daemon:
        place["agent_home"].mkdir(exist_ok=True)
        place["state"].parent.mkdir(parents=True, exist_ok=True)
        settings = {"agents": agents or {"own_home": {"command": [sys.executable, "-m", "cairnd.agents.reference"],
                                                      "env": {"HOME": str(place["agent_home"])}}}}
        return start_daemon(settings, env={"HOME": str(place["home"]), **(env or {})}, state=place["state"])
    return started


@pytest.fixture
def daemon(start: Callable[..., Daemon]) -> Daemon:
    return start()


def tool_outcomes(log: Path) -> list[tuple[str, str]]:
    """(status, text) of every finished tool call in a session log, in order."""
    outcomes = []
    for line in log.read_bytes().splitlines():
        message = orjson.loads(line)["notification"]
        update = (message.get("params") or {}).get("update") or {}
        if update.get("sessionUpdate") == "tool_call_update" and update.get("status") in ("completed", "failed"):
            text = "".join(c["content"]["text"] for c in update.get("content") or [])
            outcomes.append((update["status"], text))
    return outcomes


def run_lines(daemon: Daemon, session: str, *commands: str) -> list[tuple[str, str]]:
    before = len(tool_outcomes(daemon.state / "sessions" / session / "log.ndjson"))
    daemon.ok({"kind": "prompt", "session": session, "text": "\n".join(f"run: {c}" for c in commands)})
    return tool_outcomes(daemon.state / "sessions" / session / "log.ndjson")[before:]


@landlock
@pytest.mark.slow
def test_run_writes_in_its_worktree_and_nowhere_else(daemon: Daemon, place: dict[str, Path]) -> None:
    repo, state, home = place["repo"], place["state"], place["home"]
    first = daemon.ok({"kind": "new", "repo": str(repo), "agent": "own_home"})
    sibling = daemon.ok({"kind": "new", "repo": str(repo), "agent": "own_home", "prompt": "write s.txt: mine"})
    worktree, sibling_tree = Path(first["worktree"]), Path(sibling["worktree"])
    sibling_log = state / "sessions" / sibling["session"] / "log.ndjson"
    guarded = {p: p.read_bytes() for p in (sibling_log, sibling_tree / "s.txt")}  # cairnd.db: the daemon writes it

    refused = [
        f"echo x > {sibling_tree}/evil.txt",
        f"echo x >> {sibling_tree}/s.txt",
        f"echo x > {repo}/evil.txt",
        f"echo x >> {sibling_log}",
        f"echo x >> {state}/cairnd.db",
        f"echo '{{}}' > {state}/spool/new/evil.json",
        f"rm -rf {state}/sessions",
        f"echo x > {home}/evil.txt",
        f"echo x > /tmp/cairnd-sandbox-evil-{os.getpid()}.txt",
    ]
    outcomes = run_lines(daemon, first["session"], "echo in > inside.txt", *refused,
                         'echo h > "$HOME/agent-home.txt"', 'echo t > "$TMPDIR/t.txt" && cat "$TMPDIR/t.txt"',
                         "echo x > /dev/null")
    assert outcomes[0] == ("completed", "exit 0")
    for command, (status, text) in zip(refused, outcomes[1:1 + len(refused)]):
        assert status == "failed" and ("Permission denied" in text or "Operation not permitted" in text), (
            command, text)
    assert [status for status, _ in outcomes[1 + len(refused):]] == ["completed"] * 3, outcomes
    assert (worktree / "inside.txt").read_text() == "in\n"
    # $HOME is the session's own (SPEC 16), not the profile's, which is only read from.
    assert (state / "homes" / first["session"] / "agent-home.txt").read_text() == "h\n"
    assert not (place["agent_home"] / "agent-home.txt").exists()
    for path, content in guarded.items():
        assert path.read_bytes() == content, path
    assert not (sibling_tree / "evil.txt").exists() and not (repo / "evil.txt").exists()
    assert not (home / "evil.txt").exists() and not list((state / "spool/new").iterdir())
    assert not Path(f"/tmp/cairnd-sandbox-evil-{os.getpid()}.txt").exists()

    # commit: objects, refs and the worktree's own index and HEAD are writable.
    daemon.ok({"kind": "prompt", "session": first["session"], "text": "commit: inside"})
    assert tool_outcomes(state / "sessions" / first["session"] / "log.ndjson")[-1][0] == "completed"
    assert git_text(worktree, "log", "-1", "--format=%s") == "inside"
    assert git_text(worktree, "status", "--porcelain") == ""

    # The TMPDIR goes with the session.
    tmpdir = state / "tmp" / first["session"]
    assert (tmpdir / "t.txt").exists()
    daemon.ok({"kind": "delete", "session": first["session"]})
    assert not tmpdir.exists()


@landlock
@pytest.mark.slow
def test_a_fork_is_confined_to_its_own_worktree(daemon: Daemon, place: dict[str, Path]) -> None:
    # The built-in profile: it keeps its transcripts in <state>/agents/reference.
    parent = daemon.ok({"kind": "new", "repo": str(place["repo"]), "prompt": "write a.txt: parent"})
    daemon.ok({"kind": "prompt", "session": parent["session"], "text": "second"})
    fork = daemon.ok({"kind": "fork", "session": parent["session"], "user_message_index": 1})
    parent_tree, fork_tree = Path(parent["worktree"]), Path(fork["worktree"])
    outcomes = run_lines(daemon, fork["session"], f"echo f > {fork_tree}/a.txt", f"echo f > {parent_tree}/a.txt")
    assert [status for status, _ in outcomes] == ["completed", "failed"], outcomes
    assert b"history=1" in Path(fork["log"]).read_bytes()  # its agent got the kept turn
    assert (fork_tree / "a.txt").read_text() == "f\n" and (parent_tree / "a.txt").read_text() == "parent\n"


@landlock
@pytest.mark.slow
def test_an_agent_whose_home_holds_the_state_dir_and_the_checkout(place: dict[str, Path], start: Callable[..., Daemon]) -> None:
    # The reference profile's HOME is cairnd's own: since SPEC 16's private HOME, none of
    # it is the agent's to write (its $HOME is the session's own, under the state dir).
    daemon = start(agents={"reference": {}})
    try:
        home, state, repo = place["home"], place["state"], place["repo"]
        session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        outcomes = run_lines(daemon, session, "echo c > ~/.cache/c.txt", f"echo c > {home}/.cache/c.txt",
                             f"echo x > {home}/.bashrc", f"echo x > {state}/evil.txt", f"echo x > {repo}/evil.txt")
        assert [status for status, _ in outcomes] == ["completed", "failed", "failed", "failed", "failed"], outcomes
        assert (state / "homes" / session / ".cache/c.txt").read_text() == "c\n"
        assert not (home / ".cache/c.txt").exists()
        assert not (state / "evil.txt").exists() and not (repo / "evil.txt").exists()
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_sandbox_off_lets_the_same_write_through(place: dict[str, Path], start: Callable[..., Daemon]) -> None:
    daemon = start(agents={"loose": {"command": [sys.executable, "-m", "cairnd.agents.reference"],
                                            "sandbox": "off"}})
    try:
        session = daemon.ok({"kind": "new", "repo": str(place["repo"]), "agent": "loose"})["session"]
        outcomes = run_lines(daemon, session, f"echo x > {place['repo']}/loose.txt")
        assert outcomes == [("completed", "exit 0")]
        assert (place["repo"] / "loose.txt").read_text() == "x\n"
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_without_landlock_cairnd_says_so_once_and_runs_agents_unconfined(place: dict[str, Path], start: Callable[..., Daemon]) -> None:
    daemon = start(env={sandbox.FORCE_UNAVAILABLE_ENV: "1"})
    try:
        repo = place["repo"]
        for n in range(2):  # two agents start; the notice was given once, at start
            session = daemon.ok({"kind": "new", "repo": str(repo), "agent": "own_home"})["session"]
            assert run_lines(daemon, session, f"echo x > {repo}/open{n}.txt") == [("completed", "exit 0")]
        assert (repo / "open1.txt").exists()
        assert daemon.stderr().count("this kernel offers no Landlock") == 1, daemon.stderr()
        status = subprocess.run([sys.executable, "-m", "cairnd", "status", "--json"], capture_output=True,
                                env={**os.environ, "CAIRND_CONFIG": str(daemon.config)}, timeout=60)
        assert "unavailable" in orjson.loads(status.stdout)["sandbox"]
    finally:
        assert daemon.stop() == 0


@landlock
def test_an_in_place_session_writes_and_commits_in_the_checkout_itself(daemon: Daemon, place: dict[str, Path]) -> None:
    repo, state = place["repo"], place["state"]
    session = daemon.ok({"kind": "new", "repo": str(repo), "agent": "own_home", "in_place": True})["session"]
    outcomes = run_lines(daemon, session, "echo here > here.txt", f"echo x > {state}/evil.txt")
    assert [status for status, _ in outcomes] == ["completed", "failed"], outcomes
    daemon.ok({"kind": "prompt", "session": session, "text": "commit: in place"})
    assert git_text(repo, "log", "-1", "--format=%s") == "in place"
    assert (repo / "here.txt").read_text() == "here\n" and not (state / "evil.txt").exists()

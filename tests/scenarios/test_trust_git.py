"""The trust boundary, git's side (SPEC 16), attacked as an agent would: through the
reference agent's `run:` line, against the real daemon, real git and real Landlock.

Each test plants a program where cairnd's own git would once have run it (a
`core.fsmonitor` hook, a filter a `.gitattributes` names) and checks that cairnd's
checkpoints, forks and diffs never run it, while they go on recording the session's
real state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon
from gitrepos import git_text, make_repo

REFERENCE = [sys.executable, "-m", "cairnd.agents.reference"]


def evil_script(marker: Path) -> str:
    """`run:` lines writing an executable that records, in `marker`, that it ran."""
    return (f"printf '#!/bin/sh\\necho ran >> {marker}\\nexit 1\\n' > \"$TMPDIR/evil.sh\" "
            f"&& chmod +x \"$TMPDIR/evil.sh\"")


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    home = tmp_path / "home"
    (home / ".config/git").mkdir(parents=True)
    return {"home": home, "state": home / ".local/state/cairnd", "marks": tmp_path / "marks",
            "repo": make_repo(home / "src/project", {"README.md": "hello\n"}),
            "own": make_repo(home / "src/own", {"README.md": "own\n"})}


@pytest.fixture
def daemon(place: dict[str, Path]):
    place["marks"].mkdir()
    place["state"].parent.mkdir(parents=True, exist_ok=True)
    agents: dict[str, Any] = {"reference": {"command": REFERENCE}}
    d = Daemon(place["state"], {"agents": agents}, env={"HOME": str(place["home"])}).start()
    yield d
    if d.proc and d.proc.poll() is None:
        assert d.stop() == 0


def prompt(daemon: Daemon, session: str, *commands: str) -> dict[str, Any]:
    return daemon.ok({"kind": "prompt", "session": session, "text": "\n".join(f"run: {c}" for c in commands)})


def last_checkpoint(daemon: Daemon, session: str) -> dict[str, Any]:
    import orjson
    found = None
    for line in (daemon.state / "sessions" / session / "log.ndjson").read_bytes().splitlines():
        message = orjson.loads(line)["notification"]
        if message.get("method") == "_posthog/agent_checkpoint":
            found = message["params"]
    assert found is not None
    return found


def test_cairnds_git_runs_nothing_the_agent_wrote(daemon: Daemon, place: dict[str, Path]) -> None:
    """Attack 1: the worktree's `.git` file, its worktree record's `commondir`, the git
    config in HOME (both places) and, in an `in_place` session, the repository's own
    config and a `.gitattributes` filter, each naming a program: none runs."""
    marks, home = place["marks"], place["home"]
    session = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    sid, worktree = session["session"], Path(session["worktree"])
    head = git_text(worktree, "rev-parse", "HEAD")

    # 1. `.git` rewritten to a git dir of the agent's, its objects borrowed from the real one.
    prompt(daemon, sid, evil_script(marks / "gitfile"),
           'F="$TMPDIR/fake" && git init -q --bare "$F" && git rev-parse HEAD > "$F/HEAD"'
           ' && echo "$(git rev-parse --path-format=absolute --git-common-dir)/objects" > "$F/objects/info/alternates"'
           ' && cp "$(git rev-parse --path-format=absolute --git-dir)/index" "$F/index"'
           ' && git --git-dir="$F" config core.bare false'
           ' && git --git-dir="$F" config core.fsmonitor "$TMPDIR/evil.sh"'
           ' && echo "gitdir: $F" > .git',
           "echo one > one.txt")
    after = last_checkpoint(daemon, sid)
    assert not (marks / "gitfile").exists()
    assert after["headSha"] == head and after["dirty"]
    files = git_text(place["repo"], "ls-tree", "-r", "--name-only", after["worktreeSha"]).split()
    assert "one.txt" in files

    # 2. The worktree record's `commondir` pointed at a git dir of the agent's.
    other = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    prompt(daemon, other["session"], evil_script(marks / "commondir"),
           'F="$TMPDIR/fake" && git init -q --bare "$F"'
           ' && echo "$(git rev-parse --path-format=absolute --git-common-dir)/objects" > "$F/objects/info/alternates"'
           ' && git --git-dir="$F" config core.fsmonitor "$TMPDIR/evil.sh"'
           ' && echo "$F" > "$(git rev-parse --path-format=absolute --git-dir)/commondir"',
           "echo two > two.txt")
    assert not (marks / "commondir").exists()
    assert "two.txt" in git_text(place["repo"], "ls-tree", "-r", "--name-only",
                                 last_checkpoint(daemon, other["session"])["worktreeSha"]).split()

    # 3. The user's global git config (both of its files), where the agent could write it.
    for config, mark in ((home / ".gitconfig", "global"), (home / ".config/git/config", "xdg")):
        config.write_text(f"[core]\n\tfsmonitor = {marks / 'hook.sh'}\n[filter \"evil\"]\n"
                          f"\tclean = {marks / 'hook.sh'} {mark}\n\tsmudge = {marks / 'hook.sh'} {mark}\n")
    (marks / "hook.sh").write_text(f"#!/bin/sh\necho ran >> {marks / 'global'}\nexit 1\n")
    (marks / "hook.sh").chmod(0o755)
    third = daemon.ok({"kind": "new", "repo": str(place["repo"]),
                       "prompt": "run: echo '* filter=evil' > .gitattributes && echo three > three.txt"})
    prompt(daemon, third["session"], "echo later > later.txt")
    fork = daemon.ok({"kind": "fork", "session": third["session"], "user_message_index": 1})
    assert not (Path(fork["worktree"]) / "later.txt").exists()
    assert (Path(fork["worktree"]) / "three.txt").read_text() == "three\n"
    assert not (marks / "global").exists()

    # 4. in_place: the repository's own config is the agent's to write.
    own = daemon.ok({"kind": "new", "repo": str(place["own"]), "in_place": True})
    prompt(daemon, own["session"], evil_script(marks / "in_place"),
           'git config core.fsmonitor "$TMPDIR/evil.sh"',
           'git config filter.evil.clean "$TMPDIR/evil.sh"', 'git config filter.evil.smudge "$TMPDIR/evil.sh"',
           'git config filter.evil.process "$TMPDIR/evil.sh"', 'git config diff.evil.textconv "$TMPDIR/evil.sh"',
           "echo '* filter=evil diff=evil' > .gitattributes", "echo four > four.txt")
    checkpoint = last_checkpoint(daemon, own["session"])
    assert not (marks / "in_place").exists()
    assert "four.txt" in git_text(place["own"], "ls-tree", "-r", "--name-only", checkpoint["worktreeSha"]).split()
    # cairnd diff, from the command line, of the files the filter names.
    shown = subprocess.run([sys.executable, "-m", "cairnd", "-c", str(daemon.config), "diff", own["session"]],
                           capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, check=True)
    assert "+four" in shown.stdout
    assert not (marks / "in_place").exists()

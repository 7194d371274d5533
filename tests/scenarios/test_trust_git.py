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
from gitrepos import git_text, make_repo, vault_of

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


@pytest.mark.slow
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
    files = git_text(vault_of(daemon.state, place["repo"]), "ls-tree", "-r", "--name-only", after["worktreeSha"]).split()
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
    assert "two.txt" in git_text(vault_of(daemon.state, place["repo"]), "ls-tree", "-r", "--name-only",
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
    assert "four.txt" in git_text(vault_of(daemon.state, place["own"]), "ls-tree", "-r", "--name-only", checkpoint["worktreeSha"]).split()
    # cairnd diff, from the command line, of the files the filter names.
    shown = subprocess.run([sys.executable, "-m", "cairnd", "-c", str(daemon.config), "diff", own["session"]],
                           capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, check=True)
    assert "+four" in shown.stdout
    assert not (marks / "in_place").exists()


def tool_texts(daemon: Daemon, session: str) -> list[str]:
    import orjson
    texts = []
    for line in (daemon.state / "sessions" / session / "log.ndjson").read_bytes().splitlines():
        update = (orjson.loads(line)["notification"].get("params") or {}).get("update") or {}
        if update.get("sessionUpdate") == "tool_call_update" and update.get("status") in ("completed", "failed"):
            texts.append("".join(c["content"]["text"] for c in update.get("content") or []))
    return texts


def test_each_session_has_a_private_home_and_the_real_one_is_read_only(daemon: Daemon,
                                                                       place: dict[str, Path]) -> None:
    """Attack 3: the agent's HOME is its session's own, seeded with the profile's settings;
    the user's real HOME is not its to write, nor is a sibling's."""
    home = place["home"]
    (home / ".claude").mkdir()
    (home / ".claude/settings.json").write_text('{"seeded": true}\n')
    (home / ".bashrc").write_text("# the user's\n")
    first = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    second = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    prompt(daemon, first["session"], 'echo "$HOME" > home.txt', "cat ~/.claude/settings.json > seeded.txt",
           "echo 'echo planted' >> ~/.bashrc", f"echo evil >> {home}/.bashrc", f"mkdir -p {home}/.ssh",
           "git config --global core.fsmonitor evil", "echo mine > ~/planted.txt")
    prompt(daemon, second["session"], 'echo "$HOME" > home.txt', "ls -a ~ > listing.txt")
    first_home = Path((Path(first["worktree"]) / "home.txt").read_text().strip())
    second_home = Path((Path(second["worktree"]) / "home.txt").read_text().strip())
    assert first_home != second_home and first_home != home and second_home != home
    assert daemon.state in first_home.parents and daemon.state in second_home.parents
    assert (Path(first["worktree"]) / "seeded.txt").read_text() == '{"seeded": true}\n'
    # The real HOME: untouched (the writes aimed at it were refused).
    assert (home / ".bashrc").read_text() == "# the user's\n"
    assert not (home / ".ssh").exists() and not (home / ".gitconfig").exists()
    # The sibling's HOME holds nothing the first agent planted.
    assert "planted.txt" not in (Path(second["worktree"]) / "listing.txt").read_text()
    assert (first_home / "planted.txt").exists() and not (second_home / "planted.txt").exists()
    # A fork gets a copy of its parent's agent state, not the parent's HOME itself.
    fork = daemon.ok({"kind": "fork", "session": first["session"], "user_message_index": 0,
                      "prompt": 'run: echo "$HOME" > home.txt && cat ~/planted.txt > planted.txt'})
    fork_home = Path((Path(fork["worktree"]) / "home.txt").read_text().strip())
    assert fork_home not in (first_home, second_home, home)
    assert (Path(fork["worktree"]) / "planted.txt").read_text() == "mine\n"


@pytest.mark.skipif(__import__("cairnd.agent.sandbox", fromlist=["abi_version"]).abi_version() < 1,
                    reason="this kernel offers no Landlock")
def test_a_rewritten_git_file_widens_no_grant_on_restart(daemon: Daemon, place: dict[str, Path]) -> None:
    """Attack 2: the agent writes `gitdir: /` in its `.git` file and crashes; restarted,
    it may write no more than before (grants come from the registry)."""
    sibling = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    session = daemon.ok({"kind": "new", "repo": str(place["repo"])})
    sid = session["session"]
    crashed = daemon.request({"kind": "prompt", "session": sid, "text": 'run: echo "gitdir: /" > .git\ncrash'})
    assert crashed["status"] == "error"
    targets = [Path(sibling["worktree"]) / "evil.txt", place["repo"] / "evil.txt",
               daemon.state / "spool" / "new" / "evil.json", place["home"] / "evil.txt"]
    daemon.request({"kind": "prompt", "session": sid, "text": "\n".join(f"run: echo x > {t}" for t in targets)})
    assert [target for target in targets if target.exists()] == []
    texts = tool_texts(daemon, sid)[-len(targets):]
    assert all("Permission denied" in text or "Operation not permitted" in text for text in texts), texts

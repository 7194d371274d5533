"""Real Claude Code confined by cairnd's sandbox (SPEC 16), offline through the Messages-API anthropic_api.

Claude's own Bash tool runs what the stub scripts: a write outside the session's
worktree (the user's checkout, a sibling session's worktree) fails with EACCES, a
write inside works, and Claude's own state under its HOME (~/.claude: transcripts,
shell snapshots) is written as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from cairnd.agent import sandbox
from daemonproc import Daemon

from . import daemonkit
from .anthropic_stub import AnthropicStub, bash, text, tool_results

pytestmark = [pytest.mark.realagent, pytest.mark.slow,
              pytest.mark.skipif(sandbox.abi_version() < 1, reason="this kernel offers no Landlock")]

TURN_TIMEOUT = 120.0  # a bound against hangs, not an expectation


def result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def test_claudes_bash_writes_inside_its_worktree_only(tmp_path: Path, anthropic_api: AnthropicStub, repo: Path,
                                                       claude_daemon: Callable[..., Daemon]) -> None:
    home = tmp_path / "home"
    daemon = claude_daemon()  # sandbox: the default
    try:
        sibling = Path(daemon.ok({"kind": "new", "repo": str(repo)})["worktree"])
        new = daemon.ok({"kind": "new", "repo": str(repo)})
        worktree = Path(new["worktree"])
        started = time.time()
        anthropic_api.push(bash(f"echo escaped > {repo}/evil.txt"), bash(f"echo escaped > {sibling}/evil.txt"),
                  bash("echo inside > inside.txt && cat inside.txt"), text("Tried three places."))
        turn = daemon.ok({"kind": "prompt", "session": new["session"], "text": "Write three files."}, TURN_TIMEOUT)
        assert turn["stopReason"] == "end_turn"

        results = [result_text(block) for block in tool_results(anthropic_api.main_requests()[-1])]
        assert len(results) == 3, results
        assert "Permission denied" in results[0] and "Permission denied" in results[1], results
        assert "inside" in results[2] and "Permission denied" not in results[2], results
        assert not (repo / "evil.txt").exists() and not (sibling / "evil.txt").exists()
        assert (worktree / "inside.txt").read_text() == "inside\n"
        assert daemonkit.commit_files(worktree, turn["checkpoint"]["worktreeSha"])[b"inside.txt"][1] == b"inside\n"

        # Claude kept its own state under its HOME, sandbox or not: the session's private
        # HOME (SPEC 16), seeded from the profile's; the transcript is there, not in the profile's.
        private = daemon.state / "homes" / new["session"]
        written = [p for p in (private / ".claude").rglob("*.jsonl") if p.stat().st_mtime >= started - 1]
        assert written, sorted(str(p) for p in (private / ".claude").rglob("*"))
        assert not list((home / ".claude").rglob("*.jsonl"))
        assert any(b"inside.txt" in p.read_bytes() for p in written)
        # And the daemon ran it through the launcher.
        log = daemon.state / "sessions" / new["session"] / "agent.stderr"
        assert "starting" in log.read_text()
        status = orjson.loads((daemon.state / "status.json").read_bytes())
        assert status["sandbox"].startswith("landlock")
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]


def test_claudes_bash_neither_runs_code_in_cairnds_git_nor_writes_the_real_home(
        tmp_path: Path, anthropic_api: AnthropicStub, repo: Path, claude_daemon: Callable[..., Daemon]) -> None:
    """Attacks 1 and 3 of issue 22 through Claude's own Bash tool: a `.git` file pointed
    at a git dir whose config names a fsmonitor program, a fsmonitor in the global git
    config, and writes to the real HOME. cairnd's checkpoint runs nothing of it; the
    real HOME is untouched; Claude's HOME is its session's own."""
    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    daemon = claude_daemon()  # the profile's HOME: tmp_path/home
    (home / ".bashrc").write_text("# the user's\n")
    try:
        new = daemon.ok({"kind": "new", "repo": str(repo)})
        worktree = Path(new["worktree"])
        evil = (f"printf '#!/bin/sh\\necho ran >> {marks}/ran\\nexit 1\\n' > \"$TMPDIR/evil.sh\" "
                "&& chmod +x \"$TMPDIR/evil.sh\"")
        fake = ('F="$TMPDIR/fake" && git init -q --bare "$F" && git rev-parse HEAD > "$F/HEAD"'
                ' && echo "$(git rev-parse --path-format=absolute --git-common-dir)/objects"'
                ' > "$F/objects/info/alternates"'
                ' && cp "$(git rev-parse --path-format=absolute --git-dir)/index" "$F/index"'
                ' && git --git-dir="$F" config core.bare false'
                ' && git --git-dir="$F" config core.fsmonitor "$TMPDIR/evil.sh" && echo "gitdir: $F" > .git')
        anthropic_api.push(bash(evil), bash(fake), bash('git config --global core.fsmonitor "$TMPDIR/evil.sh"'),
                  bash(f"echo evil >> {home}/.bashrc; echo planted >> ~/.bashrc; echo \"$HOME\" > home.txt"),
                  bash("echo one > one.txt"), text("Done."))
        turn = daemon.ok({"kind": "prompt", "session": new["session"], "text": "Do it."}, TURN_TIMEOUT)
        assert turn["stopReason"] == "end_turn"
        assert not (marks / "ran").exists()
        assert (home / ".bashrc").read_text() == "# the user's\n"
        assert not (home / ".gitconfig").exists()
        private = Path((worktree / "home.txt").read_text().strip())
        assert private == daemon.state / "homes" / new["session"]
        assert "planted" in (private / ".bashrc").read_text()
        assert daemonkit.commit_files(worktree, turn["checkpoint"]["worktreeSha"])[b"one.txt"][1] == b"one\n"
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]

"""Real Gemini CLI (`gemini --acp`) through the real daemon, offline (issue 7).

The second third-party agent, driven as Claude Code is in test_claude_daemon.py:
its profile is `command`, `env` and `fs = false` (Gemini CLI 0.61 cannot create a
file through ACP's fs/*, see NOTES.md), its model calls go to the scripted
Gemini API stub on a loopback port, and it runs its own write_file,
run_shell_command and replace tools in the session worktree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemonproc import Daemon
from gitrepos import git_text, head, tree_state

from . import daemonkit
from .gemini_stub import GeminiStub, edit_file, prompt_texts, run_shell_command, stall, text, write_file

pytestmark = [pytest.mark.realagent, pytest.mark.slow]

TURN_TIMEOUT = 120.0  # a bound against hangs, not an expectation

PROMPTS = [
    "Create notes.txt with a first line.",
    "Make a build directory with a log in it and commit everything.",
    "Change the first line of notes.txt.",
]


def test_gemini_turns_checkpoints_forks_and_a_cancel(tmp_path: Path, gemini_api: GeminiStub, repo: Path,
                                                     gemini_daemon: Daemon) -> None:
    daemon = gemini_daemon
    new = daemon.ok({"kind": "new", "repo": str(repo), "title": "gemini"})
    session, worktree = new["session"], Path(new["worktree"])
    notes = worktree / "notes.txt"

    gemini_api.push(write_file(str(notes), "first line\n"), text("Wrote notes.txt."),
              run_shell_command("mkdir build && printf 'built\\n' > build/log.txt && git add -A "
                                "&& git commit -q -m 'notes and build'"), text("Committed."),
              edit_file(str(notes), "first line", "changed line"), text("Edited."))
    turns, states = [], []
    for prompt in PROMPTS:
        turns.append(daemon.ok({"kind": "prompt", "session": session, "text": prompt}, TURN_TIMEOUT))
        states.append((tree_state(worktree), head(worktree)))

    assert [t["stopReason"] for t in turns] == ["end_turn"] * 3
    assert notes.read_text() == "changed line\n"
    assert git_text(worktree, "log", "-1", "--format=%s") == "notes and build"
    assert prompt_texts(gemini_api.main_requests()[-1])[:3] == PROMPTS
    for turn, (files, head_sha) in zip(turns, states):
        assert daemonkit.commit_files(worktree, turn["checkpoint"]["worktreeSha"]) == files
        assert turn["checkpoint"]["headSha"] == head_sha

    # The log is the wire, both ways; no fs/* was offered, so none was used.
    log = daemon.state / "sessions" / session / "log.ndjson"
    [(sent, received)] = daemonkit.captures_for(daemon.state / "homes" / session / "wire", worktree)
    to_agent, from_agent = daemonkit.split_by_direction(daemonkit.log_frames(log), sent, received)
    assert daemonkit.unpaired_requests(to_agent, from_agent) == []
    assert daemonkit.unpaired_requests(from_agent, to_agent) == []
    assert not any((f.method or "").startswith("fs/") for f in from_agent)
    assert len([f for f in from_agent if f.method == "session/request_permission"]) == 3

    # Forks at 1 and 2 restore the files of that moment, the shell's commit included.
    fork1 = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})
    assert tree_state(Path(fork1["worktree"])) == states[0][0]
    assert head(Path(fork1["worktree"])) == new["headSha"]
    gemini_api.push(text("Forked answer."))
    fork2 = daemon.ok({"kind": "fork", "session": session, "user_message_index": 2,
                       "prompt": "What did we do so far?"}, TURN_TIMEOUT)
    assert fork2["stopReason"] == "end_turn" and fork2["prefill"] == PROMPTS[2]
    # Gemini CLI 0.61 has no session/fork: the fork gets its history by replay, and the
    # daemon's log says why (SPEC 12).
    assert fork1["history"] == fork2["history"] == "replay"
    assert any(f"session {fork2['session']}: agent 'gemini' gets its history by replay" in line
               and "did not advertise session/fork" in line for line in daemon.stderr().splitlines())
    assert tree_state(Path(fork2["worktree"])) == states[1][0]
    assert head(Path(fork2["worktree"])) == states[1][1] != new["headSha"]

    # The fork's prompt reached Gemini with the kept history (cairnd's replay: Gemini
    # CLI inlines a resource block as "Content from @<uri>"), cut at the fork.
    texts = prompt_texts(gemini_api.main_requests()[-1])
    # (Gemini CLI glues the text parts of one prompt together: "@<uri>" + the prompt)
    assert texts[0] == f"@cairnd://replay/{fork2['session']}What did we do so far?"
    replay = "\n".join(texts[1:])
    assert f"User:\n{PROMPTS[0]}\n\nAssistant:\nWrote notes.txt." in replay
    assert f"User:\n{PROMPTS[1]}\n\nAssistant:\nCommitted." in replay
    assert PROMPTS[2] not in replay

    # Cancel mid-turn in the fork, then a turn after it that still has the history.
    gemini_api.push(stall("Let me think"))
    stalled = daemon.drop({"kind": "prompt", "session": fork2["session"], "text": "Think for a long time."})
    assert gemini_api.wait_stalled(TURN_TIMEOUT)
    assert daemon.ok({"kind": "cancel", "session": fork2["session"]})["cancelled"] is True
    cancelled = daemon.wait(stalled, TURN_TIMEOUT)
    assert cancelled["status"] == "ok" and cancelled["result"]["stopReason"] == "cancelled", cancelled
    gemini_api.push(text("Still here."))
    after = daemon.ok({"kind": "prompt", "session": fork2["session"], "text": "Are you there?"}, TURN_TIMEOUT)
    assert after["stopReason"] == "end_turn"
    # The restart tries session/load; Gemini CLI 0.61 refuses it within the UTC minute
    # the session began ("No previous sessions found", NOTES.md), and cairnd then
    # replays. Either way the model gets the history (Gemini CLI's own drops the
    # cancelled prompt; cairnd's replay keeps it, marked cancelled).
    seen = "\n".join(prompt_texts(gemini_api.main_requests()[-1]))
    for earlier in (PROMPTS[0], PROMPTS[1], "What did we do so far?", "Are you there?"):
        assert earlier in seen
    assert PROMPTS[2] not in seen
    fork_log = daemonkit.log_frames(Path(fork2["log"]))
    opened = [f.method for f in fork_log if f.method in ("session/new", "session/load")]
    assert opened in (["session/new", "session/new", "session/load"],  # the parent's, the fork's, the restart
                      ["session/new", "session/new", "session/load", "session/new"])
    assert gemini_api.remaining() == [] and gemini_api.unscripted == 0

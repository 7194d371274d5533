"""Real Claude Code (claude-agent-acp) through the real daemon, offline (issue 7).

The daemon is `python -m cairnd serve` driven through its spool; its `claude`
profile is only `command` and `env` (what the README tells a user to write),
pointed at the scripted Anthropic stub on a loopback port. Claude Code runs
its real Write, Edit and Bash tools in the session worktree; the stub decides
which tool it calls and sees every model request, so a test can check what
history reached the model.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from acp.schema import SessionNotification

from daemonproc import Daemon
from gitrepos import git_text, head, tree_state

from . import daemonkit
from .anthropic_stub import AnthropicStub, bash, edit_file, prompt_texts, stall, text, write_file

pytestmark = [pytest.mark.realagent, pytest.mark.slow]

TURN_TIMEOUT = 120.0  # a bound against hangs, not an expectation: turns take about a second


def log_path(daemon: Daemon, session: str) -> Path:
    return daemon.state / "sessions" / session / "log.ndjson"


PROMPTS = [
    "Create notes.txt with a first line.",
    "Make a build directory with a log in it and commit everything.",
    "Change the first line of notes.txt.",
]


def test_three_turns_write_bash_edit_then_forks_at_1_and_2(tmp_path: Path, anthropic_api: AnthropicStub,
                                                           repo: Path, claude_daemon: Callable[..., Daemon]) -> None:
    # Inside the agent's HOME (the session's own, SPEC 16): the sandbox lets the tap write there.
    daemon = claude_daemon(Path("~/wire"))
    new = daemon.ok({"kind": "new", "repo": str(repo), "title": "claude"})
    session, worktree = new["session"], Path(new["worktree"])
    notes = worktree / "notes.txt"

    anthropic_api.push(write_file(str(notes), "first line\n"), text("Wrote notes.txt."),
              bash("mkdir build && printf 'built\\n' > build/log.txt && git add -A && git commit -q -m 'notes and build'"),
              text("Committed."),
              edit_file(str(notes), "first line", "changed line"), text("Edited."))
    turns = []
    states = []  # the worktree's files and HEAD right after each turn
    for prompt in PROMPTS:
        turns.append(daemon.ok({"kind": "prompt", "session": session, "text": prompt}, TURN_TIMEOUT))
        states.append((tree_state(worktree), head(worktree)))

    # Claude's real tools did the work.
    assert [t["stopReason"] for t in turns] == ["end_turn"] * 3
    assert notes.read_text() == "changed line\n"
    assert (worktree / "build" / "log.txt").read_text() == "built\n"
    assert git_text(worktree, "log", "-1", "--format=%s") == "notes and build"
    assert anthropic_api.remaining() == [] and anthropic_api.unscripted == 0
    assert prompt_texts(anthropic_api.main_requests()[-1]) == PROMPTS  # the model saw the whole session

    # Every checkpoint is the worktree as the turn left it, Bash's commit included.
    for turn, (files, head_sha) in zip(turns, states):
        assert daemonkit.commit_files(worktree, turn["checkpoint"]["worktreeSha"]) == files
        assert turn["checkpoint"]["headSha"] == head_sha
    assert turns[1]["checkpoint"]["headSha"] != new["headSha"]  # Claude committed in turn 1

    # The log holds every frame as it crossed the pipes, byte for byte, in order.
    frames = daemonkit.log_frames(log_path(daemon, session))
    # Claude Code's process has been seen to exit on its own between turns when the
    # machine is loaded (rarely; no error on its stderr); cairnd then starts it again with
    # session/resume, as SPEC 12 says. The log must hold every frame of every run.
    runs = daemonkit.captures_for(daemon.state / "homes" / session / "wire", worktree)
    sent = [frame for run_sent, _ in runs for frame in run_sent]
    received = [frame for _, run_received in runs for frame in run_received]
    to_agent, from_agent = daemonkit.split_by_direction(frames, sent, received)
    assert daemonkit.unpaired_requests(to_agent, from_agent) == []
    assert daemonkit.unpaired_requests(from_agent, to_agent) == []
    methods = [f.method for f in to_agent if f.method]
    assert [m for m in methods if m != "session/prompt"] == (
        ["initialize", "session/new"] + ["initialize", "session/resume"] * (len(runs) - 1))
    assert methods.count("session/prompt") == 3
    assert len([f for f in from_agent if f.method == "session/request_permission"]) == 3
    # Offered fs/* (the profile's default), Claude Code still uses its own tools.
    assert not any((f.method or "").startswith("fs/") for f in from_agent)
    # claude-agent-acp 0.23.1 sent usage_update with "used": null (invalid for the SDK's schema);
    # 0.101 sends a number. Either way the frames are in the log as they came (checked above).
    usage = daemonkit.session_updates(from_agent, "usage_update")
    assert usage and all(isinstance(f.message["params"]["update"]["used"], int) for f in usage)
    SessionNotification.model_validate(usage[0].message["params"])
    sdk_sessions = daemonkit.entries(frames, "_posthog/sdk_session")
    opened = [f for f in from_agent if "sessionId" in (f.message.get("result") or {})]
    opened_id = opened[0].message["result"]["sessionId"]  # Claude's own session id
    assert sdk_sessions == [{"sessionId": session, "sdkSessionId": opened_id, "adapter": "claude",
                             "history": "none" if n == 0 else "resume"} for n in range(len(runs))]

    # Forks at user message 1 and 2: the files (and HEAD) of that moment.
    fork1 = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})
    assert fork1["state"] == "checkpoint" and fork1["prefill"] == PROMPTS[1]
    assert tree_state(Path(fork1["worktree"])) == states[0][0]
    assert head(Path(fork1["worktree"])) == states[0][1] == new["headSha"]
    assert not (Path(fork1["worktree"]) / "build").exists()

    anthropic_api.push(text("Forked answer."))
    fork2 = daemon.ok({"kind": "fork", "session": session, "user_message_index": 2,
                       "prompt": "What did we do so far?"}, TURN_TIMEOUT)
    fork_tree = Path(fork2["worktree"])
    assert fork2["prefill"] == PROMPTS[2] and fork2["stopReason"] == "end_turn"
    assert tree_state(fork_tree) == states[1][0]  # Bash's directory and commit are there
    assert head(fork_tree) == states[1][1] == turns[1]["checkpoint"]["headSha"]
    assert (fork_tree / "notes.txt").read_text() == "first line\n"

    # The fork's first prompt reached Claude with the kept history, cut at the fork:
    # natively (session/fork at the last answer of turn 1, SPEC 12), so the model sees
    # user messages 0 and 1, the Write, the Bash and their results, not message 2.
    assert fork2["history"] == "native"
    assert prompt_texts(anthropic_api.main_requests()[-1]) == [PROMPTS[0], PROMPTS[1], "What did we do so far?"]
    assert "cairnd://replay" not in repr(anthropic_api.main_requests()[-1])
    assert {"Write", "Bash"} <= {b["name"] for m in anthropic_api.main_requests()[-1]["messages"] if m["role"] == "assistant"
                                 for b in m["content"] if b.get("type") == "tool_use"}
    fork_sdk = daemonkit.entries(daemonkit.log_frames(Path(fork2["log"])), "_posthog/sdk_session")[-1]
    assert fork_sdk["sessionId"] == fork2["session"] and fork_sdk["sdkSessionId"] != opened_id


def test_cancel_and_kill_mid_turn_then_the_session_goes_on(tmp_path: Path, anthropic_api: AnthropicStub,
                                                          repo: Path, claude_daemon: Callable[..., Daemon]) -> None:
    daemon = claude_daemon()
    new = daemon.ok({"kind": "new", "repo": str(repo)})
    session, worktree = new["session"], Path(new["worktree"])
    prompts = ["Create a.txt.", "Think for a long time.", "Create b.txt.", "Think again.", "Create c.txt."]

    anthropic_api.push(write_file(str(worktree / "a.txt"), "a\n"), text("Wrote a.txt."), stall("Let me think"))
    daemon.ok({"kind": "prompt", "session": session, "text": prompts[0]}, TURN_TIMEOUT)

    # Cancel while the model's answer is stalled mid-stream.
    stalled = daemon.drop({"kind": "prompt", "session": session, "text": prompts[1]})
    assert anthropic_api.wait_stalled(TURN_TIMEOUT)
    assert daemon.ok({"kind": "cancel", "session": session}) == {"session": session, "cancelled": True}
    cancelled = daemon.wait(stalled, TURN_TIMEOUT)
    assert cancelled["status"] == "ok" and cancelled["result"]["stopReason"] == "cancelled", cancelled
    assert anthropic_api.wait_requests(lambda requests: any(r.aborted_by_client for r in requests), TURN_TIMEOUT)

    # The turn after a cancel is its own (claude-agent-acp alone would be one turn
    # behind from here on: cairnd restarts it, and it loads its session natively).
    anthropic_api.push(write_file(str(worktree / "b.txt"), "b\n"), text("Wrote b.txt."), stall("Hmm"))
    after_cancel = daemon.ok({"kind": "prompt", "session": session, "text": prompts[2]}, TURN_TIMEOUT)
    assert after_cancel["stopReason"] == "end_turn"
    assert b"b.txt" in daemonkit.commit_files(worktree, after_cancel["checkpoint"]["worktreeSha"])
    # Claude's own history. A cancel that reaches Claude once it has read the first words
    # of the stalled answer leaves them in its transcript, then "[Request interrupted by
    # user]"; one that reaches it while the answer is still unread leaves the marker alone
    # (seen in a parallel full run: the aborted call's stub log, then the marker and no
    # words); one that reaches it before leaves neither (under load the cancel can come
    # 20 ms after the model call began). Either way every prompt is there, in order, and
    # this turn's is the last; the first words are never there without the marker.
    sent = anthropic_api.main_requests()[-1]
    said = [t.strip() for t in prompt_texts(sent)]
    interrupted = "[Request interrupted by user]" in said
    assert said == [prompts[0], prompts[1], *(["[Request interrupted by user]"] * interrupted), prompts[2]], said
    assert interrupted or "Let me think" not in repr(sent["messages"])

    # Kill the agent while the model's answer is stalled: the turn fails, recorded.
    killed = daemon.drop({"kind": "prompt", "session": session, "text": prompts[3]})
    assert anthropic_api.wait_stalled(TURN_TIMEOUT)
    [agent] = daemonkit.agent_pids(daemon.proc.pid, "claude-agent-acp")
    os.kill(agent, signal.SIGKILL)
    failed = daemon.wait(killed, TURN_TIMEOUT)
    assert failed["status"] == "error" and failed["error"]["code"] == "agent_failed", failed
    assert "killed by signal 9" in failed["error"]["message"]

    # ... and the next prompt works, in a new agent process that has the history.
    anthropic_api.push(write_file(str(worktree / "c.txt"), "c\n"), text("Wrote c.txt."))
    last = daemon.ok({"kind": "prompt", "session": session, "text": prompts[4]}, TURN_TIMEOUT)
    assert last["stopReason"] == "end_turn" and last["turn"] == 4
    assert tree_state(worktree).keys() >= {b"a.txt", b"b.txt", b"c.txt"}
    assert daemonkit.commit_files(worktree, last["checkpoint"]["worktreeSha"]) == tree_state(worktree)
    assert [t.strip() for t in prompt_texts(anthropic_api.main_requests()[-1]) if t.strip() in prompts] == prompts
    assert anthropic_api.remaining() == [] and anthropic_api.unscripted == 0

    frames = daemonkit.log_frames(log_path(daemon, session))
    assert [e["stopReason"] for e in daemonkit.entries(frames, "_posthog/turn_complete")] == [
        "end_turn", "cancelled", "end_turn", "agent_exited", "end_turn"]
    texts = daemonkit.agent_text_by_turn(frames)
    assert "Wrote a.txt." in texts[0] and "Wrote b.txt." in texts[2] and "Wrote c.txt." in texts[4]
    assert "Wrote" not in texts[1] + texts[3]
    # At least three agent processes (the first, one after the cancel, one after the kill;
    # Claude Code's process has been seen to exit on its own between turns under load,
    # and cairnd starts it again the same way), one Claude session: restarts resume it natively.
    sdk_sessions = daemonkit.entries(frames, "_posthog/sdk_session")
    runs = len(sdk_sessions)
    assert runs >= 3 and len({s["sdkSessionId"] for s in sdk_sessions}) == 1
    assert [s["history"] for s in sdk_sessions] == ["none"] + ["resume"] * (runs - 1)
    assert [f.method for f in frames if f.method in ("session/new", "session/load", "session/resume")] == [
        "session/new"] + ["session/resume"] * (runs - 1)

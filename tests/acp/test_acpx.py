"""`cairnd acp` driven by acpx (npm), a real headless ACP client, with the reference agent:
one-shot exec, permission answers, persistent sessions resumed across processes, and
a rewind (SPEC 18); the other commands: test_client.py."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from acpkit import acp_env, acpx, need_acpx, repo_at
from cairnd.sessionlog.entries import COMMAND_METHOD, PROMPT_METHOD

pytestmark = pytest.mark.slow  # acpx and cairnd acp are a node and a Python start per command


def log_messages(state: Path, session: str) -> list[dict]:
    lines = (state / "sessions" / session / "log.ndjson").read_bytes().splitlines()
    return [orjson.loads(line)["notification"] for line in lines]


def owner_gone(home: Path) -> None:
    """Wait until acpx's queue owner (which keeps the agent between prompts, ttl 1 s) has
    exited: its lock file goes with it."""
    deadline = time.monotonic() + 60
    while any((home / ".acpx" / "queues").glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.2)


def only_session(state: Path) -> str:
    sessions = [p.name for p in (state / "sessions").iterdir() if (p / "log.ndjson").exists()]
    assert len(sessions) == 1, sessions
    return sessions[0]


def test_exec_streams_the_turn_and_the_editor_answers_permission(tmp_path):
    need_acpx()
    repo, env = repo_at(tmp_path), acp_env(tmp_path)
    done = acpx(repo, env, "--approve-all", "exec", "write notes.txt: from the editor\nask: deploy it")
    assert done.returncode == 0, done.stderr + done.stdout
    # the agent's tool calls streamed through, its fs write went to the editor (acpx wrote it)
    assert "write notes.txt" in done.stdout and "permission granted: deploy it" in done.stdout, done.stdout
    assert "history=0" in done.stdout and "end_turn" in done.stdout
    assert (repo / "notes.txt").read_text() == "from the editor\n"
    # a cairnd session like any other: in the registry, its log and checkpoint in the state dir
    session = only_session(tmp_path / "state")
    messages = log_messages(tmp_path / "state", session)
    assert sum(m.get("method") == PROMPT_METHOD for m in messages) == 1
    assert any(m.get("method") == "session/request_permission" for m in messages)
    checkpoints = [m for m in messages if m.get("method") == "_posthog/agent_checkpoint"]
    assert checkpoints[-1]["params"]["turns"] == 1 and checkpoints[-1]["params"]["dirty"] is True

    denied = acpx(repo, env, "--deny-all", "exec", "ask: deploy again")
    assert denied.returncode == 5, denied.stderr  # acpx's status for "a permission was denied"
    assert "permission refused: deploy again" in denied.stdout, denied.stdout


def test_a_persistent_session_resumes_and_answers_the_slash_commands(tmp_path):
    need_acpx()
    repo, env, state = repo_at(tmp_path), acp_env(tmp_path), tmp_path / "state"
    made = acpx(repo, env, "sessions", "new", "--name", "work")
    assert made.returncode == 0, made.stderr
    session = only_session(state)

    def prompt(text: str) -> str:
        owner_gone(tmp_path / "home")  # so the next prompt is a new cairnd acp, which resumes the session
        done = acpx(repo, env, "--approve-all", "prompt", "-s", "work", text)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    assert "history=0" in prompt("write a.txt: one")
    # A second process took the session back with session/resume: the agent knows turn 1.
    assert "history=1" in prompt("write b.txt: two")
    assert only_session(state) == session  # acpx did not quietly start a fresh one

    rewound = prompt("/rewind 1")
    assert "Rewound to before user message 1" in rewound and "kept as session" in rewound, rewound
    assert (repo / "a.txt").exists() and not (repo / "b.txt").exists()
    # the conversation went back too: the agent knows one earlier message, not two
    assert "history=1" in prompt("echo me")

    messages = log_messages(state, session)
    assert [m["params"]["command"] for m in messages if m.get("method") == COMMAND_METHOD] == ["/rewind 1"]
    prompts = [m["params"]["prompt"][0]["text"] for m in messages if m.get("method") == PROMPT_METHOD]
    assert prompts == ["write a.txt: one", "echo me"]  # the rewind kept the first; no command is a prompt

    listed = acpx(repo, env, "sessions", "list")
    assert session in listed.stdout, listed.stdout

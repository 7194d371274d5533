"""SPEC 12 measured at the model: real Claude Code and real Codex through the daemon,
their model calls recorded by the stubs.

A session of four turns (a file write, a shell command, two plain answers) is forked at
k = 0..3, each fork running a prompt. The fork's first model request must carry exactly
the parent's conversation before the cut (user, assistant and tool turns, in order) and
then the new prompt: the parent's first request of turn k, less its last user message,
plus the fork's prompt. Nothing after the cut. Also a fork of a fork, the same fork with
`history = "replay"` (what replay sends instead), a restart after the agent is killed
(session/resume: the model sees the whole conversation), and the fallbacks: a parent
transcript removed from Claude's store (auto: replay with the reason logged; native:
agent_failed).

The conversation is compared as the model API carries it, less what the agent writes
for itself on every call (Claude's `system` messages and `<system-reminder>` blocks,
`cache_control` marks that move to the last block; Codex's developer messages,
`<environment_context>` and reasoning items).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon

from . import anthropic_stub, daemonkit, responses_stub
from .anthropic_stub import AnthropicStub
from .harness import codex_agent_bin
from .responses_stub import ResponsesStub
from .scripted import ScriptedModelStub

pytestmark = [pytest.mark.realagent, pytest.mark.slow]

TURN_TIMEOUT = 120.0  # a bound against hangs, not an expectation
PROMPTS = ["Create notes.txt.", "Build it.", "Say hi.", "Say bye."]


# -- the two agents, as a test sees them ---------------------------------------------------------


def claude_conversation(body: dict[str, Any]) -> list[Any]:
    kept = []
    for message in body.get("messages") or []:
        if message.get("role") == "system":
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        blocks = [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks
                  if not (b.get("type") == "text"
                          and b.get("text", "").startswith(anthropic_stub.HARNESS_TEXT_PREFIXES))]
        if blocks:
            kept.append((message["role"], blocks))
    # Claude Code merges consecutive user content into one message: so do we.
    merged: list[Any] = []
    for role, blocks in kept:
        if merged and merged[-1][0] == role == "user":
            merged[-1] = (role, merged[-1][1] + blocks)
        else:
            merged.append((role, blocks))
    return merged


def codex_conversation(body: dict[str, Any]) -> list[Any]:
    return [{k: v for k, v in item.items() if k != "id"} for item in responses_stub.conversation(body)]


@dataclass
class Agent:
    name: str
    stub: ScriptedModelStub
    profile: dict[str, Any]
    conversation: Callable[[dict[str, Any]], list[Any]]
    user: Callable[[str], Any]  # the new prompt as the last item of a conversation
    parent_script: Callable[[Path], list[Any]]
    text: Callable[[str], Any]
    bin_name: str

    def removes_transcript(self, home: Path, sdk_session_id: str) -> None:
        [path] = (home / ".claude" / "projects").glob(f"*/{sdk_session_id}.jsonl")
        path.unlink()


def claude(tmp_path: Path) -> Agent:
    stub = AnthropicStub().start()
    home = tmp_path / "home"
    return Agent(
        "claude", stub, daemonkit.claude_profile(stub.agent_env(str(home)), home), claude_conversation,
        lambda text: ("user", [{"type": "text", "text": text}]),
        lambda worktree: [anthropic_stub.write_file(str(worktree / "notes.txt"), "first line\n"),
                          anthropic_stub.text("Wrote notes.txt."),
                          anthropic_stub.bash("mkdir -p build && printf 'built\\n' > build/log.txt"),
                          anthropic_stub.text("Built."),
                          anthropic_stub.text("Hi."), anthropic_stub.text("Bye.")],
        anthropic_stub.text, "claude-agent-acp")


def codex(tmp_path: Path) -> Agent:
    stub = ResponsesStub().start()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    profile = {"command": [str(codex_agent_bin())], "env": stub.agent_env(str(home))}
    return Agent(
        "codex", stub, profile, codex_conversation,
        lambda text: {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        lambda worktree: [responses_stub.apply_patch_add("notes.txt", "first line"),
                          responses_stub.text("Wrote notes.txt."),
                          responses_stub.shell("mkdir -p build && printf 'built\\n' > build/log.txt"),
                          responses_stub.text("Built."),
                          responses_stub.text("Hi."), responses_stub.text("Bye.")],
        responses_stub.text, "codex-acp")


AGENTS = {"claude": claude, "codex": codex}


@pytest.fixture(params=sorted(AGENTS))
def agent(request: pytest.FixtureRequest, tmp_path: Path, agents_installed: None) -> Iterator[Agent]:
    made = AGENTS[request.param](tmp_path)
    yield made
    made.stub.close()


@pytest.fixture
def daemons(agent_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """A daemon running this agent, keeping its sessions' history this way."""
    def start(agent: Agent, history: str = "auto", name: str = "state") -> Daemon:
        return agent_daemon(agent.name, {**agent.profile, "history": history}, state=name)
    return start


class Run:
    """One daemon, one agent: requests, each turn's first model request."""

    def __init__(self, daemon: Daemon, agent: Agent) -> None:
        self.daemon, self.agent = daemon, agent

    def first_request(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a request holding one turn; its result and the first model request of the turn."""
        before = len(self.agent.stub.main_requests())
        result = self.daemon.ok(request, TURN_TIMEOUT)
        return result, self.agent.stub.main_requests()[before]

    def parent(self, repo: Path) -> tuple[str, list[dict[str, Any]]]:
        new = self.daemon.ok({"kind": "new", "repo": str(repo), "title": self.agent.name})
        self.agent.stub.push(*self.agent.parent_script(Path(new["worktree"])))
        firsts = [self.first_request({"kind": "prompt", "session": new["session"], "text": p})[1] for p in PROMPTS]
        assert self.agent.stub.remaining() == [] and self.agent.stub.unscripted == 0
        return new["session"], firsts

    def fork(self, session: str, k: int, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
        self.agent.stub.push(self.agent.text(f"Answer to {prompt}"))
        return self.first_request({"kind": "fork", "session": session, "user_message_index": k, "prompt": prompt})

    def sdk_session(self, session: str) -> dict[str, Any]:
        frames = daemonkit.log_frames(self.daemon.state / "sessions" / session / "log.ndjson")
        return daemonkit.entries(frames, "_posthog/sdk_session")[-1]


def before_cut(agent: Agent, turn_request: dict[str, Any]) -> list[Any]:
    """The conversation before a turn's prompt: its first request, less that prompt."""
    conversation = agent.conversation(turn_request)
    assert conversation[-1] == agent.user(prompt_of(agent, turn_request))
    return conversation[:-1]


def prompt_of(agent: Agent, body: dict[str, Any]) -> str:
    texts = anthropic_stub.prompt_texts(body) if agent.name == "claude" else responses_stub.prompt_texts(body)
    return texts[-1]


# -- the tests -------------------------------------------------------------------------------------


def test_forks_at_every_k_carry_exactly_the_parents_conversation_before_the_cut(agent: Agent, repo: Path,
                                                                                 daemons: Any) -> None:
    run = Run(daemons(agent), agent)
    parent, firsts = run.parent(repo)
    full = agent.conversation(firsts[3])
    tool_kinds = {"claude": ("tool_use", "tool_result"), "codex": ("custom_tool_call", "function_call")}[agent.name]
    assert all(kind in repr(full) for kind in tool_kinds)  # the tool turns are in the history
    for k in range(4):
        result, first = run.fork(parent, k, f"forked at {k}")
        assert result["history"] == ("none" if k == 0 else "native")
        assert run.sdk_session(result["session"])["history"] == result["history"]
        expected = (before_cut(agent, firsts[k]) if k else []) + [agent.user(f"forked at {k}")]
        assert agent.conversation(first) == expected, f"fork at {k}"
        later = PROMPTS[k:]
        assert not any(p in repr(agent.conversation(first)) for p in later), f"fork at {k} holds a later prompt"


def test_a_fork_of_a_fork_holds_both_cuts(agent: Agent, repo: Path, daemons: Any) -> None:
    run = Run(daemons(agent), agent)
    parent, firsts = run.parent(repo)
    child, child_first = run.fork(parent, 2, "child one")
    agent.stub.push(agent.text("Child two done."))
    _, child_second = run.first_request({"kind": "prompt", "session": child["session"], "text": "child two"})
    for k, turn_request in ((3, child_second), (2, child_first)):
        grandchild, first = run.fork(child["session"], k, f"grandchild at {k}")
        assert grandchild["history"] == "native"
        assert agent.conversation(first) == before_cut(agent, turn_request) + [agent.user(f"grandchild at {k}")]
    assert before_cut(agent, child_first) == before_cut(agent, firsts[2])


def test_replay_sends_one_block_of_text_instead(agent: Agent, repo: Path, daemons: Any) -> None:
    """What the README shows: with history = "replay" the model gets the earlier turns as
    text in one user message (no assistant or tool items); natively it gets them as they were."""
    run = Run(daemons(agent, "replay"), agent)
    parent, firsts = run.parent(repo)
    result, first = run.fork(parent, 3, "forked at 3")
    assert result["history"] == "replay"
    conversation = agent.conversation(first)
    assert len(conversation) == 1 and "forked at 3" in repr(conversation) and "cairnd://replay" in repr(first)
    assert all(prompt in repr(conversation) for prompt in PROMPTS[:3]) and PROMPTS[3] not in repr(conversation)
    assert "tool_use" not in repr(conversation) and "function_call" not in repr(conversation)


def test_a_killed_agent_is_resumed_and_the_model_sees_the_whole_conversation(agent: Agent, repo: Path,
                                                                           daemons: Any) -> None:
    daemon = daemons(agent)
    run = Run(daemon, agent)
    session, firsts = run.parent(repo)
    assert daemon.proc is not None
    killed = daemonkit.agent_pids(daemon.proc.pid, agent.bin_name)
    for pid in killed:
        os.killpg(pid, signal.SIGKILL)
    # Until cairnd has reaped it (a zombie is still its child): reaped, it is no longer
    # running to the runner (its returncode is set), so the next prompt starts a new agent.
    deadline = time.monotonic() + TURN_TIMEOUT
    while set(killed) & set(daemonkit.children(daemon.proc.pid)):
        assert time.monotonic() < deadline, "the killed agent was never reaped"
        time.sleep(0.05)
    agent.stub.push(agent.text("Still here."))
    result, first = run.first_request({"kind": "prompt", "session": session, "text": "After the restart."})
    assert result["history"] == "resume" and run.sdk_session(session)["history"] == "resume"
    last = firsts[3]
    answer_and_prompt = agent.conversation(first)[len(agent.conversation(last)):]
    assert agent.conversation(first)[: len(agent.conversation(last))] == agent.conversation(last)
    assert answer_and_prompt[-1] == agent.user("After the restart.") and "Bye." in repr(answer_and_prompt)


def test_a_parent_transcript_gone_falls_back_to_replay_or_fails_native(tmp_path: Path, repo: Path, daemons: Any,
                                                                       agents_installed: None) -> None:
    agent = claude(tmp_path)
    try:
        for history in ("auto", "native"):
            daemon = daemons(agent, history, name=f"state-{history}")
            run = Run(daemon, agent)
            parent, _ = run.parent(repo)
            # The parent's agent keeps its transcript in the session's private HOME (SPEC 16).
            agent.removes_transcript(daemon.state / "homes" / parent, run.sdk_session(parent)["sdkSessionId"])
            if history == "auto":
                result, first = run.fork(parent, 2, "after the loss")
                assert result["history"] == "replay" and "cairnd://replay" in repr(first)
                [line] = [l for l in daemon.stderr().splitlines() if "gets its history by replay" in l]
                assert result["session"] in line and "session/fork of" in line and "not found" in line.lower()
            else:
                agent.stub.push(agent.text("never asked"))
                failed = daemon.request({"kind": "fork", "session": parent, "user_message_index": 2,
                                         "prompt": "after the loss"}, TURN_TIMEOUT)
                assert failed["status"] == "error" and failed["error"]["code"] == "agent_failed"
                assert "session/fork of" in failed["error"]["message"]
                agent.stub.remaining()  # the unused answer stays: the model was never asked
    finally:
        agent.stub.close()

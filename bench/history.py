"""A fork's history, native against replay (SPEC 12), on real Claude Code.

Two parents of four turns each (a Write, a Bash command, two answers), one under a
profile with `history = "native"`, one with `history = "replay"`, against the scripted
Messages-API stub of tests/scenarios/realagents (Claude Code runs offline; the stub answers at
once, so the times are cairnd's and the agent's, not a model's). Each is forked at
k = 3 with a prompt, several times, alternating between the two so load drift hits
both:

- fork to first answer: request to result of `fork` with `prompt` (worktree, log,
  a new agent process, `session/fork` or `session/new` + the replay block, the turn);
- the bytes the model receives in the fork's first request: the whole request body
  (system prompt and tool definitions included, the same in both), and its
  `messages` alone (the conversation: native carries the turns as they were, tool
  calls and results included; replay one user message of rendered text).

Ratios are native over replay, measured in the same run. Needs node and the npm
agents of tests/scenarios/realagents (installed by `.ci/run`); without them the row says so.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from daemonkit import SpoolClient, running_daemon
from measure import ROOT, Row, command_of, main, median, ms, target_text

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "scenarios")]
from realagents import anthropic_stub, daemonkit as agentkit  # noqa: E402
from realagents.harness import ensure_agents_installed, make_git_repo  # noqa: E402

PROMPTS = ["Create notes.txt.", "Build it.", "Say hi.", "Say bye."]
MODES = ("native", "replay")


def parent_script(worktree: Path) -> list[Any]:
    return [anthropic_stub.write_file(str(worktree / "notes.txt"), "first line\n"),
            anthropic_stub.text("Wrote notes.txt."),
            anthropic_stub.bash("mkdir -p build && printf 'built\\n' > build/log.txt"),
            anthropic_stub.text("Built."), anthropic_stub.text("Hi."), anthropic_stub.text("Bye.")]


def _measure(root: Path, forks: int) -> dict[str, dict[str, list[float]]]:
    repo = make_git_repo(root / "project", {"README.md": "# bench\n"})
    found: dict[str, dict[str, list[float]]] = {m: {"seconds": [], "body": [], "messages": []} for m in MODES}
    with anthropic_stub.AnthropicStub() as stub:
        home = root / "home"
        profile = agentkit.claude_profile(stub.agent_env(str(home)), home)
        agents = {f"claude-{mode}": {**profile, "history": mode} for mode in MODES}
        with running_daemon(root / "state", stop_timeout_seconds=2, agents=agents) as daemon:
            client = SpoolClient(daemon.spool)
            parents = {}
            for mode in MODES:
                new = client.ok({"kind": "new", "repo": str(repo), "agent": f"claude-{mode}"})
                stub.push(*parent_script(Path(new["worktree"])))
                for prompt in PROMPTS:
                    client.ok({"kind": "prompt", "session": new["session"], "text": prompt})
                parents[mode] = new["session"]
            for n in range(forks):
                for mode in MODES if n % 2 == 0 else reversed(MODES):
                    stub.push(anthropic_stub.text("Forked."))
                    before = len(stub.main_requests())
                    result, took = client.request({"kind": "fork", "session": parents[mode],
                                                   "user_message_index": 3, "prompt": "And now?"})
                    if result.get("status") != "ok" or result["result"].get("history") != mode:
                        raise RuntimeError(f"fork ({mode}) failed or took another way: {result}")
                    first = [r for r in stub.requests() if r.kind == "main"][before]
                    assert first.body is not None
                    found[mode]["seconds"].append(took)
                    found[mode]["body"].append(len(first.raw_body))
                    found[mode]["messages"].append(len(orjson.dumps(first.body.get("messages"))))
            client.close()
    return found


def run(quick: bool) -> list[Row]:
    command = command_of(__file__, quick)
    problem = ensure_agents_installed()
    if problem:
        return [Row("history: native vs replay fork, Claude Code", f"skipped: {problem}", "-",
                    target_text("none set", None), command)]
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-history-") as tmp:
        found = _measure(Path(tmp), 2 if quick else 6)
    native, replay = found["native"], found["replay"]
    seconds = {m: median(found[m]["seconds"]) for m in MODES}
    body = {m: median(found[m]["body"]) for m in MODES}
    messages = {m: median(found[m]["messages"]) for m in MODES}
    return [
        Row("history: fork to first answer at k=3 of 4 turns, Claude Code",
            f"native {ms(seconds['native'])}, replay {ms(seconds['replay'])} "
            f"(median of {len(native['seconds'])} each)",
            f"{seconds['native'] / seconds['replay']:.2f}x replay",
            target_text("none set (SPEC 12: exact history, at no great cost)", None), command),
        Row("history: bytes the model receives in the fork's first request, k=3 of 4 turns",
            f"whole request: native {body['native']:.0f} B, replay {body['replay']:.0f} B; "
            f"messages: native {messages['native']:.0f} B, replay {messages['replay']:.0f} B",
            f"{body['native'] / body['replay']:.2f}x replay (request), "
            f"{messages['native'] / messages['replay']:.2f}x replay (messages)",
            target_text("none set (native carries the tool turns replay leaves out)", None), command),
    ]


if __name__ == "__main__":
    main(__file__, run)

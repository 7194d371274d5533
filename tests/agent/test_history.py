"""SPEC 12: how an agent gets the kept conversation: native fork at the cut, resume,
load, replay or none; auto falls back with the reason in the daemon's log, native fails
agent_failed. The pure core (scan, plan) on log lines; the whole path through the real
daemon with the reference agent, whose own transcripts show what it holds."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cairnd.agents.reference import read_transcript
from cairnd.sessionlog.entries import cairnd_entry, envelope_line
from cairnd.agent.history import HistoryFacts, advertises, plan, scan
from daemonproc import Daemon
from logsamples import prompt_request, prompt_response

FORK_CAPS = {"loadSession": False, "sessionCapabilities": {"fork": {}, "resume": {}}}


def init_response(caps: dict[str, Any]) -> bytes:
    return envelope_line({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": 1, "agentCapabilities": caps}})


def sdk_session(sdk_id: str, adapter: str = "claude", history: str | None = None) -> bytes:
    params = {"sessionId": "s", "sdkSessionId": sdk_id, "adapter": adapter}
    if history:
        params["history"] = history
    return envelope_line(cairnd_entry("_posthog/sdk_session", params))


def agent_chunk(text: str, message_id: str | None, sub: str | None = None) -> bytes:
    update: dict[str, Any] = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    if message_id:
        update["messageId"] = message_id
    if sub:
        update["_meta"] = {"cairnd": {"subSession": sub}}
    return envelope_line({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "x", "update": update}})


def fork_meta() -> bytes:
    return envelope_line(cairnd_entry("_posthog/fork_session_meta", {"sessionId": "f", "parentSessionId": "s"}))


def lines(*raw: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    for line in raw:
        out.append((offset, line))
        offset += len(line)
    return out


def parent_log(turns: int) -> list[bytes]:
    raw = [init_response(FORK_CAPS), sdk_session("p1", history="none")]
    for n in range(turns):
        raw += [prompt_request(n + 1, f"prompt {n}"), agent_chunk(f"answer {n}", f"m{n}"),
                agent_chunk("sub says", f"sub{n}", sub="d1"), prompt_response(n + 1)]
    return raw


def test_a_fork_at_k_forks_the_parents_agent_session_after_turn_k_minus_1():
    facts = scan(lines(*parent_log(2), fork_meta()))
    assert (facts.source_session, facts.message_id, facts.user_messages, facts.cut) == ("p1", "m1", 2, True)
    assert plan(facts, "auto", "claude", FORK_CAPS) == plan(facts, "native", "claude", FORK_CAPS)
    assert plan(facts, "auto", "claude", FORK_CAPS).way == "native"
    assert plan(facts, "auto", "claude", FORK_CAPS).message_id == "m1"  # sub-session chunks are not the cut


def test_k_zero_is_none_and_replay_mode_never_tries():
    assert plan(scan(lines(init_response(FORK_CAPS), sdk_session("p1"), fork_meta())), "native", "claude",
                FORK_CAPS).way == "none"
    decided = plan(scan(lines(*parent_log(2), fork_meta())), "replay", "claude", FORK_CAPS)
    assert decided.way == "replay" and decided.why == "history = replay"


@pytest.mark.parametrize("log, profile, live, why", [
    (parent_log(1) + [fork_meta()], "gemini", FORK_CAPS, "held by agent 'claude', not 'gemini'"),
    ([init_response({"loadSession": True}), *parent_log(1)[1:], fork_meta()], "claude", FORK_CAPS,
     "did not advertise session/fork"),
    (parent_log(1) + [fork_meta()], "claude", {"loadSession": True}, "as started now does not advertise"),
    ([init_response(FORK_CAPS), sdk_session("p1"), prompt_request(1, "x"), agent_chunk("a", None), fork_meta()],
     "claude", FORK_CAPS, "no agent message with a messageId"),
    # a session that got the conversation by replay knows none of the earlier messages by id
    (parent_log(1) + [sdk_session("p2", history="replay"), fork_meta()], "claude", FORK_CAPS,
     "no agent message with a messageId"),
    ([prompt_request(1, "x"), agent_chunk("a", "m0"), fork_meta()], "claude", FORK_CAPS, "names no agent session"),
])
def test_when_native_is_impossible_plan_says_why(log, profile, live, why):
    decided = plan(scan(lines(*log)), "auto", profile, live)
    assert decided.way == "replay" and why in decided.why


def test_a_restart_resumes_else_loads_else_replays():
    facts = scan(lines(*parent_log(2)))
    assert (facts.own_session, facts.cut) == ("p1", False)
    assert plan(facts, "auto", "claude", FORK_CAPS).way == "resume"
    assert plan(facts, "auto", "claude", {"loadSession": True}).way == "load"
    assert plan(facts, "auto", "claude", {}).way == "replay"
    assert plan(facts, "replay", "claude", FORK_CAPS).way == "replay"
    # the fork's own session, once open, is what a restart of the fork resumes
    fork = scan(lines(*parent_log(2), fork_meta(), sdk_session("f1", history="native")))
    assert (fork.own_session, fork.cut) == ("f1", False) and plan(fork, "auto", "claude", FORK_CAPS).session == "f1"


def test_advertises_reads_initialize_capabilities():
    assert advertises(FORK_CAPS, "fork") and advertises(FORK_CAPS, "resume")
    assert not advertises(FORK_CAPS, "loadSession") and not advertises({}, "fork")
    assert not advertises({"sessionCapabilities": {"fork": None}}, "fork")


# -- through the daemon, with the reference agent ---------------------------------------------


def reference_with(history: str) -> dict[str, Any]:
    """Settings whose reference profile keeps its sessions' history this way."""
    return {"agents": {"reference": {"history": history}}}


@pytest.fixture(scope="module")
def daemon(start_module_daemon: Callable[..., Daemon]) -> Daemon:
    """One daemon (history "auto") for the tests below that take it: each makes and
    forks sessions of its own. The other modes start their own."""
    return start_module_daemon(reference_with("auto"))


def store(daemon: Daemon, session: str) -> Path:
    """Where the reference agent keeps a session's transcripts: in that session's own
    private HOME (SPEC 16), which a fork gets a copy of."""
    return daemon.state / "homes" / session / ".local" / "state" / "cairnd-reference"


def sdk_entries(daemon: Daemon, session: str) -> list[dict[str, Any]]:
    log = daemon.state / "sessions" / session / "log.ndjson"
    found = []
    for line in log.read_bytes().splitlines():
        message = orjson.loads(line)["notification"]
        if message.get("method") == "_posthog/sdk_session":
            found.append(message["params"])
    return found


def four_turns(daemon: Daemon, repo: Path) -> str:
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: one"})["session"]
    for text in ("run: echo two > b.txt", "commit: three", "say four"):
        daemon.ok({"kind": "prompt", "session": session, "text": text})
    return session


def user_texts(records: list[dict[str, Any]]) -> list[str]:
    return [r["text"] for r in records if r["kind"] == "user"]


def history_n(daemon: Daemon, session: str) -> int:
    log = (daemon.state / "sessions" / session / "log.ndjson").read_text()
    return int(re.findall(r"history=(\d+)", log)[-1])


@pytest.mark.slow
def test_forks_at_every_k_hold_exactly_the_parents_messages_before_the_cut(daemon: Daemon, repo: Path):
    parent = four_turns(daemon, repo)
    prompts = ["write a.txt: one", "run: echo two > b.txt", "commit: three", "say four"]
    parent_sdk = sdk_entries(daemon, parent)[-1]["sdkSessionId"]
    for k in range(4):
        fork = daemon.ok({"kind": "fork", "session": parent, "user_message_index": k, "prompt": "after the fork"})
        assert fork["history"] == ("none" if k == 0 else "native")
        own = sdk_entries(daemon, fork["session"])[-1]
        assert own["history"] == fork["history"] and own["sdkSessionId"] == fork["sdkSessionId"] != parent_sdk
        held = read_transcript(own["sdkSessionId"], store(daemon, fork["session"]))
        assert user_texts(held) == prompts[:k] + ["after the fork"]
        assert history_n(daemon, fork["session"]) == k
        # the fork's first prompt carries no replay: the agent has the conversation itself
        log = (daemon.state / "sessions" / fork["session"] / "log.ndjson").read_text()
        assert "cairnd://replay" not in log.rsplit("_posthog/fork_session_meta", 1)[1]
    assert user_texts(read_transcript(parent_sdk, store(daemon, parent))) == prompts  # the parent is untouched


@pytest.mark.slow
def test_a_fork_of_a_fork_holds_the_grandparents_prefix_and_its_own_turns(daemon: Daemon, repo: Path):
    parent = four_turns(daemon, repo)
    child = daemon.ok({"kind": "fork", "session": parent, "user_message_index": 3, "prompt": "child one"})
    daemon.ok({"kind": "prompt", "session": child["session"], "text": "child two"})
    for k, expected in ((4, ["write a.txt: one", "run: echo two > b.txt", "commit: three", "child one"]),
                        (2, ["write a.txt: one", "run: echo two > b.txt"])):
        grandchild = daemon.ok({"kind": "fork", "session": child["session"], "user_message_index": k,
                                "prompt": "grandchild"})
        assert grandchild["history"] == "native"
        held = read_transcript(sdk_entries(daemon, grandchild["session"])[-1]["sdkSessionId"],
                               store(daemon, grandchild["session"]))
        assert user_texts(held) == expected + ["grandchild"]


def test_a_fork_without_a_prompt_says_how_its_agent_will_get_the_history(daemon: Daemon, repo: Path):
    parent = four_turns(daemon, repo)
    assert daemon.ok({"kind": "fork", "session": parent, "user_message_index": 2})["history"] == "native"
    assert daemon.ok({"kind": "fork", "session": parent, "user_message_index": 0})["history"] == "none"


@pytest.mark.slow
def test_a_removed_parent_transcript_falls_back_to_replay_and_says_why(daemon: Daemon, repo: Path):
    parent = four_turns(daemon, repo)
    parent_sdk = sdk_entries(daemon, parent)[-1]["sdkSessionId"]
    (store(daemon, parent) / f"{parent_sdk}.jsonl").unlink()
    fork = daemon.ok({"kind": "fork", "session": parent, "user_message_index": 2, "prompt": "after"})
    assert fork["history"] == "replay" and history_n(daemon, fork["session"]) == 2
    assert sdk_entries(daemon, fork["session"])[-1]["history"] == "replay"
    line = next(l for l in daemon.stderr().splitlines() if f"session {fork['session']}: agent 'reference'" in l)
    assert "by replay" in line and "session/fork of " + parent_sdk in line and "-32002" in line


@pytest.mark.slow
def test_native_insists_a_removed_transcript_is_agent_failed(start_daemon: Callable[..., Daemon], repo: Path):
    daemon = start_daemon(reference_with("native"))
    parent = four_turns(daemon, repo)
    (store(daemon, parent) / f"{sdk_entries(daemon, parent)[-1]['sdkSessionId']}.jsonl").unlink()
    failed = daemon.request({"kind": "fork", "session": parent, "user_message_index": 2, "prompt": "after"})
    assert failed["status"] == "error" and failed["error"]["code"] == "agent_failed"
    assert "session/fork of" in failed["error"]["message"] and "history = native" in failed["error"]["message"]


@pytest.mark.slow
def test_replay_mode_replays_forks_and_restarts(start_daemon: Callable[..., Daemon], repo: Path):
    daemon = start_daemon(reference_with("replay"))
    parent = four_turns(daemon, repo)
    fork = daemon.ok({"kind": "fork", "session": parent, "user_message_index": 3, "prompt": "after"})
    assert fork["history"] == "replay" and history_n(daemon, fork["session"]) == 3
    held = read_transcript(sdk_entries(daemon, fork["session"])[-1]["sdkSessionId"], store(daemon, fork["session"]))
    assert user_texts(held) == ["after"] and held[0] == {"kind": "replay", "userMessages": 3}


@pytest.mark.slow
def test_a_restart_after_a_crash_resumes_the_same_agent_session(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: one"})["session"]
    crashed = daemon.request({"kind": "prompt", "session": session, "text": "crash"})
    assert crashed["error"]["code"] == "agent_failed"
    result = daemon.ok({"kind": "prompt", "session": session, "text": "still there?"})
    first, second = sdk_entries(daemon, session)
    assert result["history"] == second["history"] == "resume" and second["sdkSessionId"] == first["sdkSessionId"]
    assert history_n(daemon, session) == 2


def test_the_marked_read_of_a_log_file_gives_the_same_facts(tmp_path: Path):
    from cairnd.agent.history import marked_lines
    from cairnd.sessionlog.file import iter_lines
    raw = [*parent_log(3), fork_meta(), sdk_session("f1", history="native"), prompt_request(9, "own"),
           agent_chunk("own answer", "m9")]
    path = tmp_path / "log.ndjson"
    path.write_bytes(b"".join(raw))
    assert scan(marked_lines(iter_lines(path))) == scan(iter_lines(path)) == scan(lines(*raw))
    end = len(b"".join(parent_log(2)))
    kept = scan(marked_lines(iter_lines(path), end), cut_at_end=True)
    assert (kept.source_session, kept.message_id, kept.user_messages, kept.cut) == ("p1", "m1", 2, True)


@pytest.mark.slow
def test_native_refuses_to_make_a_fork_its_agent_cannot_take_and_auto_loads_restarts(tmp_path: Path, repo: Path):
    """An agent with loadSession but no session/fork (tests/agent/agents/plain_agent.py): under
    history = native a fork is agent_failed and leaves no session; under auto it replays,
    and the agent's restart is a session/load."""
    def plain(name: str) -> list[str]:  # its sessions in the session's own HOME, which the sandbox lets it write
        agent = Path(__file__).parent / "agents" / "plain_agent.py"
        return ["sh", "-c", f'exec "{sys.executable}" "{agent}" --sessions "$HOME/plain-{name}"']
    daemon = Daemon(tmp_path / "state", {"agents": {"strict": {"command": plain("strict"), "history": "native"},
                                                    "loose": {"command": plain("loose")}}}).start()
    try:
        for agent in ("strict", "loose"):
            session = daemon.ok({"kind": "new", "repo": str(repo), "agent": agent, "prompt": "one"})["session"]
            daemon.ok({"kind": "prompt", "session": session, "text": "two"})
            before = set(os.listdir(daemon.state / "sessions"))
            answer = daemon.request({"kind": "fork", "session": session, "user_message_index": 1, "prompt": "x"})
            if agent == "strict":
                assert answer["status"] == "error" and answer["error"]["code"] == "agent_failed"
                assert "did not advertise session/fork" in answer["error"]["message"]
                assert set(os.listdir(daemon.state / "sessions")) == before  # nothing made
            else:
                assert answer["result"]["history"] == "replay" and history_n(daemon, answer["result"]["session"]) == 1
                crashed = daemon.request({"kind": "prompt", "session": session, "text": "exit"})
                assert crashed["error"]["code"] == "agent_failed"
                assert daemon.ok({"kind": "prompt", "session": session, "text": "three"})["history"] == "load"
    finally:
        assert daemon.stop() == 0

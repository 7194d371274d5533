"""A big, realistic session log for the fork-point benchmark, generated once and cached.

The mix is what a long agent session writes: mostly `agent_message_chunk` and
`tool_call` / `tool_call_update` updates (some carrying file contents), and once per
turn a `session/prompt` request, its echoed `user_message_chunk`, the response, a
`turn_complete` and an `agent_checkpoint`, each under the side that sent it (`from`:
the prompt the client's, the updates and the response the agent's, the rest cairnd's).
Deterministic (seeded), so every run of the benchmark reads the same bytes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from cairnd.sessionlog.entries import FROM_AGENT, FROM_CLIENT, cairnd_entry, envelope_line
from measure import CACHE

_VERSION = 3
_SDK = "sdk-bench"
_SESSION = "bench-session"
_WORDS = (
    "the of to and a in is it you that he was for on are with as I his they be at one "
    "have this from or had by hot word but what some we can out other were all there "
    "when up use your how said an each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look more "
    "day could go come did number sound no most people my over know water than call "
    "first who may down side been now find any new work part take get place made live"
).split()

def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))

def _update(update: dict[str, object]) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": "session/update",
            "params": {"sessionId": _SDK, "update": update}}

def _turn_lines(rng: random.Random, turn: int, entries: int, stamp: str) -> list[bytes]:
    """One turn of about `entries` lines."""
    prompt = _text(rng, rng.randint(5, 40))
    lines = [
        envelope_line({"jsonrpc": "2.0", "id": turn + 10, "method": "session/prompt",
                       "params": {"sessionId": _SDK, "prompt": [{"type": "text", "text": prompt}]}},
                      stamp, FROM_CLIENT),
        envelope_line(_update({"sessionUpdate": "user_message_chunk",
                               "content": {"type": "text", "text": prompt}}), stamp, FROM_AGENT),
    ]
    tool = 0
    while len(lines) < entries - 3:
        kind = rng.random()
        if kind < 0.70:
            lines.append(envelope_line(_update({
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": _text(rng, rng.randint(26, 262))}}), stamp, FROM_AGENT))
        elif kind < 0.85:
            tool += 1
            lines.append(envelope_line(_update({
                "sessionUpdate": "tool_call", "toolCallId": f"call-{turn}-{tool}",
                "title": f"Edit src/module_{rng.randint(0, 999)}.py", "kind": "edit",
                "status": "pending",
                "rawInput": {"path": f"src/module_{rng.randint(0, 999)}.py"}}), stamp, FROM_AGENT))
        else:
            body = _text(rng, rng.randint(65, 780))
            lines.append(envelope_line(_update({
                "sessionUpdate": "tool_call_update", "toolCallId": f"call-{turn}-{tool}",
                "status": "completed",
                "content": [{"type": "content", "content": {"type": "text", "text": body}}]}),
                stamp, FROM_AGENT))
    lines.append(envelope_line({"jsonrpc": "2.0", "id": turn + 10,
                                "result": {"stopReason": "end_turn"}}, stamp, FROM_AGENT))
    lines.append(envelope_line(cairnd_entry("_posthog/turn_complete",
                                            {"sessionId": _SESSION, "stopReason": "end_turn"}),
                               stamp))
    sha = f"{turn:040x}"
    lines.append(envelope_line(cairnd_entry("_posthog/agent_checkpoint", {
        "sessionId": _SESSION, "turns": turn + 1, "headSha": sha, "branch": None,
        "indexTree": sha, "worktreeSha": sha, "ref": f"refs/cairnd/{_SESSION}/{turn + 1}",
        "dirty": True, "skipped": []}), stamp))
    return lines

def big_log(entries: int = 1_000_000, turns: int = 3_000, seed: int = 6) -> Path:
    """The cached log of about `entries` lines in `turns` turns (about 1 KB a line)."""
    path = CACHE / f"biglog-v{_VERSION}-{entries}-{turns}-{seed}.ndjson"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stamp = "2026-11-22T10:00:00.123Z"
    tmp = path.with_suffix(".tmp")
    per_turn = max(6, entries // turns)
    with open(tmp, "wb") as f:
        f.write(envelope_line(cairnd_entry("_posthog/sdk_session", {
            "sessionId": _SESSION, "sdkSessionId": _SDK, "adapter": "reference"}), stamp))
        f.write(envelope_line(cairnd_entry("_posthog/agent_checkpoint", {
            "sessionId": _SESSION, "turns": 0, "headSha": "0" * 40, "branch": None,
            "indexTree": "0" * 40, "worktreeSha": "0" * 40,
            "ref": f"refs/cairnd/{_SESSION}/0", "dirty": False, "skipped": []}), stamp))
        for turn in range(turns):
            f.write(b"".join(_turn_lines(rng, turn, per_turn, stamp)))
    os.replace(tmp, path)
    return path

if __name__ == "__main__":
    import sys
    import time

    start = time.perf_counter()
    made = big_log(*(int(a) for a in sys.argv[1:]))
    print(made, made.stat().st_size, f"{time.perf_counter() - start:.1f} s")

"""A second, independent ACP agent for the tests: raw JSON-RPC over stdio, no SDK.

It shows that cairnd's runner depends on the protocol, not on the reference agent. It
advertises `loadSession` and keeps each session's messages in `--sessions DIR`, so a
restarted session is loaded natively (its history replayed as plain, unmarked
`user_message_chunk` / `agent_message_chunk` updates).

Prompt lines:
    ask: TITLE                     session/request_permission with all four option kinds
    ask KIND,KIND: TITLE           ... with only those kinds ("ask none: T" offers no option)
    write PATH: TEXT               fs/write_text_file (PATH as given, not made absolute)
    read PATH                      fs/read_text_file
    invalid                        emits a session/update that does not validate (usage_update, used: null)
    stop: REASON                   ends the turn with stopReason REASON, valid or not
    env: NAME                      replies NAME=<its value in the agent's environment>
    exit                           exits at once with status 3
    anything else                  echoed
Each turn ends with an agent message `history=N`: earlier top-level user messages of the
session, from its stored messages plus those a replayed transcript declared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

# Written byte for byte: the test checks the log holds exactly these bytes.
INVALID_UPDATE = (
    '{"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "%s", '
    '"update": {"sessionUpdate": "usage_update", "used": null, "size": 200000}}}'
)
PERMISSION_KINDS = ("allow_once", "allow_always", "reject_once", "reject_always")


class Agent:
    def __init__(self, sessions: Path) -> None:
        self.sessions = sessions
        self.next_id = 0
        self.backlog: list[dict[str, Any]] = []  # messages read while waiting for a response

    # -- wire -------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def send_raw(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def receive(self) -> dict[str, Any] | None:
        if self.backlog:
            return self.backlog.pop(0)
        while True:
            line = sys.stdin.readline()
            if not line:
                return None
            if line.strip():
                return json.loads(line)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request to the client and wait for its response (result or error)."""
        self.next_id += 1
        request_id = f"agent-{self.next_id}"
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            line = sys.stdin.readline()
            if not line:
                raise SystemExit(0)
            if not line.strip():
                continue
            message = json.loads(line)
            if message.get("id") == request_id and "method" not in message:
                return message
            self.backlog.append(message)

    def update(self, session_id: str, update: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "method": "session/update",
                   "params": {"sessionId": session_id, "update": update}})

    def say(self, session_id: str, text: str, kind: str = "agent_message_chunk") -> None:
        self.update(session_id, {"sessionUpdate": kind, "content": {"type": "text", "text": text}})

    # -- sessions on disk ---------------------------------------------------------------

    def session_file(self, session_id: str) -> Path:
        return self.sessions / f"{session_id}.json"

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.session_file(session_id).read_text())
        except FileNotFoundError:
            return None

    def save(self, session_id: str, state: dict[str, Any]) -> None:
        tmp = self.session_file(session_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.session_file(session_id))

    # -- methods ------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        method, params, request_id = message.get("method"), message.get("params") or {}, message.get("id")
        if method is None:
            return  # a stray response
        if method == "session/cancel":
            return  # turns here are instantaneous: nothing to cancel
        if request_id is None:
            return
        try:
            result = self.dispatch(method, params)
        except LookupError as exc:
            self.send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32002, "message": str(exc)}})
            return
        if result is None:
            self.send({"jsonrpc": "2.0", "id": request_id,
                       "error": {"code": -32601, "message": f"method not found: {method}"}})
            return
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def dispatch(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "initialize":
            return {"protocolVersion": 1,
                    "agentCapabilities": {"loadSession": True, "promptCapabilities": {"embeddedContext": True}},
                    "agentInfo": {"name": "plain-test-agent", "version": "1"}}
        if method == "session/new":
            session_id = "plain-" + uuid.uuid4().hex[:12]
            self.save(session_id, {"cwd": params["cwd"], "messages": [], "replayed": 0})
            return {"sessionId": session_id}
        if method == "session/load":
            state = self.load(params["sessionId"])
            if state is None:
                raise LookupError(f"no session {params['sessionId']}")
            for user, agent in state["messages"]:
                self.say(params["sessionId"], user, "user_message_chunk")
                self.say(params["sessionId"], agent)
            return {}
        if method == "session/prompt":
            return self.prompt(params["sessionId"], params["prompt"])
        return None

    def prompt(self, session_id: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        state = self.load(session_id)
        if state is None:
            raise LookupError(f"no session {session_id}")
        for block in blocks:
            if block.get("type") == "resource":
                state["replayed"] += ((block.get("_meta") or {}).get("cairnd") or {}).get("userMessages", 0)
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        history = state["replayed"] + len(state["messages"])
        state["messages"].append([text, ""])
        self.save(session_id, state)  # before acting: a crash mid-turn still leaves the message
        stop_reason = "end_turn"
        replies = []
        for line in text.splitlines():
            reply, stop = self.act(session_id, line.strip())
            if reply:
                self.say(session_id, reply + "\n")
                replies.append(reply)
            stop_reason = stop or stop_reason
        self.say(session_id, f"history={history}")
        state["messages"][-1][1] = "\n".join(replies)
        self.save(session_id, state)
        return {"stopReason": stop_reason}

    def act(self, session_id: str, line: str) -> tuple[str, str | None]:
        if line == "exit":
            sys.stderr.write("plain agent: exit requested\n")
            sys.stderr.flush()
            os._exit(3)
        if line == "invalid":
            self.send_raw(INVALID_UPDATE % session_id)
            return "sent an invalid update", None
        if line.startswith("env: "):
            name = line[5:].strip()
            return f"{name}={os.environ.get(name, '<unset>')}", None
        if line.startswith("stop: "):
            return "", line[6:].strip()
        if line.startswith("ask"):
            head, _, title = line.partition(": ")
            kinds = PERMISSION_KINDS if head == "ask" else tuple(k for k in head[4:].split(",") if k != "none")
            options = [{"optionId": f"opt-{kind}", "name": kind.replace("_", " "), "kind": kind} for kind in kinds]
            answer = self.request("session/request_permission", {
                "sessionId": session_id, "options": options,
                "toolCall": {"toolCallId": "perm-1", "title": title, "status": "pending"}})
            outcome = (answer.get("result") or {}).get("outcome") or {}
            return f"permission={outcome.get('optionId') or outcome.get('outcome')}", None
        if line.startswith("write ") and ": " in line:
            path, _, content = line[6:].partition(": ")
            answer = self.request("fs/write_text_file",
                                  {"sessionId": session_id, "path": path, "content": content + "\n"})
            return f"write {path}: " + ("ok" if "result" in answer else f"error {answer['error']['code']}"), None
        if line.startswith("read "):
            path = line[5:]
            answer = self.request("fs/read_text_file", {"sessionId": session_id, "path": path})
            if "result" in answer:
                return f"read {path}: {answer['result']['content']!r}", None
            return f"read {path}: error {answer['error']['code']}", None
        return line, None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=Path, required=True)
    args = parser.parse_args()
    args.sessions.mkdir(parents=True, exist_ok=True)
    agent = Agent(args.sessions)
    while (message := agent.receive()) is not None:
        agent.handle(message)


if __name__ == "__main__":
    main()

"""Helpers for driving real third-party ACP agents offline (no conftest magic).

Tests import this module directly. It knows where the npm-installed agents
live, installs them from the lock file when missing, builds the environment
they need, and offers a plain ACP client that records every raw frame and
answers permission requests the way cairnd does by default (`allow_once`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from acp import RequestError, RequestPermissionResponse
from acp.connection import StreamDirection, StreamEvent
from acp.schema import AllowedOutcome, DeniedOutcome, ReadTextFileResponse, WriteTextFileResponse

REALAGENTS_DIR = Path(__file__).resolve().parent
NODE_BIN = REALAGENTS_DIR / "node_modules" / ".bin"

# Variables that must not reach a real agent: as root, IS_SANDBOX makes
# claude-agent-acp ask Claude Code to allow skipping permissions, and the
# CLI then refuses to start at all.
FORBIDDEN_AGENT_ENV = ("IS_SANDBOX",)


def agent_bin(name: str) -> Path:
    return NODE_BIN / name


def claude_agent_bin() -> Path:
    return agent_bin("claude-agent-acp")


def codex_agent_bin() -> Path:
    return agent_bin("codex-acp")


def codex_agent_env(model_env: Mapping[str, str]) -> dict[str, str]:
    """Full environment for codex-acp: ours minus traps, and the stub's variables
    (`ResponsesStub.agent_env`, which also wrote `$CODEX_HOME/config.toml`)."""
    return agent_env(model_env)


def gemini_agent_command() -> list[str]:
    """Gemini CLI speaks ACP with --acp (--experimental-acp is the deprecated spelling)."""
    return [str(agent_bin("gemini")), "--acp"]


def npm_install(timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Install the pinned agents from package-lock.json (a few seconds with a warm cache)."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on PATH")
    return subprocess.run(
        # no install scripts: node-pty/keytar would try node-gyp, and the agents don't need them
        [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=REALAGENTS_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


AGENT_BINS = ("claude-agent-acp", "codex-acp", "gemini")
CODEX_NATIVE = REALAGENTS_DIR / "node_modules" / "@openai" / "codex-linux-x64"  # codex-acp's binary (optional dep)


def _installed() -> bool:
    # The whole lock, not a bin or two: a node_modules from older pins must be redone.
    return all(agent_bin(name).exists() for name in AGENT_BINS) and (
        CODEX_NATIVE.exists() or not sys.platform.startswith("linux"))


def ensure_agents_installed() -> str | None:
    """Install node_modules when missing or from older pins. Returns why real agents
    can't run, or None. One process at a time (a lock on this folder): the test
    workers of a parallel run may all get here first."""
    if _installed():
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed"
    folder = os.open(REALAGENTS_DIR, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if _installed():  # another process installed them while this one waited
            return None
        result = npm_install()
    finally:
        os.close(folder)  # and the lock with it
    if result.returncode != 0 or not _installed():
        return f"npm install failed: {result.stderr.strip()[-500:]}"
    return None


def agent_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment for an agent process: ours, minus traps, plus `extra`.

    Pass the result as `env=` to spawn_agent_process: without it the ACP SDK
    passes only a short safe list and the model URL and key never arrive.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in FORBIDDEN_AGENT_ENV}
    env.update(extra)
    return env


def prepare_claude_home(home: Path) -> Path:
    """A writable HOME for Claude Code that keeps it off the network.

    Claude Code fetches a plugin blocklist from raw.githubusercontent.com at
    start unless its cached copy is under an hour old, and no environment
    variable short of bare mode (which changes the agent) turns that off; a
    fresh cache makes it skip the lookup.
    """
    plugins = home / ".claude" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    fetched_at = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    (plugins / "blocklist.json").write_bytes(orjson.dumps({"fetchedAt": fetched_at, "plugins": []}))
    # claude-agent-acp 0.101 starts sessions in Claude Code's "auto" permission
    # mode (a model decides, nobody is asked); "default" asks the client before
    # Write, Edit and Bash, so the tests see cairnd answer session/request_permission.
    settings = home / ".claude" / "settings.json"
    if not settings.exists():
        settings.write_bytes(orjson.dumps({"permissions": {"defaultMode": "default"}}))
    return home


def claude_agent_env(model_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """Full environment for claude-agent-acp: ours minus traps, the stub's model
    settings (`AnthropicStub.agent_env`), and a prepared HOME."""
    prepare_claude_home(home)
    return agent_env({**model_env, "HOME": str(home)})


def prepare_gemini_home(home: Path) -> Path:
    """A writable HOME for Gemini CLI that keeps it off the network.

    Usage statistics (Clearcut, play.googleapis.com) are the only call Gemini
    CLI 0.61 makes besides the model; they are a setting, not a variable.
    """
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_bytes(
        orjson.dumps(
            {
                "privacy": {"usageStatisticsEnabled": False},
                "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
                "telemetry": {"enabled": False},
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return home


def gemini_agent_env(model_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """Full environment for `gemini --acp`: ours minus traps, the stub's variables
    (`GeminiStub.agent_env`), and a prepared HOME."""
    prepare_gemini_home(home)
    return agent_env({**model_env, "HOME": str(home)})


# --- Claude Code's transcripts (for native load and fork; see NOTES.md) ----------


def claude_project_dir(home: Path, cwd: Path) -> Path:
    """Where Claude Code keeps the transcripts of sessions run in `cwd`.

    It looks sessions up by cwd, so a session loads or forks only where this
    directory holds its transcript. Paths over 200 characters are cut and
    hashed by Claude Code; not reproduced here.
    """
    name = re.sub(r"[^a-zA-Z0-9]", "-", str(cwd))
    if len(name) > 200:
        raise ValueError(f"{cwd}: path too long for this helper")
    return home / ".claude" / "projects" / name


def claude_transcript(home: Path, session_id: str) -> Path:
    """The transcript of a session, whichever cwd it ran in."""
    return next((home / ".claude" / "projects").glob(f"*/{session_id}.jsonl"))


def copy_claude_transcript(home: Path, session_id: str, cwd: Path) -> Path:
    """Make a session loadable and forkable from another cwd (a fork's worktree)."""
    target = claude_project_dir(home, cwd) / f"{session_id}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(claude_transcript(home, session_id), target)
    return target


def claude_assistant_entries(home: Path, session_id: str) -> list[tuple[str, str]]:
    """(uuid, first text or tool name) of each main-thread assistant entry, in order.

    A uuid here is what `_meta.claudeCode.options.resumeSessionAt` takes to
    cut a `session/fork` after that entry.
    """
    found = []
    for line in claude_transcript(home, session_id).read_bytes().splitlines():
        entry = orjson.loads(line)
        if entry.get("type") != "assistant" or entry.get("isSidechain"):
            continue
        content = (entry.get("message") or {}).get("content") or []
        label = next((b.get("text") or b.get("name") for b in content if isinstance(b, dict)), "")
        found.append((entry["uuid"], str(label)))
    return found


def make_git_repo(path: Path, files: Mapping[str, str] | None = None) -> Path:
    """A fresh repository with one commit, and a local identity so commits work anywhere."""
    path.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "agent@cairnd.invalid")
    git("config", "user.name", "cairnd test")
    for name, content in (files or {"README.md": "# demo\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git("add", "-A")
    git("commit", "-q", "-m", "initial")
    return path


def git_status(path: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# --- an ACP client ----------------------------------------------------------------


@dataclass
class Frame:
    direction: str  # "in" (agent -> us) | "out" (us -> agent)
    message: dict[str, Any]


@dataclass
class RecordingClient:
    """ACP client side: records frames, allows tools once, serves fs inside `root`.

    `permission` is the ACP option kind to pick ("allow_once" like cairnd's
    default, or "reject_once"); `on_frame` sees every frame as it crosses.
    """

    root: Path
    permission: str = "allow_once"
    on_frame: Callable[[Frame], None] | None = None
    frames: list[Frame] = field(default_factory=list)
    permission_requests: list[dict[str, Any]] = field(default_factory=list)
    invalid_updates: list[str] = field(default_factory=list)

    def observe(self, event: StreamEvent) -> None:
        direction = "in" if event.direction == StreamDirection.INCOMING else "out"
        frame = Frame(direction, event.message)
        self.frames.append(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def updates(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Raw `session/update` params seen so far, optionally of one `sessionUpdate` kind."""
        found = []
        for frame in self.frames:
            if frame.direction != "in" or frame.message.get("method") != "session/update":
                continue
            params = frame.message.get("params") or {}
            if kind is None or (params.get("update") or {}).get("sessionUpdate") == kind:
                found.append(params)
        return found

    def agent_text(self) -> str:
        return "".join(
            ((p["update"].get("content") or {}).get("text") or "") for p in self.updates("agent_message_chunk")
        )

    # -- Client protocol

    async def request_permission(
        self, options: list[Any], session_id: str, tool_call: Any, **kwargs: Any
    ) -> RequestPermissionResponse:
        self.permission_requests.append(
            {"options": [o.model_dump(by_alias=True) for o in options], "toolCall": tool_call.model_dump(by_alias=True)}
        )
        chosen = next((o for o in options if o.kind == self.permission), None)
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=chosen.option_id))

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        # The raw frame is already recorded by observe(); nothing else to do.
        return None

    async def write_text_file(self, content: str, path: str, session_id: str, **kwargs: Any) -> WriteTextFileResponse:
        target = self._inside(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return WriteTextFileResponse()

    async def read_text_file(
        self, path: str, session_id: str, limit: int | None = None, line: int | None = None, **kwargs: Any
    ) -> ReadTextFileResponse:
        target = self._inside(path)
        if not target.is_file():
            # Gemini CLI tells "new file" from "failure" by this message (see NOTES.md)
            raise RequestError.resource_not_found(path)
        lines = target.read_text().splitlines(keepends=True)
        start = (line or 1) - 1
        end = None if limit is None else start + limit
        return ReadTextFileResponse(content="".join(lines[start:end]))

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None

    def _inside(self, path: str) -> Path:
        target = Path(path).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise RequestError.invalid_params({"path": path, "reason": f"outside {self.root}"})
        return target

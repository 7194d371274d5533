"""The real agent's `initialize` answer for `cairnd acp` (SPEC 18): asked of it confined
(SPEC 16), cached in `<state>/acp/`, and checked as agent-written data before use.

The first editor's `initialize` for a profile starts the agent once as a probe. The probe
is an agent process like a session's: under `sandbox = "worktree"` it runs through the
Landlock launcher, in a scratch directory of its own under the state directory
(`<state>/tmp/acp-probe-<token>/`: an empty working directory, a private HOME seeded as a
session's is, and a TMPDIR), which are all it may write; the scratch is removed after.

What an agent answers is hostile input: `initialize_answer` keeps only the fields cairnd
passes on (the agent's prompt and MCP capabilities as booleans, its auth methods and its
name as short strings), so a cached answer can neither break an editor's `initialize` nor
claim anything on cairnd's behalf (session capabilities are cairnd's own: `advertised`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any

import acp
import anyio
import orjson
from acp.schema import ClientCapabilities, Implementation

from cairnd import __version__
from cairnd.agent.acpclient import WorktreeClient
from cairnd.agent.confinement import Confinement, SandboxSupport
from cairnd.agent.home import private_home
from cairnd.agent.process import READ_CHUNK, Launch, StderrFile, spawn_agent
from cairnd.config.settings import Config
from cairnd.errors import CairnError

PROBE_SECONDS = 60.0  # an agent's `initialize` may wait on its own start (npm, a model's auth)
CACHE_MAX_BYTES = 64 * 1024  # a cached answer larger than this is not read
TEXT_MAX = 200  # a name, id or version
DESCRIPTION_MAX = 2000
AUTH_METHODS_MAX = 16
PROTOCOL_MAX = 1 << 16
# The agent capabilities passed through, each a set of boolean flags; cairnd's own
# (loadSession, sessionCapabilities) are never taken from the agent.
PASSED_CAPABILITIES = {"promptCapabilities": ("image", "audio", "embeddedContext"),
                       "mcpCapabilities": ("http", "sse")}


# -- the functional core ------------------------------------------------------------------


def _text(value: Any, limit: int = TEXT_MAX) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def initialize_answer(answer: Any) -> dict[str, Any]:
    """What cairnd keeps of an agent's `initialize` answer: the fields it passes on, of
    the right types and sizes; anything else is dropped, never an error."""
    if not isinstance(answer, dict):
        return {}
    kept: dict[str, Any] = {}
    version = answer.get("protocolVersion")
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < PROTOCOL_MAX:
        kept["protocolVersion"] = version
    caps = answer.get("agentCapabilities")
    if isinstance(caps, dict):
        passed = {}
        for group, flags in PASSED_CAPABILITIES.items():
            given = caps.get(group)
            if isinstance(given, dict):
                passed[group] = {flag: given[flag] for flag in flags if isinstance(given.get(flag), bool)}
        kept["agentCapabilities"] = passed
    methods = answer.get("authMethods")
    if isinstance(methods, list):
        kept["authMethods"] = []
        for method in methods[:AUTH_METHODS_MAX]:
            if isinstance(method, dict) and _text(method.get("id")) and _text(method.get("name")):
                entry = {"id": _text(method["id"]), "name": _text(method["name"])}
                if _text(method.get("description"), DESCRIPTION_MAX):
                    entry["description"] = _text(method["description"], DESCRIPTION_MAX)
                kept["authMethods"].append(entry)
    info = answer.get("agentInfo")
    if isinstance(info, dict):
        kept["agentInfo"] = {key: _text(info.get(key)) for key in ("name", "title", "version") if _text(info.get(key))}
    return kept


def read_cached_init(path: Path, command: tuple[str, ...]) -> dict[str, Any] | None:
    """The cached initialize answer of the agent started by `command`, if any (checked
    again on reading: the file may be older than these checks, or edited)."""
    try:
        with path.open("rb") as file:
            data = file.read(CACHE_MAX_BYTES + 1)
        if len(data) > CACHE_MAX_BYTES:
            return None
        cached = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or cached.get("command") != list(command):
        return None
    answer = cached.get("initialize")
    return initialize_answer(answer) if isinstance(answer, dict) else None


def write_cached_init(path: Path, command: tuple[str, ...], answer: dict[str, Any]) -> None:
    data = orjson.dumps({"command": list(command), "initialize": initialize_answer(answer)})
    if len(data) > CACHE_MAX_BYTES:
        return  # only a very long command line: asked again next time
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- the imperative shell ------------------------------------------------------------------


def probe_scratch(state_dir: Path) -> Path:
    """A fresh scratch directory for one probe (its working directory, HOME and TMPDIR)."""
    scratch = state_dir / "tmp" / f"acp-probe-{secrets.token_hex(6)}"
    (scratch / "work").mkdir(parents=True, mode=0o700)
    return scratch


def probe_launch(config: Config, profile: str, scratch: Path, support: SandboxSupport) -> Launch:
    """How the probe starts: like a session's agent, with the scratch for its worktree."""
    agent = config.agent(profile)
    work = scratch / "work"
    confinement = None
    if agent.sandbox != "off" and support.available:
        confinement = Confinement(worktree=work, source=work, state_dir=config.layout.root, tmpdir=scratch / "tmp")
    return Launch(session_id="(initialize)", name=agent.name, command=tuple(agent.command), cwd=work,
                  env=dict(agent.env), stderr_path=config.layout.root / "acp" / f"{profile}.stderr",
                  stop_timeout=2.0, confinement=confinement,
                  home=private_home(scratch / "home", agent.env, agent.home_seed, None))


async def probe(config: Config, profile: str, capabilities: ClientCapabilities,
                support: SandboxSupport) -> dict[str, Any]:
    """The real agent's `initialize` answer, checked (`initialize_answer`): it is started
    confined in a scratch directory, asked, stopped, and the scratch removed. Raises
    CairnError agent_failed."""
    agent = config.agent(profile)
    scratch = await anyio.to_thread.run_sync(probe_scratch, config.layout.root)
    try:
        launch = probe_launch(config, profile, scratch, support)
        proc = await spawn_agent(launch)
        pumped = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump_stderr, proc, launch.stderr_path, pumped)
            try:
                conn = acp.connect_to_agent(WorktreeClient(scratch / "work", "reject_once", None), proc.stdin,
                                            proc.stdout, use_unstable_protocol=True)
                try:
                    with anyio.fail_after(PROBE_SECONDS):
                        answer = await conn.initialize(protocol_version=acp.PROTOCOL_VERSION,
                                                       client_capabilities=capabilities,
                                                       client_info=Implementation(name="cairnd", version=__version__))
                except (TimeoutError, ConnectionError, OSError, acp.RequestError, ValueError) as exc:
                    raise CairnError("agent_failed", f"agent {profile!r} ({' '.join(agent.command)}) did not "
                                                     f"answer initialize: {exc or type(exc).__name__}") from None
                return initialize_answer(answer.model_dump(by_alias=True, exclude_none=True))
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(proc)
                    with anyio.move_on_after(2.0):  # what it said last, unless a stray holds the pipe
                        await pumped.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))


async def _pump_stderr(proc: asyncio.subprocess.Process, path: Path, done: anyio.Event) -> None:
    """The probe's stderr into the profile's stderr file (read, so a chatty agent never
    blocks on a full pipe)."""
    assert proc.stderr is not None
    sink = StderrFile(path)
    try:
        while chunk := await proc.stderr.read(READ_CHUNK):
            await anyio.to_thread.run_sync(sink.write, chunk)
    finally:
        sink.close()
        done.set()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        with anyio.fail_after(2.0):
            await proc.wait()
    except TimeoutError:
        pass
    try:  # the whole group: nothing it started outlives the probe
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    await proc.wait()

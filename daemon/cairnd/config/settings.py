"""Configuration (SPEC section 9): the TOML file, its defaults and agent profiles.

An agent profile, `[agents.NAME]`:

    command = ["claude-agent-acp"]   # argv; run with cwd = the session's worktree
    env = { KEY = "value" }          # added to cairnd's own environment for this agent;
                                     # a value replaces cairnd's, "" sets it empty (there
                                     # is no "unset": programs read an empty flag as off,
                                     # e.g. IS_SANDBOX = "" for Claude Code run as root)
    permission = "allow_once"        # answer to session/request_permission: allow_once | reject_once
    fs = true                        # offer the agent ACP's fs/read_text_file and
                                     # fs/write_text_file (confined to the worktree); false
                                     # makes it use its own file tools in its cwd. Gemini
                                     # CLI 0.61 needs false: through fs/* it cannot create
                                     # a new file (google-gemini/gemini-cli#9280)
    sandbox = "worktree"             # confine the agent's writes (SPEC 16): worktree | off
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairnd.errors import CairnError
from cairnd.state.layout import StateLayout
from cairnd.config.fleet import FleetConfig, FleetConfigError, parse_fleet

PERMISSION_POLICIES = ("allow_once", "reject_once")
HISTORY_MODES = ("auto", "native", "replay")  # SPEC 12
SANDBOX_MODES = ("worktree", "off")  # SPEC 16
SYSTEM_CONFIG = Path("/etc/cairnd/cairnd.toml")


@dataclass(frozen=True)
class AgentProfile:
    """How to start one ACP agent: argv, extra environment, answer to permission requests,
    whether cairnd offers it fs/* (see the module docstring)."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    permission: str = "allow_once"
    fs: bool = True
    history: str = "auto"  # how a fork's or restarted agent gets its history (cairnd.history)
    sandbox: str = "worktree"  # confine its writes (cairnd.confinement): worktree | off
    home_seed: tuple[str, ...] | None = None  # what a session's private HOME is seeded with (None: agent/home's)


def reference_profile(state_dir: Path | None = None) -> AgentProfile:
    # Run by the interpreter running cairnd, so it works inside any venv. Its session
    # transcripts (what it resumes and forks natively) live in cairnd's state directory.
    env = {"CAIRND_REFERENCE_STORE": str(StateLayout(state_dir).agent_dir("reference"))} if state_dir else {}
    return AgentProfile("reference", (sys.executable, "-m", "cairnd.agents.reference"), env)


@dataclass(frozen=True)
class WebConfig:
    """`[web]` (SPEC 14): where the web view listens, and its token ("" when not set:
    then the one kept in `<state>/web.token`, cairnd.web.token). `listen` None: not set
    (then `cairnd serve` runs no web view and `cairnd web` listens on DEFAULT_WEB_LISTEN)."""

    listen: str | None = None
    token: str = ""


DEFAULT_WEB_LISTEN = "127.0.0.1:8765"


@dataclass(frozen=True)
class Config:
    state_dir: Path
    max_parallel_turns: int = 4
    max_parallel_forks: int = 2
    default_agent: str = "reference"
    snapshot_max_file_mib: int = 64
    rescan_seconds: float = 30.0
    idle_agent_seconds: float = 600.0
    stop_timeout_seconds: float = 20.0
    watchdog_seconds: float | None = None
    keep_deleted_days: float = 30.0
    agents: dict[str, AgentProfile] = field(default_factory=lambda: {"reference": reference_profile()})
    web: WebConfig = field(default_factory=WebConfig)
    source: Path | None = None
    fleet: FleetConfig | None = None  # [fleet] (SPEC 17); None: one host

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.state_dir)

    @property
    def snapshot_max_file_bytes(self) -> int:
        return self.snapshot_max_file_mib * 1024 * 1024

    def agent(self, name: str | None) -> AgentProfile:
        name = name or self.default_agent
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents))
            raise CairnError("agent_unknown", f"agent {name!r} is not configured (known: {known})") from None


def default_state_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    if environ.get("CAIRND_STATE_DIR"):
        return Path(environ["CAIRND_STATE_DIR"])
    if environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "cairnd"
    return Path.home() / ".local" / "state" / "cairnd"


def config_path(explicit: str | Path | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("CAIRND_CONFIG"):
        return Path(environ["CAIRND_CONFIG"])
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


class ConfigError(Exception):
    """The configuration file is unreadable or wrong: a usage error (exit 2)."""


_TOP_KEYS = {
    "state_dir": str,
    "max_parallel_turns": int,
    "max_parallel_forks": int,
    "default_agent": str,
    "snapshot_max_file_mib": int,
    "rescan_seconds": (int, float),
    "idle_agent_seconds": (int, float),
    "stop_timeout_seconds": (int, float),
    "watchdog_seconds": (int, float),
    "keep_deleted_days": (int, float),
    "agents": dict,
    "web": dict,
    "fleet": dict,
}


def parse_config(data: dict[str, Any], source: Path | None = None,
                 environ: dict[str, str] | os._Environ[str] = os.environ) -> Config:
    """Turn parsed TOML into a Config, rejecting unknown keys and wrong types by name."""
    where = str(source) if source else "config"
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}")
        expected = _TOP_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{where}: {key} = {value!r} has the wrong type")
    for key in ("max_parallel_turns", "max_parallel_forks", "snapshot_max_file_mib"):
        if key in data and data[key] < 1:
            raise ConfigError(f"{where}: {key} = {data[key]!r} must be at least 1")
    if "keep_deleted_days" in data and data["keep_deleted_days"] < 0:
        raise ConfigError(f"{where}: keep_deleted_days = {data['keep_deleted_days']!r} must not be negative")
    for key in ("rescan_seconds", "idle_agent_seconds", "stop_timeout_seconds", "watchdog_seconds"):
        if key in data and data[key] <= 0:
            raise ConfigError(f"{where}: {key} = {data[key]!r} must be positive")
    state_dir = Path(data["state_dir"]).expanduser() if "state_dir" in data else default_state_dir(environ)
    agents = {"reference": reference_profile(state_dir)}
    for name, table in data.get("agents", {}).items():
        agents[name] = _parse_agent(name, table, agents.get(name), where)
    try:
        fleet = parse_fleet(data["fleet"], environ) if "fleet" in data else None
    except FleetConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config = Config(
        state_dir=state_dir,
        agents=agents,
        web=_parse_web(data.get("web", {}), where),
        source=source,
        fleet=fleet,
        **{k: data[k] for k in _TOP_KEYS if k in data and k not in ("state_dir", "agents", "web", "fleet")},
    )
    if config.default_agent not in agents:
        raise ConfigError(f"{where}: default_agent {config.default_agent!r} is not a configured agent")
    return config


def _parse_agent(name: str, table: Any, base: AgentProfile | None, where: str) -> AgentProfile:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [agents.{name}] must be a table")
    unknown = set(table) - {"command", "env", "permission", "fs", "history", "sandbox", "home_seed"}
    if unknown:
        raise ConfigError(f"{where}: [agents.{name}] unknown key {sorted(unknown)[0]!r}")
    command = table.get("command", list(base.command) if base else None)
    if (not isinstance(command, list) or not command
            or not all(isinstance(part, str) and part for part in command)):
        raise ConfigError(f"{where}: [agents.{name}] command must be a non-empty list of strings")
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where}: [agents.{name}] env must map strings to strings")
    env = {**(base.env if base else {}), **env}
    permission = table.get("permission", "allow_once")
    if permission not in PERMISSION_POLICIES:
        raise ConfigError(f"{where}: [agents.{name}] permission {permission!r} is not one of {PERMISSION_POLICIES}")
    fs = table.get("fs", base.fs if base else True)
    if not isinstance(fs, bool):
        raise ConfigError(f"{where}: [agents.{name}] fs = {fs!r} must be true or false")
    history = table.get("history", base.history if base else "auto")
    if history not in HISTORY_MODES:
        raise ConfigError(f"{where}: [agents.{name}] history {history!r} is not one of {HISTORY_MODES}")
    sandbox = table.get("sandbox", base.sandbox if base else "worktree")
    if sandbox not in SANDBOX_MODES:
        raise ConfigError(f"{where}: [agents.{name}] sandbox = {sandbox!r} is not one of {SANDBOX_MODES}")
    home_seed = table.get("home_seed", list(base.home_seed) if base and base.home_seed is not None else None)
    if home_seed is not None and (not isinstance(home_seed, list)
                                  or not all(isinstance(p, str) and p for p in home_seed)):
        raise ConfigError(f"{where}: [agents.{name}] home_seed = {home_seed!r} must be a list of paths "
                          "(relative to the profile's HOME, or absolute)")
    return AgentProfile(name, tuple(command), dict(env), permission, fs, history, sandbox,
                        tuple(home_seed) if home_seed is not None else None)


def is_web_token(token: str) -> bool:
    """It travels in a header, a cookie and a URL: characters all three carry as they are."""
    return bool(token) and all(char.isascii() and (char.isalnum() or char in "-._~+/=") for char in token)


def _parse_web(table: dict[str, Any], where: str) -> WebConfig:
    unknown = set(table) - {"listen", "token"}
    if unknown:
        raise ConfigError(f"{where}: [web] unknown key {sorted(unknown)[0]!r}")
    for key in ("listen", "token"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{where}: [web] {key} = {table[key]!r} must be a string")
    token = table.get("token", "")
    if token and not is_web_token(token):
        raise ConfigError(f"{where}: [web] token may hold only letters, digits and - . _ ~ + / =")
    return WebConfig(table.get("listen"), token)


def load_config(explicit: str | Path | None = None,
                environ: dict[str, str] | os._Environ[str] = os.environ) -> Config:
    path = config_path(explicit, environ)
    if path is None:
        return parse_config({}, None, environ)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return parse_config(data, path, environ)

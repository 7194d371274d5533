"""SPEC 9 and 2: configuration keys and where the state directory is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cairnd.config.settings import ConfigError, default_state_dir, load_config, parse_config
from cairnd.errors import CairnError


def test_defaults_and_the_built_in_reference_agent():
    config = parse_config({}, environ={"CAIRND_STATE_DIR": "/s"})
    assert config.state_dir == Path("/s")
    assert (config.max_parallel_turns, config.max_parallel_forks, config.default_agent) == (4, 2, "reference")
    assert config.snapshot_max_file_bytes == 64 * 1024 * 1024 and config.rescan_seconds == 30
    reference = config.agent(None)
    assert reference.command == (sys.executable, "-m", "cairnd.agents.reference")
    # its transcripts (what it forks and resumes natively) live in the state directory
    assert reference.env == {"CAIRND_REFERENCE_STORE": "/s/agents/reference"} and reference.history == "auto"


@pytest.mark.parametrize("environ, expected", [
    ({"CAIRND_STATE_DIR": "/a", "STATE_DIRECTORY": "/b", "XDG_STATE_HOME": "/c"}, "/a"),
    ({"STATE_DIRECTORY": "/b:/other", "XDG_STATE_HOME": "/c"}, "/b"),
    ({"XDG_STATE_HOME": "/c"}, "/c/cairnd"),
])
def test_state_dir_precedence(environ, expected):
    assert default_state_dir(environ) == Path(expected)


def test_state_dir_falls_back_to_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    assert default_state_dir({}) == Path("/home/me/.local/state/cairnd")


def test_agents_from_toml(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "/x"\ndefault_agent = "claude"\nmax_parallel_forks = 3\n'
                    '[agents.claude]\ncommand = ["claude-agent-acp"]\nenv = { ANTHROPIC_API_KEY = "k" }\n'
                    'permission = "reject_once"\n')
    config = load_config(path, environ={})
    claude = config.agent(None)
    assert claude.command == ("claude-agent-acp",) and claude.env == {"ANTHROPIC_API_KEY": "k"}
    assert claude.permission == "reject_once" and config.max_parallel_forks == 3
    assert "reference" in config.agents and claude.history == "auto"


@pytest.mark.parametrize("history", ["auto", "native", "replay"])
def test_history_per_agent(history):
    config = parse_config({"agents": {"x": {"command": ["a"], "history": history}}}, environ={"CAIRND_STATE_DIR": "/s"})
    assert config.agent("x").history == history


@pytest.mark.parametrize("data", [
    {"max_parallel_turns": 0},
    {"max_parallel_turns": True},
    {"max_parallel_turns": "4"},
    {"rescan_seconds": -1},
    {"unknown_key": 1},
    {"default_agent": "nobody"},
    {"agents": {"x": {"command": []}}},
    {"agents": {"x": {"command": ["a"], "permission": "maybe"}}},
    {"agents": {"x": {"command": ["a"], "env": {"A": 1}}}},
    {"agents": {"x": {"command": ["a"], "cwd": "/"}}},
    {"agents": {"x": {"command": ["a"], "history": "load"}}},
    {"agents": {"x": {"command": ["a"], "history": True}}},
])
def test_bad_config_is_named(data):
    with pytest.raises(ConfigError):
        parse_config(data, environ={"CAIRND_STATE_DIR": "/s"})


def test_unreadable_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("state_dir = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, environ={})


def test_unknown_agent_is_agent_unknown():
    with pytest.raises(CairnError) as info:
        parse_config({}, environ={"CAIRND_STATE_DIR": "/s"}).agent("nobody")
    assert info.value.code == "agent_unknown" and "nobody" in info.value.message

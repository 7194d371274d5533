"""Every agent profile docs/agents.md prints, started as printed: the page's `[agents.X]`
block read from the page itself, the daemon's PATH holding the agents as `npm install
-g` would, and only what the page says a user adds for an endpoint of their own (the
model stub here, offline): `ANTHROPIC_BASE_URL`, `GOOGLE_GEMINI_BASE_URL`, Codex's
model provider with its `base_url`. One turn each, answered by the stub."""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon

from . import anthropic_stub, gemini_stub, responses_stub
from .anthropic_stub import AnthropicStub
from .gemini_stub import GeminiStub
from .harness import NODE_BIN, ensure_agents_installed, make_git_repo, prepare_claude_home, prepare_gemini_home
from .responses_stub import ResponsesStub

pytestmark = [pytest.mark.realagent, pytest.mark.slow]

AGENTS_PAGE = Path(__file__).resolve().parents[3] / "docs" / "agents.md"
TOML = re.compile(r"^```toml\n(.*?)^```$", re.M | re.S)


def printed_toml() -> list[dict[str, Any]]:
    return [tomllib.loads(block) for block in TOML.findall(AGENTS_PAGE.read_text())]


def printed_profile(name: str) -> dict[str, Any]:
    found = [block["agents"][name] for block in printed_toml() if name in block.get("agents", {})]
    assert len(found) == 1, f"docs/agents.md prints [agents.{name}] {len(found)} times"
    return found[0]


def codex_config(base_url: str) -> str:
    """docs/agents.md's `$CODEX_HOME/config.toml`, its base_url pointed at `base_url`."""
    [block] = [b for b in TOML.findall(AGENTS_PAGE.read_text()) if "[model_providers." in b]
    return re.sub(r'^base_url = ".*"$', f'base_url = "{base_url}/v1"', block, flags=re.M)


@pytest.fixture(scope="module")
def agents_installed() -> None:
    problem = ensure_agents_installed()
    if problem:
        pytest.skip(f"real agents unavailable: {problem}")


def run_one_turn(tmp_path: Path, name: str, profile: dict[str, Any], home: Path, stub: Any) -> None:
    repo = make_git_repo(tmp_path / "project", {"README.md": "# demo\n"})
    # The agents on the daemon's PATH, as `npm install -g` leaves them; HOME as the system unit sets it.
    env = {"PATH": f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}
    daemon = Daemon(tmp_path / "state", {"stop_timeout_seconds": 2, "default_agent": name, "agents": {name: profile}},
                    env=env).start()
    try:
        result = daemon.request({"kind": "new", "repo": str(repo), "prompt": "Say hello."}, timeout=180)
        assert result["status"] == "ok", (result, daemon.stderr()[-3000:])
        assert result["result"]["stopReason"] == "end_turn"
        assert stub.main_requests(), ("the agent never called the model",
                                      [(r.kind, r.path, (r.body or {}).get("model")) for r in stub.requests()])
    finally:
        assert daemon.stop() == 0


def test_claude_as_documented(tmp_path: Path, agents_installed: None) -> None:
    profile = printed_profile("claude")
    assert profile["command"] == ["claude-agent-acp"]
    stub = AnthropicStub([anthropic_stub.text("Hello.")]).start()
    try:
        home = prepare_claude_home(tmp_path / "home")
        offline = {key: value for key, value in stub.agent_env(str(home)).items()
                   if key not in ("HOME", "ANTHROPIC_API_KEY")}  # the endpoint and the page's offline switches
        env = {**profile["env"], **offline, "IS_SANDBOX": ""}  # IS_SANDBOX: the page's note for root
        run_one_turn(tmp_path, "claude", {**profile, "env": env}, home, stub)
    finally:
        stub.close()


def test_gemini_as_documented(tmp_path: Path, agents_installed: None) -> None:
    profile = printed_profile("gemini")
    assert profile["command"] == ["gemini", "--acp"] and profile["fs"] is False
    stub = GeminiStub([gemini_stub.text("Hello.")]).start()
    try:
        home = prepare_gemini_home(tmp_path / "home")
        env = {**profile["env"], "GOOGLE_GEMINI_BASE_URL": stub.base_url}
        run_one_turn(tmp_path, "gemini", {**profile, "env": env}, home, stub)
    finally:
        stub.close()


def test_codex_as_documented(tmp_path: Path, agents_installed: None) -> None:
    profile = printed_profile("codex")
    assert profile["command"] == ["codex-acp"]
    stub = ResponsesStub([responses_stub.text("Hello.")]).start()
    try:
        home = tmp_path / "home"
        (home / ".codex").mkdir(parents=True)
        (home / ".codex" / "config.toml").write_text(codex_config(stub.base_url))
        run_one_turn(tmp_path, "codex", profile, home, stub)
    finally:
        stub.close()


def test_goose_as_documented(tmp_path: Path) -> None:
    profile = printed_profile("goose")
    assert profile["command"] == ["goose", "acp"]
    if shutil.which("goose") is None:
        pytest.skip("goose is not installed here")
    pytest.skip("goose has no local model stub here: its provider is configured with `goose configure`")

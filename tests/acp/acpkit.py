"""What the tests of `cairnd acp` share: a repository and state directory of their own,
`cairnd acp` as an editor starts it, and acpx (npm) as the editor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitrepos import git, make_repo

REALAGENTS = Path(__file__).resolve().parents[1] / "scenarios" / "realagents"
ACPX = REALAGENTS / "node_modules" / ".bin" / "acpx"


def cairnd_acp(profile: str | None = None) -> list[str]:
    """The command an editor is configured with: this interpreter's cairnd."""
    return [sys.executable, "-m", "cairnd", "acp"] + (["--agent", profile] if profile else [])


def acp_env(tmp_path: Path, config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRND_")}
    env.update(CAIRND_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path / "home"),
               XDG_STATE_HOME=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "xdgconfig"))
    if config is not None:
        env["CAIRND_CONFIG"] = str(config)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def repo_at(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    return repo


def need_acpx() -> None:
    if not ACPX.exists() or shutil.which("node") is None:
        pytest.skip("acpx is not installed (npm ci in tests/scenarios/realagents)")


def acpx(repo: Path, env: dict[str, str], *args: str, agent: list[str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One acpx command against `cairnd acp`, its queue owner gone at once after it (ttl)."""
    command = " ".join(agent or cairnd_acp())
    return subprocess.run([str(ACPX), "--ttl", "1", "--agent", command, *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)


def head_commit(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").decode().strip()

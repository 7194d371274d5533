"""README.md followed literally: its two set-up commands (the fenced block right after
"## Try it" and the one right after "## Run the tests"), its spool example, and the
names it documents (commands, error codes, configuration keys)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from daemonproc import Daemon
from gitrepos import make_repo

from cairnd.cli.parser import COMMANDS
from cairnd.config.settings import _TOP_KEYS
from cairnd.errors import CODES

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"


def first_block_after(heading: str) -> str:
    """The body of the first fenced code block after the line `heading`."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"^```[a-z]*\n(.*?)^```$", re.M | re.S).search(text, start)
    assert match is not None, f"no code block after {heading!r}"
    return match.group(1)


def ci_commands() -> str:
    text = CI_RUN.read_text()
    return text.split("# --- the commands README.md shows ---\n", 1)[1].split("# --- end ---\n", 1)[0]


def clean_env() -> dict[str, str]:
    """The environment of someone who just cloned the repository: no venv, no cairnd settings."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CAIRND_CONFIG", "CAIRND_STATE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GIT_")}
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def test_the_test_command_is_what_ci_runs():
    block = first_block_after("## Run the tests")
    assert block == ci_commands()
    assert block.count("\n") == 1, "one command, one line"
    script = CI_RUN.read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in script
    assert os.access(CI_RUN, os.X_OK)
    assert "pip install -q -e '.[test]'" in block and "python -m pytest" in block
    assert "npm ci --prefix tests/scenarios/realagents" in block


def test_the_demo_command_installs_and_runs_the_demo():
    block = first_block_after("## Try it")
    assert block.count("\n") == 1, "one command, one line"
    assert "pip install" in block and block.rstrip().endswith("cairnd demo")


@pytest.mark.slow
def test_the_demo_command_works_in_a_fresh_clone(tmp_path: Path):
    """What a newcomer does: clone, paste the command. Runs pip against the configured
    index (slow: about a minute), so it is marked slow; select it with -m slow."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "cairnd"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, env=clean_env())
    command = first_block_after("## Try it")
    proc = subprocess.run(["bash", "-c", command], cwd=clone, env=clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fork_tree = Path(re.search(r"^\s*fork worktree:\s+(/.+)$", proc.stdout, re.M).group(1))
    assert (fork_tree / "idea.txt").read_text() == "maybe greet in French too\nbonjour le monde\n"
    assert (clone / ".venv" / "bin" / "cairnd").exists()
    shutil.rmtree(re.search(r"^To clean up: rm -rf (/.+)$", proc.stdout, re.M).group(1))


def test_the_spool_example_runs_as_written(tmp_path: Path):
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    daemon = Daemon(tmp_path / "state").start()
    daemon.close_socket()  # nobody reads STATUS= updates after READY=1
    try:
        env = {**clean_env(), "CAIRND_STATE_DIR": str(daemon.state)}
        proc = subprocess.run(["bash", "-c", first_block_after("## The spool protocol")], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = orjson.loads(proc.stdout)
        assert result["status"] == "ok" and result["kind"] == "new"
        assert (Path(result["result"]["worktree"]) / "hello.txt").read_text() == "hi\n"
    finally:
        assert daemon.stop() == 0


def test_the_readme_documents_every_command_error_code_and_setting():
    text = README.read_text()
    for command in COMMANDS:
        assert f"`cairnd {command}" in text, command
    for code in CODES:
        assert f"| `{code}` |" in text, code
    for key in _TOP_KEYS:
        assert re.search(rf"^\[?{key}\b", text, re.M), key
    assert "\n## Benchmarks\n" in text
    assert "| benchmark | figure | ratio | target | command |" in text

"""README.md and docs/ followed literally: the README's two set-up commands (the fenced
block right after "## Try it" and the one right after "## Run the tests"), its tour and
web view run as printed, the spool example of docs/cli.md, and the names the docs
document (commands, error codes, configuration keys)."""

from __future__ import annotations

import os
import re
import shutil
import sys
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
DOCS = ROOT / "docs"
CI_RUN = ROOT / ".ci" / "run"


FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```$", re.M | re.S)


def first_block_after(heading: str, page: Path = README) -> str:
    """The body of the first fenced code block after the line `heading`."""
    text = page.read_text()
    start = text.index(f"\n{heading}\n")
    match = FENCE.search(text, start)
    assert match is not None, f"no code block after {heading!r}"
    return match.group(2)


def section(heading: str, page: Path = README) -> str:
    """The text of the section `heading`, up to the next heading of its level."""
    text = page.read_text()
    start = text.index(f"\n{heading}\n") + 1
    level = heading.split(" ", 1)[0]
    end = text.find(f"\n{level} ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def sh_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "sh"]


def documentation() -> str:
    return README.read_text() + "".join(page.read_text() for page in sorted(DOCS.glob("*.md")))


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
    assert "npm install --prefix tests/scenarios/realagents" in block


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


@pytest.mark.slow
def test_the_spool_example_runs_as_written(tmp_path: Path):
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    daemon = Daemon(tmp_path / "state").start()
    daemon.close_socket()  # nobody reads STATUS= updates after READY=1
    try:
        env = {**clean_env(), "CAIRND_STATE_DIR": str(daemon.state)}
        proc = subprocess.run(["bash", "-c", first_block_after("## The spool protocol", DOCS / "cli.md")], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = orjson.loads(proc.stdout)
        assert result["status"] == "ok" and result["kind"] == "new"
        assert (Path(result["result"]["worktree"]) / "hello.txt").read_text() == "hi\n"
    finally:
        assert daemon.stop() == 0


def test_the_docs_document_every_command_error_code_and_setting():
    cli, errors, configuration = ((DOCS / name).read_text() for name in ("cli.md", "errors.md", "configuration.md"))
    for command in COMMANDS:
        assert f"`cairnd {command}" in cli, command
    for code in CODES:
        assert f"| `{code}` |" in errors, code
    for key in _TOP_KEYS:
        assert re.search(rf"^\[?{key}\b", configuration, re.M), key
    assert "| benchmark | figure | ratio | target | command |" in (DOCS / "benchmarks.md").read_text()


def test_the_readme_is_a_front_door():
    """At most 300 lines, and every page it points at is there."""
    text = README.read_text()
    assert text.count("\n") <= 300
    for target in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / target).exists() or target == "docs/editors.md", target
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z-]+\.(?:md|png))\)", page.read_text()):
            assert (DOCS / target).exists() or target == "editors.md", (page.name, target)


def newcomer(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A clone with "Try it"'s venv (this one, linked), and a home with a repository of
    one's own at ~/src/project: where the README's tour starts."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.prefix))
    home = tmp_path / "home"
    make_repo(home / "src" / "project", {"README.md": "# project\n"})
    env = {**clean_env(), "HOME": str(home)}
    env.pop("XDG_STATE_HOME", None)
    subprocess.run(["git", "config", "--global", "user.name", "A Newcomer"], env=env, check=True)
    subprocess.run(["git", "config", "--global", "user.email", "newcomer@example.com"], env=env, check=True)
    return clone, env


def run_as_printed(blocks: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The blocks, word for word, as one shell session that stops at the first failure;
    whatever it left running in the background is stopped at its end."""
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "".join(blocks)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_tour_runs_as_printed(tmp_path: Path):
    blocks = sh_blocks(section("## A tour on your own repository"))
    assert len(blocks) >= 3
    clone, env = newcomer(tmp_path)
    proc = run_as_printed(blocks, clone, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    project = Path(env["HOME"]) / "src" / "project"
    state = Path(env["HOME"]) / ".local" / "state" / "cairnd"
    assert (state / "cairnd.db").exists(), "the tour's state directory is the default one"
    landed = subprocess.run(["git", "-C", str(project), "show", "try-french:greet.py"], capture_output=True,
                            text=True, check=True).stdout
    assert landed == 'print("bonjour")\n'
    assert "cut at message 1" in proc.stdout
    # the user's own checkout is untouched: only the landed branch is new
    status = subprocess.run(["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == ""


@pytest.mark.slow
def test_the_web_view_block_runs_as_printed(tmp_path: Path):
    import socket
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8765)) == 0:
            pytest.skip("something else listens on 127.0.0.1:8765, the README's default")
    blocks = sh_blocks(section("## The web view"))
    assert len(blocks) == 1
    clone, env = newcomer(tmp_path)
    url = re.search(r"# prints (http://127\.0\.0\.1:\d+/)\?token=", blocks[0]).group(1)
    bearer = '-H "Authorization: Bearer $(cat ~/.local/state/cairnd/web.token 2>/dev/null)"'
    wait = f"for i in $(seq 100); do curl -fsS {bearer} {url}api/status >/dev/null 2>&1 && break; sleep 0.1; done\n"
    refused = f"test $(curl -s -o /dev/null -w '%{{http_code}}' {url}api/sessions) = 401\n"
    proc = run_as_printed([*sh_blocks(section("## A tour on your own repository"))[:1], blocks[0], wait,
                           refused, f"curl -fsS {bearer} {url}api/sessions\n"], clone, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    token = (Path(env["HOME"]) / ".local" / "state" / "cairnd" / "web.token").read_text().strip()
    assert f"{url}?token={token}\n" in proc.stdout  # the address printed is the one to open

"""What a newcomer's first hour with the command line runs into: turns counted from 1
wherever a person reads them (turn N is what `@N` and `land --turn N` name), the
checkpoint printed as the checkpoint, a running turn seen by `ls` and `status`, the
dates and numbers of `--json`, deleted sessions, the words of the errors, completion
with `-c`, fish."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemonproc import Daemon
from gitrepos import git_text, vault_of

CAIRND = Path(sys.executable).parent / "cairnd"
if not CAIRND.exists():
    CAIRND = Path(shutil.which("cairnd") or "cairnd")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def env() -> dict[str, str]:
    found = {k: v for k, v in os.environ.items() if k not in ("CAIRND_CONFIG", "CAIRND_STATE_DIR")}
    found["XDG_STATE_HOME"] = "/nonexistent/state-home"
    return found


def cairnd(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CAIRND), "-c", str(d.config), *args], env=env(), capture_output=True, text=True,
                          timeout=120)


def ok(d: Daemon, *args: str) -> str:
    proc = cairnd(d, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ok_json(d: Daemon, *args: str) -> Any:
    return orjson.loads(ok(d, *args, "--json"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    d = Daemon(tmp_path_factory.mktemp("firsthour") / "state", {"keep_deleted_days": 30}).start()
    d.close_socket()
    yield d
    assert d.stop() == 0


@pytest.mark.slow
def test_turn_n_is_what_at_n_and_land_turn_n_name(shared: Daemon, repo: Path):
    out = ok(shared, "new", str(repo), "-m", "write a.txt: one")
    session = re.search(r"^session (\w+)", out, re.M).group(1)
    # prompt's output: turn 1 for the first turn; the checkpoint is the snapshot commit, HEAD is HEAD
    first = re.search(r"^turn (\d+): end_turn; checkpoint (\w{7}), HEAD (\w{7}) \(uncommitted changes\)$", out, re.M)
    assert first is not None, out
    assert first.group(1) == "1"
    ref = f"refs/cairnd/{session}/1"
    vault = vault_of(shared.state, repo)  # checkpoints live in the repository's vault
    assert git_text(vault, "rev-parse", "--short=7", ref) == first.group(2)  # the checkpoint after turn 1
    assert git_text(repo, "rev-parse", "--short=7", "HEAD") == first.group(3)
    assert git_text(vault, "log", "-1", "--format=%s", ref) == f"cairnd checkpoint {session} after turn 1"
    assert git_text(vault, "log", "-1", "--format=%s", f"refs/cairnd/{session}/0") == \
        f"cairnd checkpoint {session} at the start"
    second = ok(shared, "prompt", session, "write b.txt: two\ncommit: add two")
    assert re.search(rf"^session {session} turn 2: end_turn; checkpoint \w{{7}}, HEAD \w{{7}} \(clean\)$", second,
                     re.M), second

    shown = ok(shared, "show", session)
    assert re.findall(r"^turn (\d+) ", shown, re.M) == ["1", "2"]
    # `show`'s turn 1 is `@1` and `land --turn 1`: a.txt, not yet b.txt
    assert "A a.txt" in shown.split("turn 2")[0].split("turn 1")[1]
    stat = ok(shared, "diff", f"{session}@0", f"{session}@1", "--stat")
    assert "a.txt" in stat and "b.txt" not in stat
    ok(shared, "land", session, "--branch", "first-turn", "--turn", "1")
    assert git_text(repo, "ls-tree", "--name-only", "first-turn").split() == ["README.md", "a.txt"]
    assert [t["turn"] for t in ok_json(shared, "show", session)["turns"]] == [1, 2]


def test_prompt_json_has_the_answer(shared: Daemon, repo: Path):
    session = ok_json(shared, "new", str(repo))["result"]["session"]
    result = ok_json(shared, "prompt", session, "hello there")
    assert result["result"]["turn"] == 0  # the spool's result counts from 0 (SPEC 7)
    assert "hello there" in result["result"]["answer"] and "history=0" in result["result"]["answer"]


@pytest.mark.slow
def test_ls_and_status_see_a_running_turn(tmp_path: Path, repo: Path):
    d = Daemon(tmp_path / "state").start()
    d.close_socket()
    try:
        session = d.ok({"kind": "new", "repo": str(repo)})["session"]
        time.sleep(1.2)  # past the status file's throttle: only a turn's start can write it now
        slow = d.drop({"kind": "prompt", "session": session, "text": "sleep: 60"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = ok_json(d, "status")
            if status["turns_in_flight"] == 1:
                break
            time.sleep(0.1)
        assert status["turns_in_flight"] == 1
        assert "1 turn(s) in flight" in ok(d, "status")
        listed = ok_json(d, "ls")
        assert [(s["id"], s["running"], s["state"]) for s in listed] == [(session, True, "ready")]
        assert re.search(rf"^{session}\s.*\srunning\s", ok(d, "ls"), re.M)
        d.ok({"kind": "cancel", "session": session})
        d.wait(slow)
        assert ok_json(d, "ls")[0]["running"] is False
    finally:
        assert d.stop() == 0


def test_json_dates_are_iso_and_days_an_integer(shared: Daemon, repo: Path):
    session = ok_json(shared, "new", str(repo))["result"]["session"]
    row = next(s for s in ok_json(shared, "ls") if s["id"] == session)
    assert ISO.match(row["created_at"]), row
    ok(shared, "rm", session)
    gc = ok_json(shared, "gc", "--dry-run")
    assert gc["keep_deleted_days"] == 30 and isinstance(gc["keep_deleted_days"], int)
    waiting = {w["session"]: w for w in gc["waiting"]}
    assert ISO.match(waiting[session]["deleted_at"]) and ISO.match(waiting[session]["removable_at"])
    text = ok(shared, "gc", "--dry-run")
    assert re.search(r"^\d+ deleted session\(s\) wait out their 30 day\(s\); the first can go from \d{4}-", text,
                     re.M), text
    assert "30.0" not in text


def test_show_of_a_deleted_session_says_its_worktree_is_gone(shared: Daemon, repo: Path):
    result = ok_json(shared, "new", str(repo))["result"]
    ok(shared, "rm", result["session"])
    assert not Path(result["worktree"]).exists()
    shown = ok(shared, "show", result["session"])
    assert f"  worktree  {result['worktree']} (removed)" in shown
    assert ok_json(shared, "show", result["session"])["session"]["worktree_exists"] is False


def test_errors_name_the_flag_the_command_line_has(shared: Daemon, repo: Path):
    session = ok_json(shared, "new", str(repo), "-m", "write a.txt: one\ncommit: one")["result"]["session"]
    # a branch the checkpoint does not descend from: an unrelated history
    ident = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
             "GIT_COMMITTER_EMAIL": "a@b"}
    tree = subprocess.run(["git", "-C", str(repo), "mktree"], input="", capture_output=True, text=True,
                          check=True).stdout.strip()
    orphan = subprocess.run(["git", "-C", str(repo), "commit-tree", tree, "-m", "unrelated"], capture_output=True,
                            text=True, check=True, env=ident).stdout.strip()
    subprocess.run(["git", "-C", str(repo), "branch", "elsewhere", orphan], check=True)
    proc = cairnd(shared, "land", session, "--branch", "elsewhere")
    assert proc.returncode == 1 and "cairnd: branch_exists: " in proc.stderr
    assert "(use --force to move it" in proc.stderr
    # The spool's own wording stays the spool's.
    spooled = shared.request({"kind": "land", "session": session, "branch": "elsewhere"})
    assert "(use force to move it" in spooled["error"]["message"]


def test_a_spool_request_with_a_prefix_says_prefixes_are_the_command_lines(shared: Daemon, repo: Path):
    session = ok_json(shared, "new", str(repo))["result"]["session"]
    failed = shared.request({"kind": "prompt", "session": session[:10], "text": "hi"})
    assert failed["error"]["code"] == "unknown_session"
    assert session in failed["error"]["message"] and "prefixes are the command line's" in failed["error"]["message"]
    nothing = shared.request({"kind": "prompt", "session": "zzzzzzzzzz", "text": "hi"})
    assert "prefix" not in nothing["error"]["message"]


def test_bash_completion_honours_c(shared: Daemon, repo: Path, tmp_path: Path):
    session = ok_json(shared, "new", str(repo))["result"]["session"]
    script = ok(shared, "completion", "bash")
    program = (f"{script}\nCOMP_WORDS=(cairnd -c '{shared.config}' prompt {session[:4]}); COMP_CWORD=4; _cairnd; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    bare = {**env(), "PATH": f"{CAIRND.parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", program], env=bare, capture_output=True, text=True).stdout.split()
    assert session in out


@pytest.mark.slow
def test_fish_completion(shared: Daemon, repo: Path, tmp_path: Path):
    if shutil.which("fish") is None:
        pytest.skip("no fish")
    session = ok_json(shared, "new", str(repo))["result"]["session"]
    script = tmp_path / "cairnd.fish"
    script.write_text(ok(shared, "completion", "fish"))
    bare = {**env(), "PATH": f"{CAIRND.parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}

    def complete(line: str) -> list[str]:
        proc = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C'{line}'"], env=bare,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [entry.split("\t")[0] for entry in proc.stdout.splitlines()]

    assert "prompt" in complete("cairnd pro")
    assert session in complete(f"cairnd -c {shared.config} prompt {session[:4]}")
    assert session in complete(f"cairnd --config={shared.config} show ")
    assert {"--timeout", "--title"} <= set(complete("cairnd fork --ti"))
    assert complete("cairnd completion f") == ["fish"]

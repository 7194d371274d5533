"""SPEC 8 through the installed `cairnd` entry point, run as a subprocess against a real
daemon (tests/daemonproc.py): every command, its --json output, every exit status."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemonproc import Daemon
from gitrepos import git_text, make_repo, tree_state

CAIRND = Path(sys.executable).parent / "cairnd"
if not CAIRND.exists():
    CAIRND = Path(shutil.which("cairnd") or "cairnd")

COMMANDS = ["serve", "demo", "new", "prompt", "fork", "rewind", "land", "diff", "cancel", "rm", "ls", "show", "tree",
            "status", "completion"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAIRND_CONFIG", "CAIRND_STATE_DIR")}
    env["XDG_STATE_HOME"] = "/nonexistent/state-home"  # never the developer's own state
    return env


def cairnd(*args: str, config: Path | None = None, cwd: Path | None = None, input: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [str(CAIRND), *(["-c", str(config)] if config else []), *args]
    return subprocess.run(argv, cwd=cwd, env=clean_env(), input=input, capture_output=True, text=True,
                          timeout=timeout)


def ok_json(*args: str, config: Path, cwd: Path | None = None) -> Any:
    proc = cairnd(*args, "--json", config=config, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def start(d: Daemon) -> Daemon:
    d.start()
    # Nobody reads the notify socket after READY=1: closed, the daemon's later STATUS=
    # datagrams are refused at once instead of filling a queue of 10 and blocking it.
    d.close_socket()
    return d


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon of the test's own, for tests that stop it or count what is in its spool."""
    made = start_daemon()
    made.close_socket()  # as start() does
    return made


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """One daemon for the tests that only add sessions of their own: starting one per
    test would make this file slow."""
    d = start(Daemon(tmp_path_factory.mktemp("shared") / "state"))
    yield d
    assert d.stop() == 0


# --------------------------------------------------------------------------- help and usage


@pytest.mark.slow
def test_help_says_what_each_command_does_and_shows_an_example():
    top = cairnd("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", top.stdout, re.M), command
    assert "examples:" in top.stdout and "cairnd demo" in top.stdout
    for command in COMMANDS:
        proc = cairnd(command, "--help")
        assert proc.returncode == 0, command
        usage, description = proc.stdout.split("\n\n")[:2]
        assert usage.startswith(f"usage: cairnd {command}")
        assert description.strip().endswith(".") and "\n" not in description.strip(), command
        examples = proc.stdout.split("examples:\n", 1)[1]
        assert examples.lstrip().startswith(f"cairnd {command}") or f"cairnd completion" in examples, command
        assert "--json" in proc.stdout and "--config" in proc.stdout
        if command in ("new", "prompt", "fork", "rewind", "land", "cancel", "rm"):
            assert "--no-wait" in proc.stdout and "--timeout" in proc.stdout


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["fork", "s1"],                      # --at is required
    ["fork", "s1", "--at", "one"],
    ["prompt", "s1"],                    # TEXT is missing
    ["prompt", "s1", "x", "--timeout", "-1"],
    ["new"],
    ["completion", "tcsh"],
    ["rewind", "s1"],                    # --at is required
    ["land", "s1"],                      # --branch is required
    ["land", "s1", "--branch", "b", "--turn", "x"],
    ["diff"],
])
def test_usage_errors_exit_2(args: list[str], tmp_path: Path):
    proc = cairnd(*args, config=Daemon(tmp_path / "state").config)
    assert proc.returncode == 2, proc
    assert proc.stderr and proc.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["ls"], ["serve"], ["prompt", "s1", "x", "--no-wait"]])
def test_a_bad_configuration_is_a_usage_error(command: list[str], tmp_path: Path):
    missing = cairnd(*command, config=tmp_path / "missing.toml")
    assert missing.returncode == 2 and "missing.toml" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("max_parallel_turns = 'many'\n")
    wrong = cairnd(*command, config=bad)
    assert wrong.returncode == 2 and "max_parallel_turns" in wrong.stderr


def test_common_options_go_before_or_after_the_command(shared: Daemon):
    before = subprocess.run([str(CAIRND), "-c", str(shared.config), "--json", "status"], env=clean_env(),
                            capture_output=True, text=True)
    after = subprocess.run([str(CAIRND), "status", "-c", str(shared.config), "--json"], env=clean_env(),
                           capture_output=True, text=True)
    assert orjson.loads(before.stdout)["running"] is True
    assert orjson.loads(after.stdout)["running"] is True


# --------------------------------------------------------------------------- request commands


@pytest.mark.slow
def test_new_prompt_fork_cancel_rm_with_json(shared: Daemon, repo: Path, tmp_path: Path):
    config = shared.config
    # A relative REPO is made absolute: the spool only takes absolute paths.
    new = ok_json("new", "project", "--title", "demo", "-m", "write a.txt: one\ncommit: add a",
                  config=config, cwd=tmp_path)
    assert new["kind"] == "new" and new["status"] == "ok"
    assert new["request"]["repo"] == str(repo) and new["request"]["title"] == "demo"
    assert re.fullmatch(r"cli-\d{8}T\d{6}-[0-9a-f]{8}", new["id"])
    session = new["result"]["session"]
    assert new["result"]["turn"] == 0 and new["result"]["stopReason"] == "end_turn"
    assert new["result"]["headSha"] == git_text(repo, "rev-parse", "HEAD")

    second = ok_json("prompt", session, "write b.txt: two\nwrite a.txt: changed", config=config)
    assert second["result"]["turn"] == 1 and second["result"]["checkpoint"]["dirty"] is True
    # TEXT '-' reads the prompt from stdin; a unique prefix names the session.
    third = cairnd("prompt", session[:12], "-", "--json", config=config, input="delete b.txt\n")
    assert third.returncode == 0, third.stderr
    assert orjson.loads(third.stdout)["request"] == {"kind": "prompt", "session": session, "text": "delete b.txt\n"}

    fork = ok_json("fork", session, "--at", "2", "--title", "other way", config=config)["result"]
    assert fork["parent"] == session and fork["user_message_index"] == 2 and fork["state"] == "checkpoint"
    assert fork["prefill"] == "delete b.txt\n" and fork["title"] == "other way"
    files = tree_state(Path(fork["worktree"]))
    assert files[b"a.txt"][1] == b"changed\n" and files[b"b.txt"][1] == b"two\n"

    cancel = ok_json("cancel", session, config=config)
    assert cancel["kind"] == "cancel" and cancel["result"] == {"session": session, "cancelled": False}
    rm = ok_json("rm", session, config=config)
    assert rm["kind"] == "delete" and rm["result"]["session"] == session
    assert not Path(new["result"]["worktree"]).exists()
    kept = ok_json("rm", fork["session"], "--keep-worktree", config=config)
    assert kept["request"]["keep_worktree"] is True and Path(fork["worktree"]).is_dir()


@pytest.mark.slow
def test_rewind_diff_land_show_tree(shared: Daemon, repo: Path):
    config = shared.config
    session = ok_json("new", str(repo), "--title", "plan", "-m", "write a.txt: one", config=config)["result"]["session"]
    ok_json("prompt", session, "write a.txt: two\nwrite b.bin: x", config=config)
    fork = ok_json("fork", session, "--at", "1", "-m", "write c.txt: three", config=config)["result"]

    files = ok_json("diff", fork["session"], session, config=config)
    assert {f["path"]: f["status"] for f in files} == {"a.txt": "M", "b.bin": "A", "c.txt": "D"}
    assert set(files[0]) >= {"path", "status", "added", "removed", "binary"}
    unified = cairnd("diff", f"{session}@1", session, config=config)
    assert unified.returncode == 0 and "-one\n+two\n" in unified.stdout and "diff --git a/b.bin" in unified.stdout
    stat = cairnd("diff", fork["session"], "--stat", config=config)  # against the parent at the cut
    assert stat.returncode == 0 and "c.txt" in stat.stdout and "a.txt" not in stat.stdout
    assert cairnd("diff", f"{session}@9", config=config).returncode == 2

    landed = ok_json("land", session, "--branch", "cli/landed", config=config)["result"]
    assert git_text(repo, "show", f"{landed['commit']}:a.txt") == "two"
    refused = cairnd("land", session, "--branch", "main", config=config)
    assert refused.returncode == 1 and "branch_checked_out" in refused.stderr
    human = cairnd("land", session, "--branch", "cli/landed", config=config)
    assert human.returncode == 0 and "branch cli/landed" in human.stdout and "unchanged" in human.stdout

    rewound = ok_json("rewind", session, "--at", "1", "-m", "write d.txt: four", config=config)["result"]
    assert rewound["session"] == session and rewound["turn"] == 1 and rewound["history"] == "native"
    shown = cairnd("show", session, config=config).stdout
    assert f"rewound here: the turns that followed are in session {rewound['abandoned']}" in shown
    tree = cairnd("tree", session, config=config).stdout
    assert re.search(rf"{rewound['abandoned']}\s+plan \(before rewind 1\)\s+left behind by a rewind to message 1",
                     tree), tree
    assert ok_json("show", rewound["abandoned"], config=config)["session"]["turns"] == 2


@pytest.mark.slow
def test_human_summaries(shared: Daemon, repo: Path):
    config = shared.config
    new = cairnd("new", str(repo), "-m", "write a.txt: one", config=config)
    assert new.returncode == 0 and new.stderr == ""  # no progress noise when stderr is not a terminal
    session = re.search(r"^session (\S+) \(project\)$", new.stdout, re.M).group(1)
    assert re.search(r"^  worktree  /\S+/project$", new.stdout, re.M)
    assert "turn 1: end_turn; checkpoint" in new.stdout and "uncommitted changes" in new.stdout
    assert "history=0" in new.stdout  # the agent's answer

    prompt = cairnd("prompt", session, "commit: a", config=config)
    assert prompt.stdout.startswith(f"session {session} turn 2: end_turn;") and "(clean)" in prompt.stdout
    fork = cairnd("fork", session, "--at", "1", config=config)
    assert f"fork of {session} at message 1" in fork.stdout and "prefill   commit: a" in fork.stdout
    assert "files from the checkpoint before that message" in fork.stdout
    assert cairnd("cancel", session, config=config).stdout == f"session {session}: no turn was running\n"
    assert cairnd("rm", session, config=config).stdout == f"session {session} deleted\n"


@pytest.fixture(scope="module")
def one_turn(shared: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    repo = make_repo(tmp_path_factory.mktemp("one-turn") / "project", {"README.md": "hello\n"})
    session = shared.ok({"kind": "new", "repo": str(repo), "prompt": "write a: 1"})["session"]
    return {"s": session, "repo": str(repo)}


@pytest.mark.parametrize("args, code, words", [
    (["fork", "{s}", "--at", "5"], "fork_out_of_range", "user_message_index 5"),
    (["fork", "{s}", "--at", "-1"], "fork_out_of_range", "user_message_index -1"),
    (["prompt", "nosuchsession", "hi"], "unknown_session", "nosuchsession"),
    (["new", "/nonexistent/repo"], "repo_not_found", "/nonexistent/repo"),
    (["new", "{repo}", "--agent", "nobody"], "agent_unknown", "nobody"),
    (["new", "{repo}", "--ref", "no-such-branch"], "bad_ref", "no-such-branch"),
])
def test_a_failed_request_exits_1_with_its_code_on_stderr(shared: Daemon, one_turn: dict[str, str],
                                                          args: list[str], code: str, words: str):
    argv = [a.format(**one_turn) for a in args]
    proc = cairnd(*argv, config=shared.config)
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith(f"cairnd: {code}: ") and words in proc.stderr
    assert proc.stdout == ""
    as_json = cairnd(*argv, "--json", config=shared.config)
    assert as_json.returncode == 1 and as_json.stderr.startswith(f"cairnd: {code}: ")
    result = orjson.loads(as_json.stdout)
    assert result["status"] == "error" and result["error"]["code"] == code


def test_deleted_session_and_ambiguous_prefix(shared: Daemon, repo: Path):
    first = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    shared.ok({"kind": "new", "repo": str(repo)})
    shared.ok({"kind": "delete", "session": first})
    gone = cairnd("prompt", first, "hi", config=shared.config)
    assert gone.returncode == 1 and gone.stderr.startswith("cairnd: session_deleted: ")
    # Both ids start with the same milliseconds prefix "01": the CLI will not guess.
    ambiguous = cairnd("prompt", first[:1], "hi", config=shared.config)
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr


def test_cancel_from_the_command_line_stops_a_running_turn(shared: Daemon, repo: Path):
    session = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    slow = cairnd("prompt", session, "sleep: 60", "--no-wait", config=shared.config).stdout.strip()
    deadline = time.monotonic() + 30
    while True:
        cancel = ok_json("cancel", session, config=shared.config)["result"]
        if cancel["cancelled"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert cancel["cancelled"] is True
    assert shared.wait(slow)["result"]["stopReason"] == "cancelled"


def test_timeout_exits_3_and_says_the_daemon_is_not_running(tmp_path: Path):
    stopped = Daemon(tmp_path / "state")  # configured, never started
    proc = cairnd("prompt", "s1", "hi", "--timeout", "0.3", config=stopped.config)
    assert proc.returncode == 3
    assert "no result for request cli-" in proc.stderr and "daemon is not running" in proc.stderr
    assert "still queued in new/" in proc.stderr
    assert len(list((stopped.spool / "new").iterdir())) == 1


def test_timeout_while_the_daemon_runs_says_so(shared: Daemon, repo: Path):
    session = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    proc = cairnd("prompt", session, "sleep: 30", "--timeout", "0.5", config=shared.config)
    assert proc.returncode == 3
    assert f"the daemon is running (pid {shared.proc.pid})" in proc.stderr
    assert shared.ok({"kind": "cancel", "session": session})["session"] == session


@pytest.mark.slow
def test_no_wait_with_the_daemon_stopped_then_picked_up(tmp_path: Path, repo: Path):
    daemon = Daemon(tmp_path / "state")
    queued = cairnd("new", str(repo), "-m", "write later.txt: queued", "--no-wait", config=daemon.config)
    assert queued.returncode == 0 and queued.stderr == ""
    request_id = queued.stdout.strip()
    assert re.fullmatch(r"cli-\d{8}T\d{6}-[0-9a-f]{8}", request_id)
    assert (daemon.spool / "new" / f"{request_id}.json").exists()
    as_json = orjson.loads(cairnd("cancel", "s1", "--no-wait", "--json", config=daemon.config).stdout)
    assert as_json["status"] == "queued" and Path(as_json["path"]).exists()

    status = ok_json("status", config=daemon.config)
    assert status["running"] is False and status["spool"]["new"] == 2
    start(daemon)
    try:
        result = daemon.wait(request_id)
        assert result["status"] == "ok"
        assert (Path(result["result"]["worktree"]) / "later.txt").read_text() == "queued\n"
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_progress_is_drawn_on_a_terminal(shared: Daemon, repo: Path):
    session = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([str(CAIRND), "-c", str(shared.config), "prompt", session, "sleep: 0.5"],
                                env=clean_env(), stdout=subprocess.PIPE, stderr=follower, text=True)
        os.close(follower)
        seen = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert f"prompt {session}: ".encode() in seen and b"\x1b[K" in seen
    assert seen.endswith(b"\r\x1b[K")  # the spinner line is wiped before the summary
    assert out.startswith(f"session {session} turn 1")


# --------------------------------------------------------------------------- read commands


@pytest.fixture(scope="module")
def lineage(shared: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A session with three turns, a fork of it, and a fork of the fork (read only)."""
    repo = make_repo(tmp_path_factory.mktemp("lineage") / "project", {"README.md": "hello\n"})
    root = shared.ok({"kind": "new", "repo": str(repo), "title": "plan", "prompt": "write a.txt: one\ncommit: a"})
    session = root["session"]
    shared.ok({"kind": "prompt", "session": session, "text": "write b.txt: two\nwrite a.txt: changed"})
    shared.ok({"kind": "prompt", "session": session, "text": "delete b.txt"})
    fork = shared.ok({"kind": "fork", "session": session, "user_message_index": 2})
    grandchild = shared.ok({"kind": "fork", "session": fork["session"], "user_message_index": 1,
                            "prompt": "write c.txt: three"})
    return {"root": session, "root_worktree": root["worktree"], "fork": fork["session"],
            "grandchild": grandchild["session"]}


def test_ls(shared: Daemon, lineage: dict[str, Any]):
    ids = [lineage["root"], lineage["fork"], lineage["grandchild"]]
    rows = {row["id"]: row for row in ok_json("ls", config=shared.config)}
    assert [i for i in rows if i in ids] == ids  # oldest first
    root, fork, grandchild = (rows[i] for i in ids)
    assert (root["title"], root["turns"], root["state"], root["parent"]) == ("plan", 3, "ready", None)
    assert (fork["title"], fork["turns"], fork["parent"]) == ("plan (fork 1)", 2, lineage["root"])
    assert (grandchild["turns"], grandchild["parent"]) == (2, lineage["fork"])
    assert Path(root["worktree"]) == Path(lineage["root_worktree"]) and root["agent"] == "reference"

    text = cairnd("ls", config=shared.config).stdout.splitlines()
    assert text[0].split() == ["ID", "TITLE", "TURNS", "STATE", "PARENT"]
    assert [lineage["root"], "plan", "3", "ready", "-"] in [line.split() for line in text]
    assert cairnd("ls", "-q", config=shared.config).stdout.split() == list(rows)


def test_show_lists_turns_with_checkpoints_and_changed_files(shared: Daemon, lineage: dict[str, Any]):
    shown = ok_json("show", lineage["root"], config=shared.config)
    assert shown["session"]["id"] == lineage["root"] and shown["session"]["fork_of"] is None
    turns = shown["turns"]
    assert [t["prompt"] for t in turns] == ["write a.txt: one\ncommit: a", "write b.txt: two\nwrite a.txt: changed",
                                            "delete b.txt"]
    assert [t["stopReason"] for t in turns] == ["end_turn"] * 3
    assert [t["dirty"] for t in turns] == [False, True, True]
    head = git_text(Path(lineage["root_worktree"]), "rev-parse", "HEAD")
    assert [t["headSha"] for t in turns] == [head] * 3
    assert [t["changes"] for t in turns] == [
        [{"status": "A", "path": "a.txt"}],
        [{"status": "M", "path": "a.txt"}, {"status": "A", "path": "b.txt"}],
        [{"status": "D", "path": "b.txt"}],
    ]
    assert not any(t["inherited"] for t in turns)

    text = cairnd("show", lineage["root"], config=shared.config).stdout
    assert f"session {lineage['root']} (plan): ready, 3 turns" in text
    assert f"turn 2  end_turn  head {head[:7]}  dirty" in text  # the second turn: @2
    assert "  > write b.txt: two / write a.txt: changed\n  M a.txt\n  A b.txt" in text

    grandchild = ok_json("show", lineage["grandchild"], config=shared.config)
    fork_of = grandchild["session"]["fork_of"]
    assert (fork_of["parent"], fork_of["user_message_index"], fork_of["parent_exists"]) == (lineage["fork"], 1, True)
    assert [t["inherited"] for t in grandchild["turns"]] == [True, False]
    assert grandchild["turns"][1]["changes"] == [{"status": "A", "path": "c.txt"}]
    assert "(kept from the parent)" in cairnd("show", lineage["grandchild"], config=shared.config).stdout


def test_tree_draws_lineage_with_cut_ordinals(shared: Daemon, lineage: dict[str, Any]):
    [root] = [tree for tree in ok_json("tree", config=shared.config) if tree["id"] == lineage["root"]]
    assert root["parent_exists"] is None and root["user_message_index"] is None
    [fork] = root["children"]
    assert (fork["id"], fork["user_message_index"], fork["parent_exists"]) == (lineage["fork"], 2, True)
    [grandchild] = fork["children"]
    assert (grandchild["id"], grandchild["user_message_index"]) == (lineage["grandchild"], 1)

    text = cairnd("tree", lineage["grandchild"][:20], config=shared.config).stdout.splitlines()
    assert text == [
        f"{lineage['root']}  plan  3 turns",
        f"`-- {lineage['fork']}  plan (fork 1)  cut at message 2  2 turns",
        f"    `-- {lineage['grandchild']}  plan (fork 2)  cut at message 1  2 turns  <",
    ]


@pytest.mark.slow
def test_ls_and_tree_after_the_parent_is_deleted(shared: Daemon, repo: Path):
    root = shared.ok({"kind": "new", "repo": str(repo), "title": "gone", "prompt": "write a: 1"})["session"]
    shared.ok({"kind": "prompt", "session": root, "text": "write a: 2"})
    fork = shared.ok({"kind": "fork", "session": root, "user_message_index": 1})["session"]
    other = shared.ok({"kind": "fork", "session": root, "user_message_index": 0})["session"]
    shared.ok({"kind": "delete", "session": root})

    ids = [row["id"] for row in ok_json("ls", config=shared.config)]
    assert root not in ids and fork in ids
    assert {"id": root, "state": "deleted"}.items() <= next(
        row for row in ok_json("ls", "--all", config=shared.config) if row["id"] == root).items()
    [tree] = ok_json("tree", fork, config=shared.config)
    assert tree["id"] == root and tree["state"] == "deleted" and tree["title"] == "gone"
    assert [(c["id"], c["parent_exists"], c["user_message_index"]) for c in tree["children"]] == [
        (fork, False, 1), (other, False, 0)]
    text = cairnd("tree", fork, config=shared.config).stdout.splitlines()
    assert text[0] == f"{root}  gone  2 turns  [deleted]"
    assert text[1] == f"|-- {fork}  gone (fork 1)  cut at message 1  1 turn  [parent deleted]  <"
    assert text[2] == f"`-- {other}  gone (fork 2)  cut at message 0  0 turns  [parent deleted]"
    shown = ok_json("show", fork, config=shared.config)["session"]["fork_of"]
    assert shown["parent_exists"] is False and shown["parent_title"] == "gone"


@pytest.mark.slow
def test_status(daemon: Daemon, repo: Path):
    daemon.ok({"kind": "new", "repo": str(repo)})
    daemon.request({"kind": "new", "repo": "/nonexistent"})
    status = ok_json("status", config=daemon.config)
    assert status["running"] is True and status["pid"] == daemon.proc.pid
    assert status["state_dir"] == str(daemon.state) and status["config"] == str(daemon.config)
    assert status["spool"] == {"new": 0, "cur": 0, "done": 1, "failed": 1}
    assert isinstance(status["turns_in_flight"], int) and isinstance(status["active_agents"], int)
    assert status["sessions"] == {"ready": 1, "deleted": 0} and status["started_at"]
    text = cairnd("status", config=daemon.config).stdout
    assert text.startswith(f"cairnd is running (pid {daemon.proc.pid}")
    assert "0 new, 0 in progress, 1 done, 1 failed" in text

    assert daemon.stop() == 0
    stopped = ok_json("status", config=daemon.config)
    assert stopped["running"] is False and stopped["pid"] is None and stopped["turns_in_flight"] == 0
    assert cairnd("status", config=daemon.config).stdout.startswith("cairnd is not running")


def test_read_commands_on_a_state_dir_no_daemon_ever_used(tmp_path: Path):
    config = Daemon(tmp_path / "state").config
    assert ok_json("ls", config=config) == []
    assert ok_json("tree", config=config) == []
    assert ok_json("status", config=config)["running"] is False
    assert not (tmp_path / "state").exists()  # reading creates nothing


def test_show_of_an_unknown_session_exits_1(shared: Daemon):
    proc = cairnd("show", "nosuchsession", config=shared.config)
    assert proc.returncode == 1 and proc.stderr.startswith("cairnd: unknown_session: ")


def test_turns_in_flight_while_a_turn_runs(shared: Daemon, repo: Path):
    session = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    slow = shared.drop({"kind": "prompt", "session": session, "text": "sleep: 60"})
    deadline = time.monotonic() + 30
    status = ok_json("status", config=shared.config)
    while status["turns_in_flight"] != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        status = ok_json("status", config=shared.config)
    assert status["turns_in_flight"] == 1 and status["spool"]["cur"] == 1
    shared.ok({"kind": "cancel", "session": session})
    shared.wait(slow)


# --------------------------------------------------------------------------- completion


def test_bash_completion_completes_commands_options_and_sessions(shared: Daemon, repo: Path):
    session = shared.ok({"kind": "new", "repo": str(repo)})["session"]
    script = cairnd("completion", "bash").stdout
    assert "complete -F _cairnd cairnd" in script
    if shutil.which("bash") is None:
        pytest.skip("no bash")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _cairnd; "
                   "printf '%s\\n' \"${COMPREPLY[@]}\"")
        env = {**clean_env(), "PATH": f"{CAIRND.parent}:{os.environ['PATH']}", "CAIRND_CONFIG": str(shared.config)}
        return subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True).stdout.split()

    assert complete("cairnd", "fo") == ["fork"]
    assert sorted(complete("cairnd", "fork", "--ti")) == ["--timeout", "--title"]
    assert session in complete("cairnd", "show", "")
    assert complete("cairnd", "completion", "z") == ["zsh"]
    zsh = cairnd("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -F _cairnd cairnd" in zsh

"""SPEC 6 when the disk misbehaves: an unwritable done/ or failed/, a full file system,
and forks whose steps fail part-way. The daemon says what is wrong on stderr, loses
no request (each is answered once the trouble clears), and a fork that fails leaves
nothing behind.

Tests run as root, where permission bits stop nothing: trouble is made by replacing a
directory with a file, by read-only bind mounts and by a small tmpfs. Mounting needs
CAP_SYS_ADMIN; those tests skip, saying so, where it is not allowed.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from cairnd.errors import internal_error_text
from daemonproc import Daemon
from gitrepos import cairnd_refs, git_text, session_worktrees, vault_of
from test_crash import audit, eventually, restart


def mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True)


def umount(path: Path) -> None:
    # Lazy: an agent or git may still have its cwd there for a moment.
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def mounting_allowed(tmp_path: Path) -> str | None:
    """None if this process may mount a tmpfs, else why not."""
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    proc = mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    if proc.returncode != 0:
        return f"cannot mount here: {proc.stderr.decode(errors='replace').strip() or proc.returncode}"
    umount(probe)
    return None


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` becomes read-only for everyone, root included (a read-only bind mount)."""
    if mount("--bind", str(path), str(path)).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        proc = mount("-o", "remount,bind,ro", str(path))
        assert proc.returncode == 0, proc.stderr
        yield
    finally:
        umount(path)


@contextmanager
def replaced_by_a_file(path: Path) -> Iterator[None]:
    """`path` (a directory) is a regular file for a while: every write below it fails."""
    away = path.with_name(path.name + ".away")
    path.rename(away)
    path.write_text("not a directory\n")
    try:
        yield
    finally:
        path.unlink()
        away.rename(path)


def error_lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.stderr().splitlines() if line.startswith("<3>")]


def wait_error_line(daemon: Daemon, needle: str, timeout: float = 30, levels: tuple[str, ...] = ("<3>",)) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.stderr().splitlines():
            if line.startswith(levels) and needle in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no error line with {needle!r}: {daemon.stderr()[-3000:]}")


def stop(daemon: Daemon) -> None:
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]


pytestmark = pytest.mark.repo(files={"README.md": "hello\n", "log.txt": "start\n"})


# -- results that cannot be written, for a while ------------------------------------------


@pytest.mark.parametrize("folder, request_", [
    ("done", {"kind": "cancel", "session": "SESSION"}),
    ("failed", {"kind": "cancel", "session": "nosuchsession"}),
    ("failed", b"{not json"),
])
def test_a_result_folder_that_is_not_a_directory_delays_the_result_and_loses_nothing(
        daemon: Daemon, repo: Path, folder: str, request_: dict | bytes):
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    if isinstance(request_, dict):
        request_ = {k: (session if v == "SESSION" else v) for k, v in request_.items()}
    with replaced_by_a_file(daemon.spool / folder):
        rid = daemon.drop(request_)
        line = wait_error_line(daemon, f"cannot publish the result of {rid}.json")
        assert "Not a directory" in line
        assert os.listdir(daemon.spool / "cur") == [f"{rid}.json"]  # kept, not dropped
    result = daemon.wait(rid, timeout=30)
    assert result["id"] == rid
    eventually(lambda: os.listdir(daemon.spool / "cur") == [])
    assert sorted(os.listdir(daemon.spool / folder)).count(f"{rid}.json") == 1
    assert daemon.ok({"kind": "cancel", "session": session})["cancelled"] is False


def test_a_read_only_done_folder_delays_the_result_and_loses_nothing(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    with read_only(daemon.spool / "done"):
        rid = daemon.drop({"kind": "prompt", "session": session, "text": "append log.txt: once"})
        line = wait_error_line(daemon, f"cannot publish the result of {rid}.json")
        assert "Read-only file system" in line
    result = daemon.wait(rid, timeout=30)
    assert result["status"] == "ok" and result["result"]["turn"] == 0
    assert daemon.ok({"kind": "prompt", "session": session, "text": "hello"})["turn"] == 1
    worktree = daemon.state / "worktrees" / session / repo.name
    assert (worktree / "log.txt").read_text() == "start\nonce\n"  # the turn ran once


@pytest.mark.slow
def test_stopping_while_a_result_cannot_be_written_leaves_it_for_the_next_start(daemon: Daemon, repo: Path):
    with replaced_by_a_file(daemon.spool / "failed"):
        rid = daemon.drop({"kind": "cancel", "session": "nosuchsession"})
        wait_error_line(daemon, f"cannot publish the result of {rid}.json")
        assert daemon.stop() == 0  # it does not wait for the disk
        assert os.listdir(daemon.spool / "cur") == [f"{rid}.json"]
    restart(daemon)
    assert daemon.wait(rid)["error"]["code"] == "unknown_session"


# -- a full file system --------------------------------------------------------------------


def fill(directory: Path) -> Path:
    """Write until the file system is full; the filler file, to delete to make room."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    # The last partial block: fill what remains byte-wise small files can still take.
    return filler


@contextmanager
def daemon_on_a_small_disk(tmp_path: Path) -> Iterator[Daemon]:
    """A started daemon whose state directory is an 8 MB tmpfs (its stderr stays
    outside), killed if still up and the disk unmounted at the end; skips where
    mounting is not allowed."""
    reason = mounting_allowed(tmp_path)
    if reason:
        pytest.skip(reason)
    disk = tmp_path / "state"
    disk.mkdir()
    assert mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)).returncode == 0
    daemon = Daemon(disk)
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()
        umount(disk)


@pytest.mark.slow
def test_a_full_disk_loses_no_request_and_makes_no_half_session(tmp_path: Path, repo: Path):
    with daemon_on_a_small_disk(tmp_path) as daemon:
        session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "append log.txt: before"})["session"]
        requests = [
            {"kind": "cancel", "session": "nosuchsession"},
            {"kind": "cancel", "session": session},
            b"{not json",
            {"kind": "new", "repo": str(repo)},
            {"kind": "fork", "session": session, "user_message_index": 0},
            {"kind": "prompt", "session": session, "text": "append log.txt: full"},
        ]
        # Written before the disk fills (a writer needs room too), delivered after.
        ids = [f"full-{n}" for n in range(len(requests))]
        for rid, request in zip(ids, requests):
            (daemon.spool / "tmp" / f"{rid}.json").write_bytes(
                request if isinstance(request, bytes) else orjson.dumps(request))
        filler = fill(daemon.state)
        for rid in ids:
            os.rename(daemon.spool / "tmp" / f"{rid}.json", daemon.spool / "new" / f"{rid}.json")
        wait_error_line(daemon, "No space left on device")
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()[-3000:]
        filler.unlink()
        results = {rid: daemon.wait(rid, timeout=60) for rid in ids}
        assert daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: after"})
        stop(daemon)
        report = audit(daemon.state, repo, None)
        assert not report.problems, (report.problems, results)
        for result in results.values():
            # Whatever failed while the disk was full says so, in words a user can act on.
            if result["status"] == "error" and result["error"]["code"] == "internal":
                assert "is full" in result["error"]["message"], result


@pytest.mark.slow
def test_a_turn_whose_end_finds_the_disk_full_is_closed_before_the_next_one(tmp_path: Path, repo: Path):
    with daemon_on_a_small_disk(tmp_path) as daemon:
        session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "append log.txt: before"})["session"]
        # The turn fills the disk itself (from its worktree, the one place its agent may
        # write), once its turn_start and prompt are in the log. Its frames then use up
        # the room left in the log's last page (each is smaller than turn_complete and
        # the checkpoint), so the turn's end cannot be written.
        filler = daemon.state / "worktrees" / session / repo.name / "filler"
        chatter = "\n".join(f"filling {n}" for n in range(40))
        rid = daemon.drop({"kind": "prompt", "session": session, "text": f"run: cat /dev/zero > filler\n{chatter}"})
        # What refuses first: the turn's end in the log, or the checkpoint's objects in the
        # vault (on the same full disk); either way the request fails saying so.
        wait_error_line(daemon, f"[request={rid} ", levels=("<3>", "<4>"))
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()[-3000:]
        filler.unlink()
        failed = daemon.wait(rid, timeout=60)
        message = failed["error"]["message"] if failed["status"] == "error" else ""
        assert "is full" in message or "No space left on device" in message, failed
        # The turn that began is recorded as interrupted; the next one has the next number.
        after = daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: after"})
        stop(daemon)
        report = audit(daemon.state, repo, None)
        assert not report.problems, report.problems
        assert report.turns == 3 and report.interrupted == 1, report
        assert after["turn"] == 2, after


@pytest.mark.slow
def test_a_prompt_the_full_log_refuses_is_answered_and_the_session_goes_on(tmp_path: Path, repo: Path):
    with daemon_on_a_small_disk(tmp_path) as daemon:
        session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "hello"})["session"]
        log = daemon.state / "sessions" / session / "log.ndjson"
        page = os.sysconf("SC_PAGE_SIZE")
        # Turns until the room left in the log's last page takes a turn_start (a few
        # hundred bytes), which a full disk then leaves it, but not a prompt of two pages.
        last = daemon.ok({"kind": "prompt", "session": session, "text": "x"})
        while -log.stat().st_size % page < 512:
            last = daemon.ok({"kind": "prompt", "session": session, "text": "x" * 37 * (last["turn"] + 1)})
        rid = "refused-prompt"
        (daemon.spool / "tmp" / f"{rid}.json").write_bytes(
            orjson.dumps({"kind": "prompt", "session": session, "text": "y" * 2 * page}))
        filler = fill(daemon.state)
        os.rename(daemon.spool / "tmp" / f"{rid}.json", daemon.spool / "new" / f"{rid}.json")
        # The turn begins in the log, its prompt cannot be logged, so it must not reach
        # the agent, and the SDK cannot send anything more: the agent is stopped.
        wait_error_line(daemon, f"[request={rid}")
        filler.unlink()
        refused = daemon.wait(rid, timeout=60)
        assert refused["status"] == "error", refused
        after = daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: after"})
        stop(daemon)
        report = audit(daemon.state, repo, None)
        assert not report.problems, report.problems
        assert after["turn"] == last["turn"] + 2, after  # the refused turn has its number


def test_a_write_the_disk_refused_is_worded_as_a_full_disk_once_room_is_made(tmp_path: Path):
    # The daemon words a failure after it has logged it: room may have been made by then.
    with pytest.raises(OSError) as refused, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")
    assert refused.value.errno == errno.ENOSPC
    assert "is full" in internal_error_text(refused.value, tmp_path)  # tmp_path's disk has room
    assert "is full" not in internal_error_text(OSError(errno.EIO, os.strerror(errno.EIO)), tmp_path)


# -- forks that fail part-way --------------------------------------------------------------


def assert_no_trace(daemon: Daemon, repo: Path, before: dict[str, set[str]]) -> None:
    """Nothing new in sessions/, worktrees/, refs/cairnd/, the sessions' stores, git's worktree
    lists or the database."""
    assert now(daemon, repo) == before


def now(daemon: Daemon, repo: Path) -> dict[str, set[str]]:
    with sqlite3.connect(daemon.state / "cairnd.db") as db:
        rows = {f"{r[0]}:{r[1]}" for r in db.execute("SELECT id, state FROM sessions")}
        forks = {r[0] for r in db.execute("SELECT id FROM forks")}
    worktrees = daemon.state / "worktrees"
    return {
        "sessions": set(os.listdir(daemon.state / "sessions")),
        "worktrees": set(os.listdir(worktrees)) if worktrees.is_dir() else {"<not a directory>"},
        "refs": set(cairnd_refs(daemon.state, repo)),
        "git worktrees": {str(path) for path, _ in session_worktrees(daemon.state, repo)},
        "stores": {str(p) for p in (daemon.state / "git" / "vaults").glob("*/stores/*")},
        "rows": rows,
        "forks": forks,
    }


def test_a_fork_whose_files_cannot_be_read_from_git_leaves_no_trace(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write unique.txt: only here 8c1f"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "hello"})
    proc = subprocess.run(["git", "hash-object", "--stdin"], cwd=repo, input=b"only here 8c1f\n", capture_output=True)
    blob = proc.stdout.decode().strip()
    loose = vault_of(daemon.state, repo) / "objects" / blob[:2] / blob[2:]  # where checkpoints' objects are
    assert loose.exists()
    loose.unlink()  # the checkpoint's tree names a blob the vault no longer has
    before = now(daemon, repo)
    result = daemon.request({"kind": "fork", "session": session, "user_message_index": 1})
    assert result["status"] == "error" and result["error"]["code"] in ("git_failed", "commit_missing"), result
    assert_no_trace(daemon, repo, before)
    assert daemon.ok({"kind": "fork", "session": session, "user_message_index": 0})["state"] == "checkpoint"


def test_a_fork_whose_worktree_cannot_be_made_leaves_no_trace(daemon: Daemon, repo: Path):
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "append log.txt: one"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: two"})
    before = now(daemon, repo)
    # Read-only, not moved away: a worktree that vanished would be pruned from git's
    # records by any `git worktree prune`, the parent's included.
    with read_only(daemon.state / "worktrees"):
        result = daemon.request({"kind": "fork", "session": session, "user_message_index": 1})
        assert result["status"] == "error", result
        assert "Read-only file system" in result["error"]["message"], result
    assert_no_trace(daemon, repo, before)
    assert "Traceback" not in result["error"]["message"]
    fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})
    assert (Path(fork["worktree"]) / "log.txt").read_text() == "start\none\n"


@pytest.mark.slow
def test_a_fork_whose_log_cannot_be_written_removes_its_worktree(daemon: Daemon, repo: Path):
    """The failure comes after git made the worktree: it is removed again, with its
    git record and its refs."""
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "append log.txt: one"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: two"})
    before = now(daemon, repo)
    with read_only(daemon.state / "sessions"):  # the parent's log can still be read
        result = daemon.request({"kind": "fork", "session": session, "user_message_index": 1})
        assert result["status"] == "error", result
        assert "Read-only file system" in result["error"]["message"], result
    assert_no_trace(daemon, repo, before)
    assert daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})
    stop(daemon)
    assert not audit(daemon.state, repo, None).problems


def test_deleting_a_session_keeps_the_records_of_worktrees_that_are_not_cairnds(daemon: Daemon, repo: Path,
                                                                               tmp_path: Path):
    """A worktree of the user's own on a disk that is not mounted right now is still
    theirs: cairnd removing one of its own must not drop git's record of it."""
    from gitrepos import git

    theirs = tmp_path / "usb" / "mine"
    git(repo, "worktree", "add", "--detach", str(theirs), "HEAD")
    (tmp_path / "usb").rename(tmp_path / "usb-unplugged")
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    daemon.ok({"kind": "delete", "session": session})
    (tmp_path / "usb-unplugged").rename(tmp_path / "usb")
    assert str(theirs) in git_text(repo, "worktree", "list", "--porcelain")
    assert git_text(theirs, "rev-parse", "HEAD") == git_text(repo, "rev-parse", "HEAD")

"""SPEC 16, private state: the state directory and all cairnd makes in it are its user's
alone (0700/0600), or its group's too where the directory is group-accessible on purpose;
modes found are never widened; worktrees keep the repository's own modes."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cairnd.state import privacy
from daemonproc import Daemon
from gitrepos import make_repo

NOBODY = 65534


def test_the_umask_keeps_the_state_dirs_group_bits_and_never_others() -> None:
    assert privacy.umask_for(None) == 0o077
    assert privacy.umask_for(0o700) == 0o077
    assert privacy.umask_for(0o750) == 0o027  # systemd's StateDirectoryMode=0750
    assert privacy.umask_for(0o770) == 0o007
    assert privacy.umask_for(0o755) == 0o027
    assert privacy.umask_for(0o777) == 0o007


def test_a_state_dir_others_can_read_is_reported_not_changed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    access = privacy.StateAccess(state, 0o755, privacy.umask_for(0o755), 0o022)
    assert access.warning and "readable by other users" in access.warning and "0755" in access.warning
    assert privacy.StateAccess(state, 0o750, 0o027, 0o022).warning is None
    assert privacy.StateAccess(state, None, 0o077, 0o022).warning is None


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def exercise(daemon: Daemon, repo: Path) -> dict:
    """A session with turns (fs writes, a run: line, a commit), a fork, a failed request."""
    new = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write notes/a.txt: one\nrun: echo two > b.txt"})
    daemon.ok({"kind": "prompt", "session": new["session"], "text": "commit: c"})
    daemon.ok({"kind": "fork", "session": new["session"], "user_message_index": 1})
    assert daemon.request({"kind": "prompt", "session": "nope", "text": "x"})["status"] == "error"
    return new


def state_modes(state: Path) -> dict[Path, int]:
    """Every path cairnd made under the state dir, less the worktrees' contents (git's)."""
    modes = {state: stat.S_IMODE(state.stat().st_mode)}
    for root, dirs, files in os.walk(state):
        here = Path(root)
        if here.parent in (state / "worktrees", state / "git" / "vaults"):
            # worktrees/<session>/ and a vault (git/vaults/<key>/, with its sessions' stores)
            # are cairnd's, made private: what is in them is git's, the agent's and the
            # repository's, unreachable through them.
            dirs[:] = []
        for name in dirs + files:
            try:
                modes[here / name] = stat.S_IMODE((here / name).lstat().st_mode)
            except FileNotFoundError:
                continue  # a temporary file renamed into place meanwhile
    return modes


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_a_fresh_state_dir_is_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    state = tmp_path / "state"
    with umask(mask):
        daemon = Daemon(state).start()
    try:
        new = exercise(daemon, repo)
        modes = state_modes(state)
        assert {state / "cairnd.db", state / "spool/done", state / "sessions" / new["session"] / "log.ndjson",
                state / "sessions" / new["session"] / "agent.stderr", state / "cairnd.lock"} <= set(modes)
        opened = {path: mode for path, mode in modes.items() if mode & 0o077}
        assert not opened, {str(p): oct(m) for p, m in opened.items()}
        assert len(list((state / "spool/done").iterdir())) >= 3 and list((state / "spool/failed").iterdir())
        # The worktree keeps the user's modes: git's checkout, cairnd's fs writes, the agent's shell.
        worktree = Path(new["worktree"])
        for rel in ("README.md", "notes/a.txt", "b.txt"):
            assert stat.S_IMODE((worktree / rel).stat().st_mode) == 0o666 & ~mask, rel
        assert stat.S_IMODE((worktree / "notes").stat().st_mode) == 0o777 & ~mask
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_can_read_nothing_of_it(open_dir: Path) -> None:
    tmp_path = open_dir  # the way in is open: only the state dir's own modes stand between
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    state = tmp_path / "state"
    with umask(0o022):
        daemon = Daemon(state).start()
    try:
        new = exercise(daemon, repo)
        secrets = [state / "cairnd.db", state / "sessions" / new["session"] / "log.ndjson",
                   next((state / "spool/done").iterdir()), state / "status.json"]
        assert all(path.exists() for path in secrets)
        results = as_another_user([state, *secrets])
        assert results == ["EACCES"] * (1 + len(secrets)), results
        # The same files are readable again with their modes opened: the test can fail.
        opened = tmp_path / "copy.txt"
        opened.write_bytes(b"x")
        opened.chmod(0o644)
        assert as_another_user([opened]) == ["ok"]
    finally:
        assert daemon.stop() == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cairnd-privacy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_another_user(paths: list[Path]) -> list[str]:
    """Try to read each path as uid/gid 65534 in a forked child: "ok" or the errno name."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, no return into pytest
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answers = []
            for path in paths:
                try:
                    if path.is_dir():
                        os.listdir(path)
                    else:
                        with open(path, "rb") as f:
                            f.read(1)
                    answers.append("ok")
                except OSError as exc:
                    answers.append(os.strerror(exc.errno) if exc.errno != 13 else "EACCES")
            os.write(write_fd, "\n".join(answers).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out.split("\n") if out else []


@pytest.mark.slow
def test_a_group_accessible_state_dir_gives_its_group_read_and_nothing_to_others(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o750)  # as systemd's StateDirectoryMode=0750 makes it
    with umask(0o022):
        daemon = Daemon(state).start()
    try:
        new = exercise(daemon, repo)
        modes = state_modes(state)
        assert modes[state] == 0o750
        assert modes[state / "cairnd.db"] == 0o640
        assert modes[state / "sessions" / new["session"] / "log.ndjson"] == 0o640
        assert modes[state / "spool/done"] == 0o750
        assert not [p for p, m in modes.items() if m & 0o027], "nothing group-writable or for others"
        assert "readable by other users" not in daemon.stderr()
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_a_state_dir_found_open_to_others_is_warned_of_and_left_as_found(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)  # an older cairnd, or a hand-made one
    with umask(0o022):
        daemon = Daemon(state).start()
    try:
        new = exercise(daemon, repo)
        assert daemon.stderr().count("readable by other users") == 1
        modes = state_modes(state)
        assert modes[state] == 0o755  # never changed
        assert not modes[state / "sessions" / new["session"] / "log.ndjson"] & 0o007
    finally:
        assert daemon.stop() == 0

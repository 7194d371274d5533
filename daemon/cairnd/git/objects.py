"""Which objects a repository holds: `object_types`, asked of one long-lived
`git cat-file --batch-check` per repository instead of a git process per question.
Every fork asks before it makes anything (commit_missing), and in a burst of forks the
start of that process was most of the asking's cost (about 2 ms of CPU a fork).

Why a long-lived process answers as a new one would: git looks in the object store
again whenever it cannot find an object (new loose objects, packs written since it
started), and an object it found cannot change. So only "missing" could be stale, and
a missing answer is asked again of a one-shot `git cat-file` before anyone acts on it.
A process whose repository is no longer the directory it started in (removed, made
anew) is replaced; one that fails is replaced once, then a one-shot process answers.
Processes idle for `IDLE_SECONDS`, and the least recently used beyond
`MAX_PROCESSES`, are closed; so are all of them when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cairnd.git import places
from cairnd.git import run as git

IDLE_SECONDS = 30.0  # a repository nobody asked about for this long loses its process
MAX_PROCESSES = 8  # at most this many repositories keep one
_CHUNK = 256  # questions written before their answers are read: pipes never fill up

Answer = tuple[str, str] | None  # (object id, type), None: missing


def object_types(repo: Path, specs: Sequence[str]) -> list[Answer]:
    """(id, type) of each object spec (`<id>`, `<id>^{tree}`...), or None where it is
    missing. Raises as `git.output` does where the repository cannot be read."""
    if not specs:
        return []
    answers = _ask_kept(Path(repo), specs)
    if answers is None or None in answers:  # a failed process, or a "missing" to confirm
        answers = _ask_once(Path(repo), specs)
    return answers


def close_all() -> None:
    """Close every kept process (the daemon, as it stops)."""
    with _lock:
        kept = list(_kept.values())
        _kept.clear()
    for checker in kept:
        checker.close()


def _ask_once(repo: Path, specs: Sequence[str]) -> list[Answer]:
    out = git.output(repo, "cat-file", "--batch-check", input="".join(f"{s}\n" for s in specs).encode())
    return [_parse(line) for line in out.decode().splitlines()]


def _parse(line: str) -> Answer:
    fields = line.split(" ")
    return (fields[0], fields[1]) if len(fields) == 3 else None


class _Checker:
    """One `git cat-file --batch-check` in one repository, asked by one thread at a time."""

    def __init__(self, repo: Path, stamp: tuple[int, int]) -> None:
        self.stamp = stamp
        self.lock = threading.Lock()
        self.used = time.monotonic()
        self.proc = subprocess.Popen(["git", "cat-file", "--batch-check"], cwd=repo, env=git.env_for(repo, ["cat-file"]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def ask(self, specs: Sequence[str]) -> list[Answer] | None:
        """The answers, or None when the process failed (it is then closed)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        answers: list[Answer] = []
        with self.lock:
            self.used = time.monotonic()
            try:
                for start in range(0, len(specs), _CHUNK):
                    chunk = specs[start:start + _CHUNK]
                    stdin.write("".join(f"{s}\n" for s in chunk).encode())
                    stdin.flush()
                    for _ in chunk:
                        line = stdout.readline()
                        if not line.endswith(b"\n"):
                            raise OSError("git cat-file went away")
                        answers.append(_parse(line.decode().rstrip("\n")))
            except (OSError, ValueError, UnicodeDecodeError):
                self._stop()
                return None
        return answers

    def close(self) -> None:
        with self.lock:
            self._stop()

    def _stop(self) -> None:
        if self.proc.returncode is not None:
            return
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)  # stdin closed: cat-file ends at once
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_lock = threading.Lock()
_kept: dict[Path, _Checker] = {}


def _ask_kept(repo: Path, specs: Sequence[str]) -> list[Answer] | None:
    try:
        st = os.stat(repo)
    except OSError:
        return None  # the one-shot process says what is wrong
    stamp = (st.st_dev, st.st_ino)
    for _attempt in range(2):
        checker, stale = _checker_for(repo, stamp)
        for old in stale:
            old.close()
        if checker is None:
            return None
        answers = checker.ask(specs)
        if answers is not None:
            return answers
        with _lock:
            if _kept.get(repo) is checker:
                del _kept[repo]
    return None


def _checker_for(repo: Path, stamp: tuple[int, int]) -> tuple[_Checker | None, list[_Checker]]:
    """The process kept for `repo` (started if there is none, or if the directory is
    not the one it started in), and the processes to close: idle, or one too many."""
    now = time.monotonic()
    stale: list[_Checker] = []
    with _lock:
        checker = _kept.get(repo)
        if checker is not None and (checker.stamp != stamp or checker.proc.poll() is not None):
            stale.append(_kept.pop(repo))
            checker = None
        if checker is None:
            try:
                checker = _Checker(repo, stamp)
            except OSError:
                return None, stale
            _kept[repo] = checker
        for other_repo, other in list(_kept.items()):
            if other is not checker and now - other.used > IDLE_SECONDS:
                stale.append(_kept.pop(other_repo))
        while len(_kept) > MAX_PROCESSES:
            oldest = min((c for c in _kept.values() if c is not checker), key=lambda c: c.used)
            stale.append(oldest)
            del _kept[next(r for r, c in _kept.items() if c is oldest)]
    return checker, stale


atexit.register(close_all)


def bring_in(repo: Path, commits: Sequence[str]) -> None:
    """Copy `commits`, with everything they reach that `repo` lacks, from the vault of
    `repo`'s repository into the repository itself (before a branch of the user's is
    moved to one: the user's repository must hold all it names). Nothing when there is
    no vault. `git fetch` from the vault (cairnd's own repository: its config, no hook)."""
    vault = places.vault_for(repo)
    wanted = [c for c in dict.fromkeys(commits) if git.is_object_id(c)]
    if vault is None or not wanted:
        return
    dirs = places.discover(Path(repo))
    env = {"GIT_DIR": str(dirs.git_dir), "GIT_COMMON_DIR": str(dirs.common_dir)}  # no vault beside it
    proc = git.run(repo, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(vault), *wanted], env=env)
    if proc.returncode != 0:
        raise git.failure(repo, ["fetch"], proc)

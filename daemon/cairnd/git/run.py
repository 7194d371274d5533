"""Running git, and the repository operations that are not a concept of their own.
Every git command cairnd runs in a place goes through `run`, `output` and `spawn`, which
take its directories from cairnd's records (`places`). The few that start git
themselves do so below this module or outside a place (`vault` building a vault or a
store and copying objects into it, `places` finding a repository's directories, the
long-lived `cat-file --batch-check` of `objects`, with `env_for`); each runs with `git_env`'s
fixed configuration and directories it names itself.

git runs as short-lived `git` processes with a clean environment: no inherited
`GIT_*` variable (a `GIT_DIR` or `GIT_INDEX_FILE` leaking in from a hook would
point git at the wrong repository or index), `LC_ALL=C` so messages are stable,
no terminal prompts, and a fixed identity for the commits cairnd makes, so the
user's git identity is never needed. Hooks never run: snapshots use plumbing,
and worktrees are populated with `read-tree` instead of `checkout`.

All functions are synchronous (callers run them in worker threads) and raise
`CairnError` with code `repo_not_found`, `not_a_git_repo`, `bad_ref`,
`commit_missing` or `git_failed` (git's stderr in the message).

Paths given to git come back as bytes and go in as bytes: file names may hold
spaces, newlines or bytes that are not UTF-8. Needs git 2.31 or later.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from cairnd.git import places
from cairnd.errors import CairnError
from cairnd.state.privacy import child_umask

IDENTITY_NAME = places.IDENTITY_NAME
IDENTITY_EMAIL = places.IDENTITY_EMAIL
git_env = places.git_env
REF_NAMESPACE = "refs/cairnd/"
SNAPSHOT_MESSAGE = "cairnd snapshot"
# Git's parallel checkout (8 workers) pays on large trees even on few cores, since
# writing files waits on the file system; below about a thousand files starting the
# workers costs more than they save (measured: 100 files, +60% a fork).
CHECKOUT = ("-c", "checkout.workers=8", "-c", "checkout.thresholdForParallelism=1000")

_HEX_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


# --------------------------------------------------------------------------- running git


def env_for(cwd: Path | str, args: Sequence[str | bytes], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a git command run in `cwd`: the fixed configuration, and, where
    `cwd` is a session's worktree, its directories from cairnd's records (`places`)."""
    if extra and "GIT_DIR" in extra:  # the caller named its git directory itself
        return git_env(extra)
    place = places.lookup(cwd)
    if place is None:
        # The user's repository, with a vault: what cairnd writes goes there (checkpoints'
        # refs are there too; `objects.bring_in` copies what a land needs into the
        # repository), read beside the repository's own objects.
        vault = places.vault_for(cwd)
        if vault is not None:
            own = places.discover(Path(cwd)).common_dir / "objects"
            return git_env({"GIT_OBJECT_DIRECTORY": str(vault / "objects"),
                            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(own), **(extra or {})})
        return git_env(extra)
    return git_env({**places.scoped_env(place, args), **(extra or {})})


def run(cwd: Path, args: Sequence[str | bytes], *, env: Mapping[str, str] | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git in `cwd`; return the finished process whatever its exit status."""
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env_for(cwd, args, env), input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, check=False, umask=child_umask(),  # worktrees keep the user's modes
        )
    except OSError as exc:
        raise _spawn_failure(cwd, exc) from None


def _spawn_failure(cwd: Path, exc: OSError) -> CairnError:
    if not Path(cwd).exists():
        return CairnError("repo_not_found", f"{cwd} does not exist")
    if not Path(cwd).is_dir():
        return CairnError("not_a_git_repo", f"{cwd} is not a directory")
    return CairnError("git_failed", f"cannot run git in {cwd}: {exc}")


def spawn(cwd: Path, args: Sequence[str], env: Mapping[str, str] | None = None,
          takes_input: bool = False) -> subprocess.Popen[bytes]:
    """Start git without waiting; the caller must `reap` it whatever happens (with its
    input, when `takes_input`)."""
    try:
        return subprocess.Popen(["git", *args], cwd=cwd, env=env_for(cwd, args, env),
                                stdin=subprocess.PIPE if takes_input else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, umask=child_umask())
    except OSError as exc:
        raise _spawn_failure(cwd, exc) from None


def reap(proc: subprocess.Popen[bytes], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        out, err = proc.communicate(input)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def failure(cwd: Path, args: Sequence[str | bytes], proc: subprocess.CompletedProcess[bytes]) -> CairnError:
    stderr = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
    if "not a git repository" in stderr:
        return CairnError("not_a_git_repo", f"{cwd} is not inside a git repository")
    command = args[0] if isinstance(args[0], str) else args[0].decode()
    return CairnError("git_failed", f"git {command} failed in {cwd}: {stderr}")


def output(cwd: Path, *args: str | bytes, env: Mapping[str, str] | None = None,
           input: bytes | None = None) -> bytes:
    """Run git and return its stdout, or raise git_failed with its stderr."""
    proc = run(cwd, args, env=env, input=input)
    if proc.returncode != 0:
        raise failure(cwd, args, proc)
    return proc.stdout


def first_line(out: bytes) -> str:
    return out.decode("utf-8", "surrogateescape").strip()


# --------------------------------------------------------------------------- repositories and commits


def resolve_repo(path: str) -> Path:
    """The repository `path` names: the top level of its working tree, or, for a bare
    repository, its git directory (which can hold worktrees but not run in place).

    A path inside a working tree resolves to that tree's top level; a linked
    worktree resolves to itself (git shares refs and objects among them)."""
    if not path or not os.path.isabs(path):
        raise CairnError("bad_request", f"repo {path!r} must be an absolute path")
    where = Path(path)
    if not where.exists():
        raise CairnError("repo_not_found", f"repo {path} does not exist")
    if not where.is_dir():
        raise CairnError("not_a_git_repo", f"repo {path} is not a directory")
    proc = run(where, ["rev-parse", "--is-bare-repository", "--absolute-git-dir"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise CairnError("not_a_git_repo", f"repo {path} is not a git repository")
        raise failure(where, ["rev-parse"], proc)
    bare, git_dir = first_line(proc.stdout).split("\n")
    if bare == "true":
        return Path(git_dir)
    proc = run(where, ["rev-parse", "--show-toplevel"])
    if proc.returncode != 0:
        # Inside the .git directory of a repository with a working tree.
        raise CairnError("not_a_git_repo", f"repo {path} is inside a git directory, not a working tree")
    return Path(first_line(proc.stdout))


def resolve_commit(repo: Path, ref: str) -> str:
    """The full id of the commit `ref` names (a branch, tag, id, `HEAD~2`, ...)."""
    if not ref or ref.startswith("-") or "\0" in ref or "\n" in ref:
        raise CairnError("bad_ref", f"ref {ref!r} is not a valid revision")
    proc = run(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise failure(repo, ["rev-parse"], proc)
        raise CairnError("bad_ref", f"ref {ref!r} does not name a commit in {repo}")
    return first_line(proc.stdout)


def is_object_id(value: object) -> bool:
    """Whether `value` is a full SHA-1 or SHA-256 object id in lower-case hex."""
    return isinstance(value, str) and bool(_HEX_ID.match(value))


def head_state(worktree: Path) -> tuple[str, str | None]:
    """(HEAD's commit id, its branch name or None when detached)."""
    place = places.lookup(worktree)
    if place is not None and (head := places.head_of(place)) is not None:
        return head
    # "--" so that a file named HEAD cannot make the argument ambiguous.
    proc = run(worktree, ["rev-parse", "HEAD", "--symbolic-full-name", "HEAD", "--"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise failure(worktree, ["rev-parse"], proc)
        raise CairnError("bad_ref", f"HEAD of {worktree} does not name a commit (no commit yet?)")
    head, name = first_line(proc.stdout).split("\n")[:2]
    return head, _branch_name(name)


def _branch_name(symbolic: str) -> str | None:
    if symbolic.startswith("refs/heads/"):
        return symbolic[len("refs/heads/"):]
    return None


def display_path(path: bytes) -> str:
    # For messages and JSON: orjson refuses lone surrogates, so undecodable bytes are escaped.
    return path.decode("utf-8", "backslashreplace")



def locate(worktree: Path) -> tuple[Path, Path]:
    """(top level of the working tree, its index file): a session's from cairnd's records
    (`places`), never from its `.git`; any other path's (the user's own checkout) from git."""
    place = places.lookup(worktree)
    if place is not None:
        return place.work_tree, place.index
    proc = run(worktree, ["rev-parse", "--path-format=absolute", "--show-toplevel", "--git-path", "index"])
    if proc.returncode != 0:
        if b"must be run in a work tree" in proc.stderr:
            raise CairnError("not_a_git_repo", f"{worktree} is not a working tree")
        raise failure(worktree, ["rev-parse"], proc)
    top, index = first_line(proc.stdout).split("\n")
    return Path(top), Path(index)


def git_dirs(worktree: Path) -> tuple[Path, Path]:
    """(the worktree's own git directory, the repository's common one), absolute: a
    session's from cairnd's records, any other path's from git (`places.discover`)."""
    dirs = places.discover(worktree)
    return dirs.git_dir, dirs.common_dir


def tree_of(repo: Path, commit: str) -> str:
    """The tree id of `commit`."""
    return first_line(output(repo, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{tree}}"))


INDEX_COPY_PREFIX = "cairnd-index-"
STALE_INDEX_COPY_SECONDS = 3600.0


def sweep_index_copies(directory: Path | None = None, older_than: float = STALE_INDEX_COPY_SECONDS) -> int:
    """Remove index copies a killed cairnd left behind (the `finally` that removes them
    never ran); return how many. Run by recovery at start. Judged by ctime: copy2 gives a copy its index's old
    mtime, but creating it set its ctime, so a copy in use is never old."""
    directory = Path(directory or tempfile.gettempdir())
    limit = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(INDEX_COPY_PREFIX):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_ctime < limit:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # another user's file, or gone already
    return removed


# --------------------------------------------------------------------------- worktree records


_records_locks: dict[str, threading.Lock] = {}
_records_locks_guard = threading.Lock()


def records_lock(repo: Path) -> threading.Lock:
    """The worktree records lock of the repository `repo` is in, keyed by its common git
    directory: the repository's main worktree and each linked one (or another spelling
    of the path) get the same lock."""
    dirs = places.dirs_or_none(Path(repo))
    key = os.path.realpath(dirs.common_dir if dirs is not None else repo)
    with _records_locks_guard:
        return _records_locks.setdefault(key, threading.Lock())


@contextmanager
def worktree_records_lock(repo: Path) -> Iterator[None]:
    """Held by every git command cairnd runs that writes the records of a repository's
    worktrees (`worktree add`, `worktree remove`) or reads them all (`worktree list`,
    `repack`, which walks every worktree's HEAD and index). `worktree add` writes its
    record in steps, and a git command that reads every record dies on a half-written
    one ("failed to read .git/worktrees/<name>/commondir"). One at a time per repository
    within one process (cairnd is one per state directory)."""
    with records_lock(repo):
        yield


def common_dir(path: Path) -> Path:
    """The git directory a repository's worktrees share (for a session with a store of
    its own, the user's repository's it came from): tells whether two paths are
    sessions or worktrees of one repository."""
    return places.source_common(path)


# --------------------------------------------------------------------------- refs


def ref_commit(repo: Path, ref: str) -> str | None:
    """The object a full ref name points at, or None when there is no such ref."""
    proc = run(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise failure(repo, ["rev-parse"], proc)
        return None
    return first_line(proc.stdout)

"""Every git operation cairnd needs, and the only module that runs git.

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
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cairnd import gitfiles
from cairnd.errors import CairnError
from cairnd.privacy import child_umask

IDENTITY_NAME = "cairnd"
IDENTITY_EMAIL = "cairnd@localhost"
REF_NAMESPACE = "refs/cairnd/"
SNAPSHOT_MESSAGE = "cairnd snapshot"
CHECKOUT_WORKERS = 8

_HEX_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


# --------------------------------------------------------------------------- running git


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """cairnd's environment minus every GIT_* variable, plus what makes git predictable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=IDENTITY_NAME,
        GIT_AUTHOR_EMAIL=IDENTITY_EMAIL,
        GIT_COMMITTER_NAME=IDENTITY_NAME,
        GIT_COMMITTER_EMAIL=IDENTITY_EMAIL,
    )
    if extra:
        env.update(extra)
    return env


def _run(cwd: Path, args: Sequence[str | bytes], *, env: Mapping[str, str] | None = None,
         input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git in `cwd`; return the finished process whatever its exit status."""
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=git_env(env), input=input,
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


def _spawn(cwd: Path, args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start git without waiting; the caller must `_reap` it whatever happens."""
    try:
        return subprocess.Popen(["git", *args], cwd=cwd, env=git_env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, umask=child_umask())
    except OSError as exc:
        raise _spawn_failure(cwd, exc) from None


def _reap(proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    try:
        out, err = proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _failure(cwd: Path, args: Sequence[str | bytes], proc: subprocess.CompletedProcess[bytes]) -> CairnError:
    stderr = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
    if "not a git repository" in stderr:
        return CairnError("not_a_git_repo", f"{cwd} is not inside a git repository")
    command = args[0] if isinstance(args[0], str) else args[0].decode()
    return CairnError("git_failed", f"git {command} failed in {cwd}: {stderr}")


def _git(cwd: Path, *args: str | bytes, env: Mapping[str, str] | None = None,
         input: bytes | None = None) -> bytes:
    """Run git and return its stdout, or raise git_failed with its stderr."""
    proc = _run(cwd, args, env=env, input=input)
    if proc.returncode != 0:
        raise _failure(cwd, args, proc)
    return proc.stdout


def _line(out: bytes) -> str:
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
    proc = _run(where, ["rev-parse", "--is-bare-repository", "--absolute-git-dir"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise CairnError("not_a_git_repo", f"repo {path} is not a git repository")
        raise _failure(where, ["rev-parse"], proc)
    bare, git_dir = _line(proc.stdout).split("\n")
    if bare == "true":
        return Path(git_dir)
    proc = _run(where, ["rev-parse", "--show-toplevel"])
    if proc.returncode != 0:
        # Inside the .git directory of a repository with a working tree.
        raise CairnError("not_a_git_repo", f"repo {path} is inside a git directory, not a working tree")
    return Path(_line(proc.stdout))


def resolve_commit(repo: Path, ref: str) -> str:
    """The full id of the commit `ref` names (a branch, tag, id, `HEAD~2`, ...)."""
    if not ref or ref.startswith("-") or "\0" in ref or "\n" in ref:
        raise CairnError("bad_ref", f"ref {ref!r} is not a valid revision")
    proc = _run(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise _failure(repo, ["rev-parse"], proc)
        raise CairnError("bad_ref", f"ref {ref!r} does not name a commit in {repo}")
    return _line(proc.stdout)


def is_object_id(value: object) -> bool:
    """Whether `value` is a full SHA-1 or SHA-256 object id in lower-case hex."""
    return isinstance(value, str) and bool(_HEX_ID.match(value))


def _object_types(repo: Path, specs: Sequence[str]) -> list[tuple[str, str] | None]:
    """(id, type) of each object spec, or None where it is missing: one git call."""
    out = _git(repo, "cat-file", "--batch-check", input="".join(f"{s}\n" for s in specs).encode())
    answers: list[tuple[str, str] | None] = []
    for line in out.decode().splitlines():
        fields = line.split(" ")
        answers.append((fields[0], fields[1]) if len(fields) == 3 else None)
    return answers


def head_state(worktree: Path) -> tuple[str, str | None]:
    """(HEAD's commit id, its branch name or None when detached)."""
    # "--" so that a file named HEAD cannot make the argument ambiguous.
    proc = _run(worktree, ["rev-parse", "HEAD", "--symbolic-full-name", "HEAD", "--"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise _failure(worktree, ["rev-parse"], proc)
        raise CairnError("bad_ref", f"HEAD of {worktree} does not name a commit (no commit yet?)")
    head, name = _line(proc.stdout).split("\n")[:2]
    return head, _branch_name(name)


def _branch_name(symbolic: str) -> str | None:
    if symbolic.startswith("refs/heads/"):
        return symbolic[len("refs/heads/"):]
    return None


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Snapshot:
    """The git state of a working tree, written as objects without touching it."""

    head_sha: str
    branch: str | None
    index_tree: str  # tree of the index (the staged state)
    worktree_sha: str  # commit, parent head_sha, whose tree is the whole working tree
    dirty: bool  # working tree or index differ from HEAD
    skipped: tuple[str, ...]  # paths left out of worktree_sha: over the size cap, or nested repositories
    worktree_tree: str = ""  # the tree of worktree_sha
    skipped_paths: tuple[bytes, ...] = ()  # `skipped` as the bytes git names them by
    staged: bool = True  # the index differs from HEAD's tree (True where not known)


@dataclass(frozen=True)
class StatusScan:
    """What one `git status --porcelain=v2 -z --branch` says, reduced to what a snapshot needs."""

    head_sha: str | None  # None: unborn branch
    branch: str | None
    changed: bool  # anything differs from HEAD, in the index or the working tree
    worktree_paths: tuple[bytes, ...]  # paths whose working-tree state differs from the index
    nested_repos: tuple[bytes, ...]  # untracked directories git shows whole: other repositories
    staged: bool = False  # the index differs from HEAD (something staged, or conflicts)


def parse_status(raw: bytes) -> StatusScan:
    """Parse `git status --porcelain=v2 -z --branch --untracked-files=all`."""
    head: str | None = None
    branch: str | None = None
    changed = False
    staged = False
    paths: list[bytes] = []
    nested: list[bytes] = []
    records = iter(raw.split(b"\0"))
    for record in records:
        kind = record[:1]
        if not record or kind == b"!":  # ignored files are never asked for
            continue
        if kind == b"#":
            key, _, value = record[2:].decode("utf-8", "surrogateescape").partition(" ")
            if key == "branch.oid":
                head = None if value == "(initial)" else value
            elif key == "branch.head":
                branch = None if value == "(detached)" else value
            continue
        changed = True
        if kind == b"?":
            path = record[2:]
            if path.endswith(b"/"):
                nested.append(path[:-1])
            else:
                paths.append(path)
        elif kind == b"1":
            fields = record.split(b" ", 8)
            staged = staged or fields[1][:1] != b"."
            if fields[1][1:2] != b".":
                paths.append(fields[8])
        elif kind == b"2":
            fields = record.split(b" ", 9)
            next(records, None)  # the original path, in a record of its own
            staged = staged or fields[1][:1] != b"."
            if fields[1][1:2] != b".":
                paths.append(fields[9])
        elif kind == b"u":
            staged = True
            paths.append(record.split(b" ", 10)[10])
    return StatusScan(head, branch, changed, tuple(paths), tuple(nested), staged)


def _display(path: bytes) -> str:
    # For messages and JSON: orjson refuses lone surrogates, so undecodable bytes are escaped.
    return path.decode("utf-8", "backslashreplace")


display_path = _display


def oversized(worktree: Path, paths: Iterable[bytes], max_file_bytes: int) -> list[bytes]:
    """The paths that are regular files larger than the cap (gone or special files are not)."""
    big = []
    root = os.fsencode(worktree)
    for path in paths:
        try:
            st = os.lstat(os.path.join(root, path))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size > max_file_bytes:
            big.append(path)
    return big


def _locate(worktree: Path) -> tuple[Path, Path]:
    """(top level of the working tree, its index file), without running git when `worktree`
    is a top level with an ordinary `.git` directory or `gitdir:` file."""
    dot_git = worktree / ".git"
    if dot_git.is_dir():
        return worktree, dot_git / "index"
    if dot_git.is_file():
        text = dot_git.read_text("utf-8", "surrogateescape").strip()
        if text.startswith("gitdir: "):
            git_dir = Path(text[len("gitdir: "):])
            return worktree, (git_dir if git_dir.is_absolute() else worktree / git_dir) / "index"
    proc = _run(worktree, ["rev-parse", "--path-format=absolute", "--show-toplevel", "--git-path", "index"])
    if proc.returncode != 0:
        if b"must be run in a work tree" in proc.stderr:
            raise CairnError("not_a_git_repo", f"{worktree} is not a working tree")
        raise _failure(worktree, ["rev-parse"], proc)
    top, index = _line(proc.stdout).split("\n")
    return Path(top), Path(index)


def git_dirs(worktree: Path) -> tuple[Path, Path]:
    """(the worktree's own git directory, the repository's common one), absolute: for a
    linked worktree `<common>/worktrees/<name>` and `<common>`; for the main one, both
    the same."""
    proc = _run(worktree, ["rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"])
    if proc.returncode != 0:
        raise _failure(worktree, ["rev-parse"], proc)
    git_dir, common_dir = _line(proc.stdout).split("\n")
    return Path(git_dir), Path(common_dir)


def snapshot(worktree: Path, max_file_bytes: int, message: str = SNAPSHOT_MESSAGE,
             keep_index: Path | None = None) -> Snapshot:
    """Write the whole state of the working tree `worktree` is in as git objects.

    The session's index, HEAD, branches and files are never touched: all work
    happens in a private copy of the index (new objects go into the repository). Files larger than
    `max_file_bytes` whose content is not already in the index (untracked, or
    modified since staged) keep their indexed version in the snapshot (none if
    untracked) and are listed in `skipped`, as are untracked nested repositories.
    A conflicted index is recorded with its conflicted paths resolved to their
    working-tree content. Raises bad_ref when HEAD has no commit yet.

    With `keep_index`, the private index, which then holds the whole working tree
    (the snapshot's tree), is kept there for `snapshot_paths` to go on from.
    """
    if not Path(worktree).is_dir():
        raise CairnError("repo_not_found", f"worktree {worktree} does not exist")
    worktree, index_file = _locate(Path(worktree))
    with _index_copy(index_file, keep_index.parent if keep_index is not None else None) as index_copy:
        env = {"GIT_INDEX_FILE": str(index_copy)}
        # write-tree and status run at once on the same copy: status only reads it,
        # and write-tree replaces it by rename (keeping every entry), so status sees
        # one whole index either way.
        staged_proc = _spawn(worktree, ["write-tree"], env)
        try:
            # One status gives HEAD, the branch, whether anything differs from HEAD,
            # and the paths to add: no rev-parse, no diff-index on the hot path.
            scan = parse_status(_git(
                worktree, "--no-optional-locks", "status", "--porcelain=v2", "-z", "--branch",
                "--untracked-files=all", "--no-renames", "--ignore-submodules=dirty", env=env,
            ))
        finally:
            staged = _reap(staged_proc)
        index_tree = _index_tree(worktree, staged, env)
        if scan.head_sha is None:
            raise CairnError("bad_ref", f"HEAD of {worktree} has no commit yet (unborn branch {scan.branch})")
        skipped = [*oversized(worktree, scan.worktree_paths, max_file_bytes), *scan.nested_repos]
        left_out = set(skipped)
        updates = [p for p in scan.worktree_paths if p not in left_out]
        if updates:
            _update_index(worktree, updates, env)
            tree = _line(_git(worktree, "write-tree", env=env))
        else:
            tree = index_tree
        worktree_sha = commit_tree(worktree, tree, scan.head_sha, message)
        if keep_index is not None:
            os.replace(index_copy, keep_index)
    return Snapshot(
        head_sha=scan.head_sha,
        branch=scan.branch,
        index_tree=index_tree,
        worktree_sha=worktree_sha,
        dirty=scan.changed,
        skipped=tuple(sorted(_display(p) for p in skipped)),
        worktree_tree=tree,
        skipped_paths=tuple(skipped),
        staged=scan.staged,
    )


def commit_tree(worktree: Path, tree: str, parent: str, message: str) -> str:
    """A commit of `tree` with the one parent `parent`, by cairnd's identity: written by
    hand where the repository is plain (no process), else by `git commit-tree`."""
    dirs = gitfiles.git_dirs(worktree)
    if dirs is not None:
        sha = gitfiles.write_commit(dirs, tree, parent, message, IDENTITY_NAME, IDENTITY_EMAIL)
        if sha is not None:
            return sha
    return _line(_git(worktree, "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", message))


# Past this many changed paths the full scan is cheaper: git matches every index entry
# and every directory it walks against every pathspec (at 50k files, 600 pathspecs
# made a limited status cost four times a full one).
MAX_CHANGED_PATHS = 64


def snapshot_paths(worktree: Path, private_index: Path, paths: Iterable[bytes], max_file_bytes: int
                   ) -> tuple[str | None, list[bytes], list[bytes]] | None:
    """The tree of the working tree given that only `paths` (files or whole directories,
    relative) may differ from `private_index` (kept by `snapshot` or by this), which is
    brought up to date. Returns (tree, paths over the size cap, nested repositories)
    among `paths`; the tree is None when nothing in it changed. None when the paths
    are too many (scan the tree instead).

    Two git calls, each reading the private index and looking at `paths` only: a
    status limited to them (it applies .gitignore, finds nested repositories), then
    update-index of what differs, then write-tree (which rewrites only the trees along
    the changed paths: the others are cached in the index)."""
    paths = sorted(paths)
    if len(paths) > MAX_CHANGED_PATHS:
        return None
    env = {"GIT_INDEX_FILE": str(private_index), "GIT_LITERAL_PATHSPECS": "1"}
    scan = parse_status(_git(worktree, "--no-optional-locks", "status", "--porcelain=v2", "-z",
                             "--untracked-files=all", "--no-renames", "--ignore-submodules=dirty",
                             "--", *paths, env=env)) if paths else StatusScan(None, None, False, (), ())
    big = oversized(worktree, scan.worktree_paths, max_file_bytes)
    left_out = set(big) | set(scan.nested_repos)
    updates = [p for p in scan.worktree_paths if p not in left_out]
    tree = None
    if updates:
        _update_index(worktree, updates, env)
        tree = _line(_git(worktree, "write-tree", env=env))
    return tree, big, list(scan.nested_repos)


def index_tree_of(worktree: Path, index_file: Path) -> tuple[str, int] | None:
    """(tree, entry count) of an index file, from a private copy; None when it has
    conflicts (no tree) or cannot be read."""
    with _index_copy(index_file) as copy:
        try:
            with open(copy, "rb") as f:
                header = f.read(12)
        except OSError:
            return None
        if len(header) < 12 or header[:4] != b"DIRC":
            return None
        proc = _run(worktree, ["write-tree"], env={"GIT_INDEX_FILE": str(copy)})
        if proc.returncode != 0:
            return None
        return _line(proc.stdout), int.from_bytes(header[8:12], "big")


def tree_of(repo: Path, commit: str) -> str:
    """The tree id of `commit`."""
    return _line(_git(repo, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{tree}}"))


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


@contextmanager
def _index_copy(index_file: Path, directory: Path | None = None) -> Iterator[Path]:
    """A private copy of an index file (empty if there is none), removed afterwards.

    copy2 keeps the mtime, so git's racy-clean checks stay exactly as strict on
    the copy as on the real index."""
    fd, name = tempfile.mkstemp(prefix=INDEX_COPY_PREFIX, dir=directory)
    os.close(fd)
    copy = Path(name)
    try:
        if index_file.exists():
            shutil.copy2(index_file, copy)
        else:
            copy.unlink()  # git treats a missing index as empty, not a zero-byte file
        yield copy
    finally:
        copy.unlink(missing_ok=True)
        Path(f"{copy}.lock").unlink(missing_ok=True)


def _update_index(worktree: Path, paths: Sequence[bytes], env: Mapping[str, str]) -> None:
    # --add/--remove make each path match the working tree (new, changed, gone);
    # --replace lets a file become a directory or the reverse.
    _git(worktree, "update-index", "--add", "--remove", "--replace", "-z", "--stdin",
         env=env, input=b"".join(p + b"\0" for p in paths))


def _index_tree(worktree: Path, proc: subprocess.CompletedProcess[bytes], env: Mapping[str, str]) -> str:
    """The tree of the index copy, from a finished `write-tree`; a conflicted index gets
    its conflicted paths resolved to their working-tree content first."""
    if proc.returncode == 0:
        return _line(proc.stdout)
    if b"unmerged" not in proc.stderr:
        raise _failure(worktree, ["write-tree"], proc)
    conflicted = {line.split(b"\t", 1)[1] for line in
                  _git(worktree, "ls-files", "-u", "-z", env=env).split(b"\0") if line}
    _update_index(worktree, sorted(conflicted), env)
    return _line(_git(worktree, "write-tree", env=env))


# --------------------------------------------------------------------------- refs


def _check_ref_name(name: str) -> None:
    if not name.startswith(REF_NAMESPACE) or name.endswith("/") or ".." in name:
        raise CairnError("bad_ref", f"ref {name!r} is not under {REF_NAMESPACE}")


def pin(repo: Path, ref_name: str, sha: str, *, written: bool = False) -> None:
    """Point `ref_name` (under refs/cairnd/) at `sha`, keeping it alive against gc.

    `repo` may be any worktree of the repository: refs are shared among them. With
    `written` (the caller has just written `sha`), the ref is written as git's files
    storage does, without a git process where the repository allows it; refs pile up
    loose that way until `cairnd.storage` packs them."""
    _check_ref_name(ref_name)
    if not is_object_id(sha) or not sha.strip("0"):
        # The all-zero id would make update-ref delete the ref instead.
        raise CairnError("commit_missing", f"{sha!r} is not an object id")
    dirs = gitfiles.git_dirs(repo) if written else None
    if dirs is not None and gitfiles.write_loose_ref(dirs, ref_name, sha):
        return
    proc = _run(repo, ["update-ref", ref_name, sha])
    if proc.returncode != 0:
        if b"nonexistent object" in proc.stderr:
            raise CairnError("commit_missing", f"{sha} is not in {repo}")
        raise _failure(repo, ["update-ref"], proc)


def pin_together(repo: Path, refs: Mapping[str, str]) -> None:
    """Point each ref (under refs/cairnd/) at its object in one ref transaction: all or
    none. Raises commit_missing when an object is not in the repository."""
    for name, sha in refs.items():
        _check_ref_name(name)
        if not is_object_id(sha) or not sha.strip("0"):
            raise CairnError("commit_missing", f"{sha!r} is not an object id")
    proc = _run(repo, ["update-ref", "--stdin", "-z"], input=b"".join(
        b"update " + name.encode("utf-8", "surrogateescape") + b"\0" + sha.encode() + b"\0\0"
        for name, sha in refs.items()))
    if proc.returncode != 0:
        if b"nonexistent object" in proc.stderr:
            raise CairnError("commit_missing", f"one of {', '.join(refs.values())} is not in {repo}")
        raise _failure(repo, ["update-ref", "--stdin"], proc)


def pin_many(repo: Path, refs: Mapping[str, str]) -> dict[str, str]:
    """Pin many objects at once: `ref name -> object id`, each under refs/cairnd/, in one
    ref transaction. Objects no longer in the repository are left out (collected long
    ago); returns what was pinned."""
    for name, sha in refs.items():
        _check_ref_name(name)
        if not is_object_id(sha) or not sha.strip("0"):
            raise CairnError("commit_missing", f"{sha!r} is not an object id")
    present = _object_types(repo, list(refs.values())) if refs else []
    pinned = {name: sha for (name, sha), found in zip(refs.items(), present) if found is not None}
    if pinned:
        _git(repo, "update-ref", "--stdin", "-z", input=b"".join(
            b"update " + name.encode("utf-8", "surrogateescape") + b"\0" + sha.encode() + b"\0\0"
            for name, sha in pinned.items()))
    return pinned


def list_refs(repo: Path, prefix: str) -> dict[str, str]:
    """Refs under `prefix` (a refs/cairnd/ path), name -> object id."""
    _check_ref_name(prefix.rstrip("/") + "/x")
    out = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", prefix.rstrip("/"))
    refs = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        sha, _, name = line.partition(" ")
        refs[name] = sha
    return refs


def delete_refs(repo: Path, prefix: str) -> list[str]:
    """Delete every ref under `prefix` (a refs/cairnd/ path); return their names."""
    names = sorted(list_refs(repo, prefix))
    if names:
        _git(repo, "update-ref", "--stdin", "-z",
             input=b"".join(b"delete " + n.encode("utf-8", "surrogateescape") + b"\0\0" for n in names))
    return names


def delete_ref_names(repo: Path, names: Sequence[str]) -> None:
    """Delete the named refs (each under refs/cairnd/) in one transaction."""
    for name in names:
        _check_ref_name(name)
    if names:
        _git(repo, "update-ref", "--stdin", "-z",
             input=b"".join(b"delete " + n.encode("utf-8", "surrogateescape") + b"\0\0" for n in names))


def pack_refs(repo: Path) -> None:
    """Pack every loose ref of the repository (as `git gc` does), checkpoint refs with them."""
    _git(repo, "pack-refs", "--all", "--prune")


def repack_incremental(repo: Path) -> None:
    """Loose objects into a pack, and small packs rolled up into bigger ones (a geometric
    progression, so the user's big pack is rewritten only once the others add up to it)."""
    _git(repo, "-c", "pack.writeBitmaps=false", "repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index")


def object_sizes(repo: Path) -> dict[str, int]:
    """`git count-objects -v` as numbers: loose objects and their bytes, packs and theirs."""
    fields = {}
    for line in _git(repo, "count-objects", "-v").decode().splitlines():
        key, _, value = line.partition(": ")
        if value.strip().isdigit():
            fields[key] = int(value)
    return {"loose": fields.get("count", 0), "loose_bytes": fields.get("size", 0) * 1024,
            "packs": fields.get("packs", 0), "pack_bytes": fields.get("size-pack", 0) * 1024}


# --------------------------------------------------------------------------- worktrees


_worktree_locks: dict[str, threading.Lock] = {}
_worktree_locks_guard = threading.Lock()


@contextmanager
def _worktree_lock(repo: Path) -> Iterator[None]:
    """Held while adding or removing a worktree of `repo`. git's worktree commands read
    the records of every worktree, and `worktree add` writes its own in steps: two at
    once in one repository fail on each other's half-written record ("failed to read
    .git/worktrees/<name>/commondir"). cairnd runs them one at a time per repository
    (within one process: cairnd is one per state directory)."""
    key = os.path.realpath(repo)
    with _worktree_locks_guard:
        lock = _worktree_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def add_worktree_detached(repo: Path, path: Path, head_sha: str) -> None:
    """A new linked worktree at `path` with HEAD detached at `head_sha` and NO files or
    index yet: `restore` fills it. `path` must not exist or be an empty directory."""
    if not is_object_id(head_sha):
        raise CairnError("commit_missing", f"{head_sha!r} is not a commit id")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _worktree_lock(repo):
        proc = _run(repo, ["worktree", "add", "--no-checkout", "--detach", str(path), head_sha])
    if proc.returncode != 0:
        if b"invalid reference" in proc.stderr:
            raise CairnError("commit_missing", f"commit {head_sha} is not in {repo}")
        raise _failure(repo, ["worktree"], proc)


def restore(worktree: Path, worktree_sha: str, index_tree: str | None) -> None:
    """Make the files of `worktree` equal to the tree of commit `worktree_sha` and its index
    equal to tree `index_tree` (None: HEAD's tree, for checkpoints that record only HEAD).

    Meant for a worktree made by `add_worktree_detached`: files the index does not know
    of are left where they are. HEAD is not moved."""
    worktree_tree, index_tree = _restore_trees(worktree, "HEAD", worktree_sha, index_tree)
    _restore(worktree, worktree_sha, worktree_tree, index_tree)


def _restore_trees(repo: Path, head: str, worktree_sha: str,
                   index_tree: str | None) -> tuple[str, str]:
    """Check the objects to restore exist, in one git call; return (worktree tree, index tree)."""
    for label, value in (("worktreeSha", worktree_sha), ("indexTree", index_tree)):
        if value is not None and not is_object_id(value):
            raise CairnError("commit_missing", f"{label} {value!r} is not an object id")
    wanted = [("headSha commit", f"{head}^{{commit}}"), ("headSha commit", f"{head}^{{tree}}"),
              ("worktreeSha commit", f"{worktree_sha}^{{commit}}"),
              ("worktreeSha commit", f"{worktree_sha}^{{tree}}")]
    if index_tree is not None:
        wanted.append(("indexTree tree", f"{index_tree}^{{tree}}"))
    found = _object_types(repo, [spec for _, spec in wanted])
    missing = [f"{label} {spec.split('^')[0]}" for (label, spec), answer in zip(wanted, found) if answer is None]
    if missing:
        raise CairnError("commit_missing", f"not in {repo}: {', '.join(dict.fromkeys(missing))}")
    ids = [answer[0] for answer in found if answer is not None]
    return ids[3], ids[4] if index_tree is not None else ids[1]


def _restore(worktree: Path, worktree_sha: str, worktree_tree: str, index_tree: str) -> None:
    # One pass writes every file and an index whose stat data matches them. Writing
    # files is bound by file-system latency more than by CPU, so git's parallel
    # checkout pays even on few cores (it stays sequential below 100 files).
    _git(worktree, "-c", f"checkout.workers={CHECKOUT_WORKERS}", "read-tree", "--reset", "-u", worktree_sha)
    if index_tree != worktree_tree:
        # A one-tree merge without -u keeps the stat data of every entry whose content
        # is unchanged, so `git status` stays fast; files are not touched.
        _git(worktree, "read-tree", "-m", index_tree)


def commit_of_tree(repo: Path, tree: str, parent: str, message: str = SNAPSHOT_MESSAGE) -> str:
    """A commit whose tree is `tree` and whose parent is `parent` (a snapshot in the
    shape of a checkpoint's worktreeSha, for a tree recorded without one: PostHog
    Code's `worktreeTree`). commit_missing when either object is not there."""
    for label, value in (("worktreeTree", tree), ("head", parent)):
        if not is_object_id(value):
            raise CairnError("commit_missing", f"{label} {value!r} is not an object id")
    found = _object_types(repo, [f"{tree}^{{tree}}", f"{parent}^{{commit}}"])
    missing = [f"{label} {value}" for (label, value), answer in
               zip((("worktreeTree tree", tree), ("head commit", parent)), found) if answer is None]
    if missing:
        raise CairnError("commit_missing", f"not in {repo}: {', '.join(missing)}")
    return _line(_git(repo, "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", message))


def add_worktree(repo: Path, path: Path, head_sha: str, worktree_sha: str | None = None,
                 index_tree: str | None = None) -> None:
    """A new linked worktree at `path` (its parent made if missing): HEAD detached at
    `head_sha`, files equal to `worktree_sha`'s tree (default: `head_sha`'s: a plain
    checkout), index equal to `index_tree` (default: HEAD's tree). No hook runs.

    All or nothing: on failure the worktree is removed again. commit_missing when an
    object is not in the repository (checked before anything is created). The
    repository's worktree lock is held only while its worktree records are written
    (adding, and removing on failure), not while the files are written: forks of one
    repository fill their worktrees in parallel."""
    if not is_object_id(head_sha):
        raise CairnError("commit_missing", f"headSha {head_sha!r} is not a commit id")
    worktree_sha = worktree_sha or head_sha
    worktree_tree, index_tree = _restore_trees(repo, head_sha, worktree_sha, index_tree)
    add_worktree_detached(repo, path, head_sha)
    try:
        _restore(path, worktree_sha, worktree_tree, index_tree)
    except BaseException:
        try:
            remove_worktree(repo, path)
        except CairnError:
            pass  # the first failure is the one worth reporting
        raise


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the linked worktree at `path` with everything in it, even if it has changes
    or is locked; a worktree already gone is fine (git drops its record too).

    No `git worktree prune`: that would also drop the records of the user's own
    worktrees whose directories are merely out of reach (an unmounted disk)."""
    with _worktree_lock(repo):
        proc = _run(repo, ["worktree", "remove", "--force", "--force", str(path)])
    if proc.returncode != 0 and b"is not a working tree" not in proc.stderr:
        raise _failure(repo, ["worktree"], proc)


def reset_worktree(worktree: Path, current_sha: str, target_sha: str, index_tree: str | None,
                   current_index: Path | None = None) -> None:
    """Make the files of `worktree` (a session's own, in use) equal to the tree of commit
    `target_sha` and its index equal to `index_tree` (None: the target's tree), where
    `current_sha` is a snapshot of the files it holds now (`snapshot().worktree_sha`) and
    `current_index`, if there is one, that snapshot's private index (`keep_index`): with
    its stat data only the files that differ are written, else every file is.

    Files the snapshot holds and the target does not (untracked ones too) are removed;
    ignored files, and files the snapshot left out (over the size cap), stay. HEAD is
    not touched. Idempotent: after a crash part-way, running it again with the same
    snapshot finishes the job (what the target holds is written again, what the snapshot
    alone holds is removed)."""
    worktree, index_file = _locate(Path(worktree))
    target_tree, index_tree = _restore_trees(worktree, target_sha, target_sha, index_tree)
    fd, name = tempfile.mkstemp(prefix=INDEX_COPY_PREFIX, dir=index_file.parent)
    os.close(fd)
    scratch = Path(name)
    try:
        env = {"GIT_INDEX_FILE": str(scratch)}
        # The scratch index names every file there is now, so `--reset -u` removes those
        # the target lacks.
        if current_index is not None and current_index.is_file():
            shutil.copy2(current_index, scratch)  # the mtime too: racy-clean checks stay as strict
        else:
            scratch.unlink()
            _git(worktree, "read-tree", current_sha, env=env)
        _git(worktree, "-c", f"checkout.workers={CHECKOUT_WORKERS}", "read-tree", "--reset", "-u", target_sha,
             env=env)
        os.replace(scratch, index_file)  # an index whose stat data matches the files just written
        if index_tree != target_tree:
            _git(worktree, "read-tree", "-m", index_tree)
    finally:
        scratch.unlink(missing_ok=True)
        Path(f"{scratch}.lock").unlink(missing_ok=True)


def detach_head(worktree: Path, sha: str) -> None:
    """Point the worktree's own HEAD at commit `sha`, detached; no file, index or branch moves."""
    _git(worktree, "update-ref", "--no-deref", "-m", "cairnd rewind", "HEAD", sha)


# --------------------------------------------------------------------------- comparing trees


@dataclass(frozen=True)
class FileChange:
    """One path between two trees, as `git diff --raw --numstat -M` tells it."""

    path: str
    status: str  # git's letter: A added, D deleted, M modified, R renamed, T type changed
    old_path: str | None  # where a rename came from
    old_mode: str | None  # None when added
    new_mode: str | None  # None when deleted
    added: int | None  # lines; None for a binary file
    removed: int | None
    binary: bool

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "status": self.status, "added": self.added or 0,
                "removed": self.removed or 0, "binary": self.binary, "old_path": self.old_path,
                "old_mode": self.old_mode, "new_mode": self.new_mode}


# Plumbing on purpose: diff-tree ignores the user's diff.* and color configuration, so
# its output is git's own and stable; -M finds renames as `git diff` does by default.
_DIFF_ARGS = ("diff-tree", "-r", "-M", "--no-color", "--no-ext-diff", "--no-textconv")


def _trees_of(repo: Path, pairs: Sequence[tuple[str | None, str]]) -> list[tuple[str, str] | CairnError]:
    """Each pair's (old tree, new tree), or the error naming what is wrong with it: one
    cat-file for all of them. An old side of None is the empty tree (nothing)."""
    wanted: list[str] = []
    for old, new in pairs:
        wanted.extend(f"{sha}^{{tree}}" for sha in (old, new) if is_object_id(sha))
    found = dict(zip(wanted, _object_types(repo, wanted))) if wanted else {}
    empty: str | None = None
    trees: list[tuple[str, str] | CairnError] = []
    for old, new in pairs:
        bad = [f"{label} {value!r}" for label, value in (("from", old), ("to", new))
               if not (value is None and label == "from") and not is_object_id(value)]
        if bad:
            trees.append(CairnError("bad_request", f"{' and '.join(bad)}: not a git object id"))
            continue
        missing = [sha for sha in dict.fromkeys((old, new)) if sha is not None and found[f"{sha}^{{tree}}"] is None]
        if missing:
            trees.append(CairnError("commit_missing", f"not in {repo}: {', '.join(missing)} "
                                                      "(its checkpoint refs were deleted and git collected it?)"))
            continue
        if old is None and empty is None:
            empty = _line(_git(repo, "hash-object", "-t", "tree", "--stdin", input=b""))
        old_tree = empty if old is None else found[f"{old}^{{tree}}"][0]  # type: ignore[index]
        trees.append((old_tree, found[f"{new}^{{tree}}"][0]))  # type: ignore[arg-type,index]
    return trees


def _tree_pair(repo: Path, old: str | None, new: str) -> tuple[str, str]:
    found = _trees_of(repo, [(old, new)])[0]
    if isinstance(found, CairnError):
        raise found
    return found


def parse_raw_numstat(raw: bytes, numstat: bytes) -> list[FileChange]:
    """Pure: `diff-tree -z --raw` and `diff-tree -z --numstat` of the same pair, joined."""
    counts: list[tuple[int | None, int | None]] = []
    fields = iter(numstat.split(b"\0"))
    for head in fields:
        if not head:
            continue
        added, removed, path = head.split(b"\t", 2)
        if not path:  # a rename: old and new path follow as fields of their own
            next(fields, None)
            next(fields, None)
        counts.append((None, None) if added == b"-" else (int(added), int(removed)))
    changes: list[FileChange] = []
    records = iter(raw.split(b"\0"))
    for record in records:
        if not record.startswith(b":"):
            continue
        old_mode, new_mode, _old_sha, _new_sha, status = record[1:].decode().split(" ")
        letter = status[:1]
        first = next(records)
        old_path, path = (first, next(records)) if letter in ("R", "C") else (None, first)
        added, removed = counts[len(changes)] if len(changes) < len(counts) else (0, 0)
        changes.append(FileChange(
            path=_display(path), status=letter, old_path=None if old_path is None else _display(old_path),
            old_mode=None if letter == "A" else old_mode, new_mode=None if letter == "D" else new_mode,
            added=added, removed=removed, binary=added is None,
        ))
    return changes


def split_raw_numstat(both: bytes) -> tuple[bytes, bytes]:
    """Pure: `diff-tree -z --raw --numstat` output cut into its raw records and its
    numstat records (raw ones come first, each `:` record followed by one path, or two
    for a rename or copy)."""
    position = 0
    while both.startswith(b":", position):
        record_end = both.index(b"\0", position)
        status = both[position:record_end].rsplit(b" ", 1)[-1][:1]
        paths = 2 if status in (b"R", b"C") else 1
        position = record_end + 1
        for _ in range(paths):
            position = both.index(b"\0", position) + 1
    return both[:position], both[position:]


def diff_files_many(repo: Path, pairs: Sequence[tuple[str | None, str]]) -> list[list[FileChange] | CairnError]:
    """`diff_files` of each (old, new) pair, with two git processes in all however many
    pairs there are (a cat-file to check them, one `diff-tree --stdin`): what a page
    listing every turn's changed files asks for. A pair with a bad or missing side gets
    its CairnError in its place; the others are still answered."""
    trees = _trees_of(repo, pairs)
    asked = list(dict.fromkeys(pair for pair in trees if isinstance(pair, tuple) and pair[0] != pair[1]))
    answers: dict[tuple[str, str], list[FileChange]] = {}
    if asked:
        out = _git(repo, *_DIFF_ARGS, "--stdin", "--always", "-z", "--raw", "--numstat",
                   input="".join(f"{old} {new}\n" for old, new in asked).encode())
        # diff-tree echoes each input line ("OLD NEW\n") before that pair's records.
        heads = [f"{old} {new}\n".encode() for old, new in asked]
        start = 0
        for index, pair in enumerate(asked):
            if not out.startswith(heads[index], start):
                raise CairnError("git_failed", f"git diff-tree --stdin in {repo}: output out of step at pair {index}")
            begin = start + len(heads[index])
            end = out.find(heads[index + 1], begin) if index + 1 < len(heads) else len(out)
            if end < 0:
                raise CairnError("git_failed", f"git diff-tree --stdin in {repo}: output out of step at pair {index + 1}")
            answers[pair] = parse_raw_numstat(*split_raw_numstat(out[begin:end]))
            start = end
    return [found if isinstance(found, CairnError) else answers.get(found, []) for found in trees]


def diff_files(repo: Path, old: str | None, new: str) -> list[FileChange]:
    """Every path that differs between the trees of commits (or trees) `old` (None: the
    empty tree) and `new`."""
    found = diff_files_many(repo, [(old, new)])[0]
    if isinstance(found, CairnError):
        raise found
    return found


def diff_text(repo: Path, old: str | None, new: str, *, stat: bool = False, stat_width: int = 80) -> bytes:
    """The unified diff (or `--stat`) between the trees of `old` and `new`, as git prints it:
    renames, mode changes, symlinks and `Binary files ... differ` included."""
    old_tree, new_tree = _tree_pair(repo, old, new)
    if old_tree == new_tree:
        return b""
    form = (f"--stat={stat_width}", "--summary") if stat else ("-p", "--full-index")
    return _git(repo, *_DIFF_ARGS, *form, old_tree, new_tree)


def split_patch(files: Sequence[FileChange], patch: bytes) -> list[bytes]:
    """Pure: git's unified diff of `files`' two trees cut into each file's own part, in
    `files`' order (git prints them in that order; a type change, a file that became a
    symlink, is printed as a deletion then a creation: two parts, both its own)."""
    parts = patch.split(b"\ndiff --git ") if patch else []
    # the split took each part's last newline but the last one's
    sections = [(part if index == 0 else b"diff --git " + part) + (b"\n" if index < len(parts) - 1 else b"")
                for index, part in enumerate(parts)]
    wanted = sum(2 if change.status == "T" else 1 for change in files)
    if len(sections) != wanted:
        raise CairnError("git_failed", f"git printed {len(sections)} file diffs for {len(files)} changed files")
    own: list[bytes] = []
    for change in files:
        taken = 2 if change.status == "T" else 1
        own.append(b"".join(sections[:taken]))
        sections = sections[taken:]
    return own


def diff_patches(repo: Path, old: str | None, new: str) -> list[tuple[FileChange, bytes]]:
    """Each changed file with its own part of git's unified diff (a diff page): two git
    processes, one `diff_files`, one `diff_text`."""
    files = diff_files(repo, old, new)
    return list(zip(files, split_patch(files, diff_text(repo, old, new)))) if files else []


def common_dir(path: Path) -> Path:
    """The git directory a repository's worktrees share: tells whether two paths are
    worktrees of one repository."""
    return Path(_line(_git(path, "rev-parse", "--path-format=absolute", "--git-common-dir")))


# --------------------------------------------------------------------------- branches


ZERO_ID = "0" * 40


def check_branch_name(repo: Path, name: str) -> str:
    """`refs/heads/<name>`, or bad_ref for a name git refuses as a branch."""
    if (not isinstance(name, str) or not name or name.startswith("-") or name == "HEAD"
            or any(ord(ch) < 32 for ch in name)):
        raise CairnError("bad_ref", f"branch {name!r} is not a valid branch name")
    ref = f"refs/heads/{name}"
    if _run(repo, ["check-ref-format", ref]).returncode != 0:
        raise CairnError("bad_ref", f"branch {name!r} is not a valid branch name (git check-ref-format refuses it)")
    return ref


def ref_commit(repo: Path, ref: str) -> str | None:
    """The object a full ref name points at, or None when there is no such ref."""
    proc = _run(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"])
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise _failure(repo, ["rev-parse"], proc)
        return None
    return _line(proc.stdout)


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    proc = _run(repo, ["merge-base", "--is-ancestor", ancestor, descendant])
    if proc.returncode not in (0, 1):
        raise _failure(repo, ["merge-base"], proc)
    return proc.returncode == 0


def checked_out_branches(repo: Path) -> dict[str, Path]:
    """refs/heads/... -> the worktree that has it checked out, for every worktree."""
    out = _git(repo, "worktree", "list", "--porcelain", "-z")
    found: dict[str, Path] = {}
    for block in out.split(b"\0\0"):
        fields = [f for f in block.split(b"\0") if f]
        where = next((f[len(b"worktree "):] for f in fields if f.startswith(b"worktree ")), None)
        for f in fields:
            if f.startswith(b"branch ") and where is not None:
                found[os.fsdecode(f[len(b"branch "):])] = Path(os.fsdecode(where))
    return found


def tree_id(repo: Path, commit: str) -> str:
    return _line(_git(repo, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{tree}}"))


def _user_identity(repo: Path) -> dict[str, str]:
    """The repository's configured user.name/user.email for a commit meant for people
    (land), else cairnd's fixed identity (git_env's)."""
    proc = _run(repo, ["config", "--get-regexp", r"^user\.(name|email)$"])
    values = dict(line.split(" ", 1) for line in _line(proc.stdout).splitlines() if " " in line)
    if proc.returncode != 0 or not values.get("user.name") or not values.get("user.email"):
        return {}
    name, email = values["user.name"], values["user.email"]
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def commit_tree_of(repo: Path, source: str, parent: str, message: str) -> str:
    """A commit with the tree of commit `source`, parent `parent` and `message`, dated as
    `source` is: the same checkpoint and message give the same commit, so landing twice
    (a retry after a crash) is a no-op rather than a diverging branch."""
    date = _line(_git(repo, "show", "-s", "--format=%ct", source))
    env = {**_user_identity(repo), "GIT_AUTHOR_DATE": f"@{date} +0000", "GIT_COMMITTER_DATE": f"@{date} +0000"}
    return _line(_git(repo, "commit-tree", "--no-gpg-sign", f"{source}^{{tree}}", "-p", parent, "-F", "-",
                      env=env, input=message.encode("utf-8")))


def set_ref(repo: Path, ref: str, new: str, old: str | None, reason: str) -> bool:
    """Move `ref` to `new` only if it still points at `old` (None: only if it does not
    exist); False when someone moved it in between."""
    proc = _run(repo, ["update-ref", "-m", reason, ref, new, old or "0" * len(new)])
    if proc.returncode != 0:
        if b"but expected" in proc.stderr or b"already exists" in proc.stderr or b"unable to resolve" in proc.stderr:
            return False
        raise _failure(repo, ["update-ref"], proc)
    return True


# -- a repository of one's own (the demo's) ---------------------------------------------------


def init_repository(path: Path, files: Mapping[str, str], message: str, branch: str = "main") -> str:
    """A new repository at `path` whose branch `branch` holds `files` (name -> text) in one
    commit, made with plumbing (no hook, no signing, cairnd's identity); the commit's id."""
    path.mkdir(parents=True)
    _git(path, "init", "-q")
    _git(path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
    for name, text in files.items():
        (path / name).write_text(text)
    _git(path, "update-index", "--add", "--", *files)
    tree = _line(_git(path, "write-tree"))
    commit = _line(_git(path, "commit-tree", "--no-gpg-sign", tree, "-m", message))
    _git(path, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def status_codes(worktree: Path) -> dict[str, str]:
    """What differs from HEAD: path -> its two-letter `git status --porcelain` code."""
    out = _git(worktree, "--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all")
    found: dict[str, str] = {}
    for record in out.decode("utf-8", "replace").split("\0"):
        if len(record) >= 4:
            found[record[3:]] = record[:2]
    return found


def head_summary(worktree: Path) -> str:
    """HEAD's short id and subject, as `git log -1 --format='%h %s'` shows it."""
    return _line(_git(worktree, "log", "-1", "--format=%h %s"))

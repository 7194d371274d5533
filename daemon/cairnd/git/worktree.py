"""Linked worktrees: made from a snapshot's trees (files and index exactly), reset in
place to another snapshot, removed. A worktree's record is written by cairnd where the
repository is plain (`gitfiles.write_worktree_record`: whole at once, no lock), else by
`git worktree add` under the repository's worktree records lock
(`git.worktree_records_lock`), which removing one also holds. Git runs through
`cairnd.git`; hooks never run (`read-tree`, not `checkout`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.git import objects as gitobjects
from cairnd.git import inner
from cairnd.git import vault as vaults
from cairnd.errors import CairnError
from cairnd.state.durable import fsync_dir, write_atomic


def add_worktree_detached(repo: Path, path: Path, head_sha: str, views: Path | None = None) -> None:
    """A new linked worktree at `path` with HEAD detached at `head_sha` and NO files or
    index yet: `restore` fills it. `path` must not exist or be an empty directory.

    With `views` (cairnd's `<state>/git`), the worktree's place is recorded there
    (`places.register`) before anything runs in it: from then on cairnd's git finds its
    directories from that record, never from the `.git` file an agent may rewrite."""
    if not git.is_object_id(head_sha):
        raise CairnError("commit_missing", f"{head_sha!r} is not a commit id")
    path.parent.mkdir(parents=True, exist_ok=True)
    if views is not None:
        _add_with_store(repo, path, head_sha, views)
        return
    dirs = places.dirs_or_none(repo)
    if dirs is not None and gitfiles.write_worktree_record(dirs, path, head_sha):
        return
    with git.worktree_records_lock(repo):
        _git_worktree_add(repo, repo, path, head_sha)


def _git_worktree_add(cwd: Path, repo: Path, path: Path, head_sha: str, env: dict[str, str] | None = None) -> None:
    """`git worktree add --no-checkout --detach`, where cairnd cannot write the record
    itself (another ref storage or object format)."""
    proc = git.run(cwd, ["worktree", "add", "--no-checkout", "--detach", str(path), head_sha], env=env)
    if proc.returncode != 0:
        if b"invalid reference" in proc.stderr:
            raise CairnError("commit_missing", f"commit {head_sha} is not in {repo}")
        raise git.failure(repo, ["worktree"], proc)


def _add_with_store(repo: Path, path: Path, head_sha: str, views: Path) -> None:
    """A worktree of a store of its own (`vault.make_store`), in the vault of `repo`'s
    repository: what its agent writes to git stays there (SPEC 16)."""
    source = places.source_common(repo)
    vault = vaults.ensure_vault(views, source, git.git_env())
    store = vaults.make_store(vault, gitfiles.record_name(path), vaults.store_config(source, git.git_env()))
    dirs = gitfiles.GitDirs(store, store)
    try:
        if gitfiles.write_worktree_record(dirs, path, head_sha):
            record = store / "worktrees" / gitfiles.record_name(path)
        else:  # git writes the record: read from the `.git` it has just written, before any agent ran
            _git_worktree_add(store, repo, path, head_sha, env={"GIT_DIR": str(store)})
            record = _record_git_wrote(path)
    except BaseException:
        vaults.remove_store(store)
        raise
    places.register(path, record, store, views)


def _record_git_wrote(path: Path) -> Path:
    text = (path / ".git").read_text("utf-8", "surrogateescape").strip()
    if not text.startswith("gitdir: "):
        raise CairnError("git_failed", f"git worktree add left no gitdir file in {path}")
    record = Path(text[len("gitdir: "):])
    return record if record.is_absolute() else Path(os.path.normpath(path / record))


class Trees(NamedTuple):
    """The trees of a restored state: its files, its index and its HEAD."""

    worktree: str
    index: str
    head: str


def trees_of(repo: Path, head: str, worktree_sha: str, index_tree: str | None) -> Trees:
    """Check the objects of a state to restore exist, in one git call (commit_missing
    names those that do not); return their trees. `index_tree` None: HEAD's tree."""
    if head != "HEAD" and not git.is_object_id(head):
        raise CairnError("commit_missing", f"headSha {head!r} is not a commit id")
    for label, value in (("worktreeSha", worktree_sha), ("indexTree", index_tree)):
        if value is not None and not git.is_object_id(value):
            raise CairnError("commit_missing", f"{label} {value!r} is not an object id")
    wanted = [("headSha commit", f"{head}^{{commit}}"), ("headSha commit", f"{head}^{{tree}}"),
              ("worktreeSha commit", f"{worktree_sha}^{{commit}}"),
              ("worktreeSha commit", f"{worktree_sha}^{{tree}}")]
    if index_tree is not None:
        wanted.append(("indexTree tree", f"{index_tree}^{{tree}}"))
    found = gitobjects.object_types(repo, [spec for _, spec in wanted])
    missing = [f"{label} {spec.split('^')[0]}" for (label, spec), answer in zip(wanted, found) if answer is None]
    if missing:
        raise CairnError("commit_missing", f"not in {repo}: {', '.join(dict.fromkeys(missing))}")
    ids = [answer[0] for answer in found if answer is not None]
    return Trees(worktree=ids[3], index=ids[4] if index_tree is not None else ids[1], head=ids[1])


def _restore(worktree: Path, worktree_sha: str, worktree_tree: str, index_tree: str) -> None:
    # One pass writes every file and an index whose stat data matches them (in
    # parallel on large trees: `git.CHECKOUT`).
    git.output(worktree, *git.CHECKOUT, "read-tree", "--reset", "-u", worktree_sha)
    if index_tree != worktree_tree:
        # A one-tree merge without -u keeps the stat data of every entry whose content
        # is unchanged, so `git status` stays fast; files are not touched.
        git.output(worktree, "read-tree", "-m", index_tree)


def commit_of_tree(repo: Path, tree: str, parent: str, message: str = git.SNAPSHOT_MESSAGE) -> str:
    """A commit whose tree is `tree` and whose parent is `parent` (a snapshot in the
    shape of a checkpoint's worktreeSha, for a tree recorded without one: PostHog
    Code's `worktreeTree`). commit_missing when either object is not there."""
    for label, value in (("worktreeTree", tree), ("head", parent)):
        if not git.is_object_id(value):
            raise CairnError("commit_missing", f"{label} {value!r} is not an object id")
    found = gitobjects.object_types(repo, [f"{tree}^{{tree}}", f"{parent}^{{commit}}"])
    missing = [f"{label} {value}" for (label, value), answer in
               zip((("worktreeTree tree", tree), ("head commit", parent)), found) if answer is None]
    if missing:
        raise CairnError("commit_missing", f"not in {repo}: {', '.join(missing)}")
    return git.first_line(git.output(repo, "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", message))


def add_worktree(repo: Path, path: Path, head_sha: str, worktree_sha: str | None = None,
                 index_tree: str | None = None, *, trees: Trees | None = None, inner_map: Path | None = None,
                 checkpoint: Mapping[str, Any] | None = None, views: Path | None = None) -> Trees:
    """A new linked worktree at `path` (its parent made if missing): HEAD detached at
    `head_sha`, files equal to `worktree_sha`'s tree (default: `head_sha`'s: a plain
    checkout), index equal to `index_tree` (default: HEAD's tree). No hook runs.
    Returns the three trees (looked up anyway: a caller pinning them needs no git);
    `trees`: what `trees_of` already answered for these objects (not asked again).

    All or nothing: on failure the worktree is removed again. commit_missing when an
    object is not in the repository (checked before anything is created). The
    repository's worktree lock is held only while its worktree records are written
    (adding, and removing on failure), not while the files are written: forks of one
    repository fill their worktrees in parallel.

    With `inner_map`, the repositories inside it are made too (`make_inner`): each
    submodule at the state `checkpoint` records for it (else at the commit the tree
    records), each nested repository `checkpoint` lists; what was made is written there."""
    worktree_sha = worktree_sha or head_sha
    trees = trees or trees_of(repo, head_sha, worktree_sha, index_tree)
    add_worktree_detached(repo, path, head_sha, views)
    try:
        _restore(path, worktree_sha, trees.worktree, trees.index)
        if inner_map is not None:
            make_inner(path, trees.worktree, checkpoint or {}, inner_map, head=head_sha)
    except BaseException:
        try:
            remove_worktree(repo, path)
        except CairnError:
            pass  # the first failure is the one worth reporting
        raise
    return trees


def make_inner(path: Path, worktree_tree: str, checkpoint: Mapping[str, Any], inner_map: Path,
               head: str | None = None) -> list[inner.InnerRepo]:
    """The submodules (recursively) and nested repositories of a worktree cairnd has just
    filled with `worktree_tree`, at the states `checkpoint` records (`submodules`,
    `nested`); the submodules made are listed in `inner_map`."""
    dirs = places.discover(path)  # the record cairnd has just written (its place), not yet the agent's
    git_dir, common = dirs.git_dir, places.source_common(path)  # submodules' stores are the user's
    submodules = {s["path"]: s for s in checkpoint.get("submodules") or () if isinstance(s, Mapping)}
    made = inner.checkout(path, git_dir, common, worktree_tree, submodules, head=head)
    nested = [n for n in checkpoint.get("nested") or () if isinstance(n, Mapping)]
    if nested:
        made += inner.restore_nested(path, nested, inner.ensure_nested_store(common))
    inner.write_map(inner_map, [m for m in made if m.kind == inner.SUBMODULE])
    return made


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the linked worktree at `path` with everything in it, even if it has changes
    or is locked; a worktree already gone is fine (git drops its record too). A worktree
    of a store of its own goes with its store (its checkpoints are in the vault).

    No `git worktree prune`: that would also drop the records of the user's own
    worktrees whose directories are merely out of reach (an unmounted disk)."""
    place = places.lookup(path)
    # A store goes only with the worktree its record names: mid-rewind (a moved worktree,
    # a registry not yet told) the record cairnd has on file may be another's now.
    store = (place.common_dir if place is not None and place.own_store and _names(place.git_dir, path)
             else _store_of(path))
    if store is not None:
        _remove_tree(path)
        vaults.remove_store(store)
        places.forget(path)
        return
    with git.worktree_records_lock(repo):
        proc = git.run(repo, ["worktree", "remove", "--force", "--force", str(path)])
    if proc.returncode != 0 and b"is not a working tree" not in proc.stderr:
        raise git.failure(repo, ["worktree"], proc)
    places.forget(path)


def _names(record: Path, path: Path) -> bool:
    """Whether the worktree record `record` is the one of the worktree at `path`."""
    try:
        named = (record / "gitdir").read_text("utf-8", "surrogateescape").strip()
    except OSError:
        return False
    return named == f"{os.path.realpath(path)}/.git"


def _store_of(path: Path) -> Path | None:
    """The store whose worktree record names `path` (one a stop left before cairnd's
    registry knew of it, or whose record moved), found from the vaults' side, never
    from the worktree: a store is named after the path its worktree was made at, and
    its record after the path it is at now."""
    name = gitfiles.record_name(path)
    for root in places.roots():
        for record in sorted((root / vaults.VAULTS).glob(f"*/{vaults.STORES}/*/worktrees/{name}")):
            if _names(record, path):
                return record.parent.parent
    return None


def _remove_tree(path: Path) -> None:
    """Remove a worktree's files, those an agent made read-only too."""
    def unprotect(function: Any, name: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o600) if not os.path.isdir(name) else os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif path.exists():
        shutil.rmtree(path, onerror=unprotect)


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
    worktree, index_file = git.locate(Path(worktree))
    target_tree, index_tree, _head = trees_of(worktree, target_sha, target_sha, index_tree)
    fd, name = tempfile.mkstemp(prefix=git.INDEX_COPY_PREFIX, dir=index_file.parent)
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
            git.output(worktree, "read-tree", current_sha, env=env)
        git.output(worktree, *git.CHECKOUT, "read-tree", "--reset", "-u", target_sha,
             env=env)
        os.replace(scratch, index_file)  # an index whose stat data matches the files just written
        if index_tree != target_tree:
            git.output(worktree, "read-tree", "-m", index_tree)
    finally:
        scratch.unlink(missing_ok=True)
        Path(f"{scratch}.lock").unlink(missing_ok=True)


def detach_head(worktree: Path, sha: str) -> None:
    """Point the worktree's own HEAD at commit `sha`, detached; no file, index or branch moves."""
    git.output(worktree, "update-ref", "--no-deref", "-m", "cairnd rewind", "HEAD", sha)
    place = places.lookup(worktree)
    if place is not None:
        places.sync_head(place)


def record_of(repo: Path, worktree: Path) -> Path | None:
    """The record (`<common>/worktrees/<name>`) of the linked worktree at `worktree`, found
    from the repository's side, never from the worktree's `.git` (the agent can write
    that): the record whose `gitdir` names `worktree/.git`. None when there is none."""
    dirs = places.dirs_or_none(repo)
    if dirs is None:
        return None
    wanted = f"{os.path.realpath(worktree)}/.git"
    records = dirs.common_dir / "worktrees"
    try:
        candidates = sorted(records.iterdir())
    except OSError:
        return None
    for record in candidates:
        try:
            named = (record / "gitdir").read_text("utf-8", "surrogateescape").strip()
        except OSError:
            continue
        if named == wanted or os.path.realpath(named) == wanted:
            return record
    return None


def move_worktree(src: Path, dst: Path, src_record: Path, dst_record: Path) -> None:
    """Move the linked worktree at `src` (record `src_record`) to `dst` (record
    `dst_record`) by renaming both, then pointing each at the other: what `git worktree
    move` does, plus the record's name, which cairnd derives from the path.

    Idempotent, and its own undo: after a stop at any point, running it again finishes
    the move, and running it with the arguments swapped puts everything back."""
    if src_record.exists() and not dst_record.exists():
        os.rename(src_record, dst_record)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists() and not dst.exists():
        os.rename(src, dst)
    if not dst.is_dir() or not dst_record.is_dir():
        raise CairnError("git_failed", f"moving worktree {src} to {dst}: {dst} or its record {dst_record} is missing")
    write_atomic(dst_record / "gitdir", f"{os.path.realpath(dst)}/.git\n".encode())
    dot_git = dst / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        shutil.rmtree(dot_git)  # the agent's own: a linked worktree's .git is a file
    write_atomic(dot_git, f"gitdir: {dst_record}\n".encode())
    fsync_dir(dst.parent)
    fsync_dir(dst_record.parent)

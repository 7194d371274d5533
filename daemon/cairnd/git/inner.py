"""Repositories inside a session's worktree (SPEC 3): submodules checked out from the
source checkout's own submodule repositories, and submodules and nested repositories
snapshotted into a store, pinned there, and restored exactly.

- **A submodule** of a session worktree gets a git directory cairnd makes,
  `<the worktree's git directory>/modules/<path, quoted>`, whose objects are borrowed
  (`objects/info/alternates`) from its **store**: the source checkout's own submodule
  repository (`<common>/modules/<name>`, recursively `.../modules/<name>/modules/<name>`).
  Nothing is copied and nothing is fetched: a worktree is made offline in the time its
  files take to write.
- **A nested repository** (a directory with a `.git` directory of its own that is not
  a submodule: one the agent cloned or made) has as its store a bare repository cairnd
  keeps beside the superproject's refs, `<common>/cairnd-nested`, into which its
  objects are copied.

A snapshot of either never runs git in a git directory the agent can write: git runs
with `GIT_DIR` a scratch directory cairnd makes (HEAD, no config), the inner index
copied, new objects written straight into the store, and the agent's own new objects
(a commit, a staged file) copied into the store first, each checked against its id.
Where each submodule's git directory and store are comes from the map cairnd writes
when it makes the worktree (`inner.json` beside it, where no agent writes), never from
a `.git` file in the worktree.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from cairnd.errors import CairnError
from cairnd.git import files as gitfiles
from cairnd.git import objects as gitobjects
from cairnd.git import places
from cairnd.git import run as git
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import vault as vaults

NESTED_STORE = "cairnd-nested"  # under the superproject's common git directory
SUBMODULE, NESTED = "submodule", "nested"


@dataclass(frozen=True)
class InnerRepo:
    """A repository inside a session worktree, as cairnd knows it."""

    path: str  # relative to the session worktree's top, "/"-separated
    kind: str  # SUBMODULE or NESTED
    git_dir: Path  # its git directory (made by cairnd for a submodule)
    store: Path  # the git directory its checkpoint objects and refs go to


def module_key(path: str) -> str:
    """A path as one file name: the name of its git directory and of its pins."""
    return urllib.parse.quote(path, safe="")


def pin_name(session_id: str, turns: int | str, path: str) -> str:
    """The ref in an inner repository's store that keeps a checkpoint of it alive."""
    return f"{git.REF_NAMESPACE}{session_id}/{turns}/{module_key(path)}"


# --------------------------------------------------------------------------- the map


def read_map(map_file: Path | None) -> list[InnerRepo]:
    """The submodules cairnd made for a worktree (none when there is no map)."""
    if map_file is None:
        return []
    try:
        rows = orjson.loads(Path(map_file).read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CairnError("internal", f"cannot read {map_file}: {exc}") from None
    return [InnerRepo(r["path"], r["kind"], Path(r["gitDir"]), Path(r["store"])) for r in rows]


def write_map(map_file: Path, repos: Sequence[InnerRepo]) -> None:
    rows = [{"path": r.path, "kind": r.kind, "gitDir": str(r.git_dir), "store": str(r.store)} for r in repos]
    tmp = map_file.with_name(map_file.name + ".tmp")
    map_file.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(orjson.dumps(rows))
    os.replace(tmp, map_file)


# --------------------------------------------------------------------------- git directories


def _quote_config(value: str) -> str:
    if "\n" in value or "\0" in value:
        raise CairnError("bad_request", f"path {value!r} cannot be written in a git config")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_git_dir(git_dir: Path, work_tree: Path | None, alternates: Sequence[Path], head: str,
                 branch: str | None = None) -> None:
    """A git directory written by hand (no process): HEAD at `head` (on `branch` when
    given), objects borrowed from `alternates`, `core.worktree` when the directory is not
    `<work_tree>/.git`."""
    if not git.is_object_id(head):
        raise CairnError("commit_missing", f"headSha {head!r} is not a commit id")
    (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (git_dir / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (git_dir / "refs" / "tags").mkdir(exist_ok=True)
    if alternates:
        (git_dir / "objects" / "info" / "alternates").write_text("".join(f"{os.path.realpath(a)}\n" for a in alternates))
    config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    if work_tree is not None:
        config += f"\tworktree = {_quote_config(str(work_tree))}\n"
    (git_dir / "config").write_text(config)
    if branch and _plain_branch(branch):
        ref = git_dir / "refs" / "heads" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(f"{head}\n")
        (git_dir / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    else:
        (git_dir / "HEAD").write_text(f"{head}\n")


def _plain_branch(name: str) -> bool:
    parts = name.split("/")
    return (all(p and not p.startswith(".") and not p.endswith(".lock") for p in parts)
            and not any(c in name for c in " ~^:?*[\\\0\n\t") and ".." not in name and "@{" not in name)


def ensure_nested_store(common_dir: Path) -> Path:
    """The bare repository that holds nested repositories' checkpoints (made on first use)."""
    store = Path(common_dir) / NESTED_STORE
    if not (store / "HEAD").exists():
        aside = Path(tempfile.mkdtemp(prefix=".cairnd-nested-", dir=common_dir))
        (aside / "objects" / "pack").mkdir(parents=True)
        (aside / "refs" / "heads").mkdir(parents=True)
        (aside / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
        (aside / "HEAD").write_text("ref: refs/heads/main\n")
        try:
            os.rename(aside, store)
        except OSError:  # made meanwhile by another checkpoint
            shutil.rmtree(aside, ignore_errors=True)
    return store


def relocate(source_map: Path, target_map: Path, worktree: Path, old_record: Path, new_record: Path) -> None:
    """After a worktree moved to `worktree` (its record from `old_record` to `new_record`),
    point each submodule `source_map` lists at its git directory again (the `.git` file,
    `core.worktree`) and list them in `target_map`. Idempotent."""
    repos = read_map(source_map)
    if not repos:
        return
    old, new = os.path.realpath(old_record), os.path.realpath(new_record)
    moved = []
    for repo in repos:
        git_dir = os.path.realpath(repo.git_dir)
        if git_dir == old or git_dir.startswith(old + "/"):
            git_dir = new + git_dir[len(old):]
        work_tree = worktree / repo.path
        config = Path(git_dir) / "config"
        if config.is_file():
            text = config.read_text("utf-8", "surrogateescape")
            line = f"\tworktree = {_quote_config(str(work_tree))}"
            config.write_text(re.sub(r"(?m)^[ \t]*worktree[ \t]*=.*$", lambda _m: line, text, count=1),
                              "utf-8", "surrogateescape")
            if work_tree.is_dir():
                (work_tree / ".git").write_text(f"gitdir: {git_dir}\n")
        moved.append(replace(repo, git_dir=Path(git_dir)))
    write_map(target_map, moved)


def stores(map_file: Path | None, common_dir: Path) -> dict[str, Path]:
    """path -> store of each submodule a map lists, and "" -> the nested repositories' store."""
    found = {repo.path: repo.store for repo in read_map(map_file)}
    found[""] = Path(common_dir) / NESTED_STORE
    return found


def pin_checkpoints(stores_by_path: Mapping[str, Path], session_id: str,
                    checkpoints: Sequence[Mapping[str, Any]]) -> None:
    """Pin the inner states of `checkpoints` under `session_id`'s refs in their stores
    (an abandoned session's, before the session's own refs are reused)."""
    wanted: dict[Path, dict[str, str]] = {}
    for params in checkpoints:
        turns = params.get("turns")
        if not isinstance(turns, int):
            continue
        for kind in ("submodules", "nested"):
            for entry in params.get(kind) or ():
                if not isinstance(entry, Mapping) or not git.is_object_id(entry.get("worktreeSha")):
                    continue
                store = stores_by_path.get(entry.get("path", "")) if kind == "submodules" else stores_by_path.get("")
                if store is None or not (store / "objects").is_dir():
                    continue
                wanted.setdefault(store, {}).update(pins_of(session_id, turns, entry, None))
    for store, refs in wanted.items():
        present = gitobjects.object_types(store, list(refs.values()))
        pin(store, {name: sha for (name, sha), found in zip(refs.items(), present) if found is not None})


# --------------------------------------------------------------------------- making worktrees


def _trees(store: Path, head: str, worktree_sha: str, index_tree: str | None) -> tuple[str, str]:
    """(worktree tree, index tree) of a state whose objects are in `store`; commit_missing otherwise."""
    specs = [f"{head}^{{commit}}", f"{worktree_sha}^{{tree}}", f"{(index_tree or head)}^{{tree}}"]
    for value in (head, worktree_sha, index_tree):
        if value is not None and not git.is_object_id(value):
            raise CairnError("commit_missing", f"{value!r} is not an object id")
    found = gitobjects.object_types(store, specs)
    if None in found:
        raise CairnError("commit_missing", f"not in {store}: {', '.join(s for s, a in zip(specs, found) if a is None)}")
    return found[1][0], found[2][0]  # type: ignore[index]


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..", ".git") for p in parts)


def submodules_of(store: Path, work_tree: Path, tree: str, head: str | None = None) -> list[tuple[str, str, Path]]:
    """(path, commit, store) of each submodule of `tree`, whose files are in `work_tree`:
    the paths and names `.gitmodules` gives (only a name whose repository is under the
    store's `modules/` counts), the commits `tree` records."""
    gitmodules = work_tree / ".gitmodules"
    env = {"GIT_DIR": str(store)}
    vault = places.vault_of_common(store)  # the superproject's checkpoints are in its vault
    if vault is not None:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(vault / "objects")
    if gitmodules.is_file() and not gitmodules.is_symlink():
        source = ["--file", str(gitmodules)]
    elif head is not None:  # deleted from the files (not yet committed): HEAD's says where they are
        source = ["--blob", f"{head}:.gitmodules"]
    else:
        return []
    proc = git.run(work_tree, ["config", *source, "-z", "--get-regexp", r"^submodule\..*\.path$"], env=env)
    if proc.returncode != 0:
        return []
    names: dict[str, str] = {}
    for record in proc.stdout.decode("utf-8", "surrogateescape").split("\0"):
        key, _, value = record.partition("\n")
        if key.startswith("submodule.") and key.endswith(".path") and _safe_relative(value.rstrip("/")):
            names[value.rstrip("/")] = key[len("submodule."):-len(".path")]
    if not names:
        return []
    out = git.output(work_tree, "ls-tree", "-z", tree, "--", *names, env=env)
    modules = Path(os.path.realpath(store / "modules"))
    found = []
    for entry in out.split(b"\0"):
        meta, _, path_bytes = entry.partition(b"\t")
        fields = meta.split()
        if len(fields) != 3 or fields[0] != b"160000":
            continue
        path = path_bytes.decode("utf-8", "surrogateescape")
        name = names.get(path)
        if name is None:
            continue
        sub_store = Path(os.path.realpath(store / "modules" / name))
        if modules not in sub_store.parents or not (sub_store / "objects").is_dir():
            continue  # not initialised in the source checkout: left empty, as git leaves it
        found.append((path, fields[2].decode(), sub_store))
    return found


def in_place(work_tree: Path, dirs: gitfiles.GitDirs, prefix: str = "") -> list[InnerRepo]:
    """The initialised submodules of a checkout cairnd did not make (an in-place
    session), recursively, parents first: each one's git directory is its store,
    `<common>/modules/<name>` (`.../modules/<name>/modules/<name>` below), found from
    `.gitmodules` and the gitlinks HEAD records, never from a `.git` file. No git
    process when there is no `.gitmodules`."""
    if not (work_tree / ".gitmodules").is_file():
        return []
    head = gitfiles.read_head(dirs)
    tree = head[0] if head is not None else "HEAD"
    found: list[InnerRepo] = []
    for path, _gitlink, store in submodules_of(dirs.common_dir, work_tree, tree):
        found.append(InnerRepo(prefix + path, SUBMODULE, store, store))
        found += in_place(work_tree / path, gitfiles.GitDirs(store, store), f"{prefix}{path}/")
    return found


def checkout(work_tree: Path, git_dir: Path, store: Path, tree: str, states: Mapping[str, Mapping[str, Any]],
             prefix: str = "", head: str | None = None) -> list[InnerRepo]:
    """Check out every submodule of `tree` (just written into `work_tree`, whose git
    directory is `git_dir` and whose objects are in `store`), recursively: at the state
    `states` records for its path (headSha, worktreeSha, indexTree, branch), else at the
    commit `tree` records. Returns what was made, parents first."""
    made: list[InnerRepo] = []
    for path, gitlink, sub_store in submodules_of(store, work_tree, tree, head):
        full = prefix + path
        state = states.get(full) or {}
        head = state.get("headSha") or gitlink
        worktree_sha = state.get("worktreeSha") or head
        index_tree = state.get("indexTree")
        wtree, itree = _trees(sub_store, head, worktree_sha, index_tree)
        sub_dir = git_dir / "modules" / module_key(path)
        sub_tree = work_tree / path
        if sub_dir.exists():
            shutil.rmtree(sub_dir)
        make_git_dir(sub_dir, sub_tree, [sub_store / "objects"], head, state.get("branch"))
        sub_tree.mkdir(parents=True, exist_ok=True)
        (sub_tree / ".git").write_text(f"gitdir: {sub_dir}\n")
        fill(sub_dir, sub_tree, worktree_sha, wtree, itree)
        made.append(InnerRepo(full, SUBMODULE, sub_dir, sub_store))
        made += checkout(sub_tree, sub_dir, sub_store, wtree, states, prefix=f"{full}/", head=head)
    return made


def fill(git_dir: Path, work_tree: Path, worktree_sha: str, worktree_tree: str, index_tree: str) -> None:
    """Write the files of `worktree_sha` and the index `index_tree` (read-tree: no hook)."""
    env = {"GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(work_tree)}
    git.output(work_tree, *git.CHECKOUT, "read-tree", "--reset", "-u", worktree_sha, env=env)
    if index_tree != worktree_tree:
        git.output(work_tree, "read-tree", "-m", index_tree, env=env)


def restore_nested(top: Path, states: Sequence[Mapping[str, Any]], store: Path) -> list[InnerRepo]:
    """Make each nested repository of `states` under `top` again: a `.git` directory
    borrowing from the store, HEAD (and its branch), index and files as recorded."""
    made = []
    for state in sorted(states, key=lambda s: s["path"]):
        path = state["path"]
        if not _safe_relative(path):
            raise CairnError("bad_request", f"nested repository path {path!r} is not a relative path")
        work_tree = top / path
        git_dir = work_tree / ".git"
        wtree, itree = _trees(store, state["headSha"], state["worktreeSha"], state.get("indexTree"))
        work_tree.mkdir(parents=True, exist_ok=True)
        if git_dir.exists() or git_dir.is_symlink():
            if git_dir.is_dir() and not git_dir.is_symlink():
                shutil.rmtree(git_dir)
            else:
                git_dir.unlink()
        make_git_dir(git_dir, None, [store / "objects"], state["headSha"], state.get("branch"))
        fill(git_dir, work_tree, state["worktreeSha"], wtree, itree)
        made.append(InnerRepo(path, NESTED, git_dir, store))
    return made


# --------------------------------------------------------------------------- objects into the store


def copy_objects(source: Path, store: Path) -> int:
    """Copy into `store`'s objects what `source` (an objects directory the agent writes)
    holds and the store lacks, each object checked against its id (`vault.copy_objects`)."""
    return vaults.copy_objects(source, store, git.git_env())


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Captured:
    """One inner repository's state at a checkpoint."""

    entry: dict[str, Any]  # {path, headSha, branch, indexTree, worktreeSha, dirty}
    snapshot: gitsnapshot.Snapshot
    gitlinks: dict[bytes, str]  # the children's commits its snapshot recorded


def capture(repo: InnerRepo, top: Path, max_file_bytes: int, message: str,
            gitlinks: Mapping[bytes, str] | None = None) -> Captured | None:
    """Snapshot an inner repository into its store (nothing pinned yet: `pin`). None when
    it cannot be (no commit yet, its git directory is not one): the caller names it in
    `skipped`."""
    work_tree = top / repo.path
    git_dir = repo.git_dir
    if git_dir.is_symlink() or not git_dir.is_dir() or not work_tree.is_dir():
        return None
    head = gitfiles.read_head(gitfiles.GitDirs(git_dir, git_dir))
    if head is None:
        return None
    copy_objects(git_dir / "objects", repo.store)
    with tempfile.TemporaryDirectory(prefix="cairnd-inner-") as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "refs").mkdir()
        (scratch / "objects").mkdir()
        (scratch / "HEAD").write_text(f"{head[0]}\n")
        try:
            exclude = (git_dir / "info" / "exclude").read_bytes()
        except OSError:
            exclude = b""
        if exclude:
            (scratch / "info").mkdir()
            (scratch / "info" / "exclude").write_bytes(exclude)
        place = gitsnapshot.Place(
            work_tree=work_tree, index_file=git_dir / "index",
            env={"GIT_DIR": str(scratch), "GIT_WORK_TREE": str(work_tree),
                 "GIT_OBJECT_DIRECTORY": str(repo.store / "objects"),
                 "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(git_dir / "objects")},
            objects=gitfiles.GitDirs(repo.store, repo.store))
        try:
            snap = gitsnapshot.snapshot(work_tree, max_file_bytes, message, gitlinks=gitlinks, place=place)
        except CairnError:
            return None
    snap = replace(snap, branch=head[1])
    entry = {"path": repo.path, "headSha": snap.head_sha, "branch": snap.branch, "indexTree": snap.index_tree,
             "worktreeSha": snap.worktree_sha, "dirty": snap.dirty}
    return Captured(entry, snap, dict(gitlinks or {}))


def pins_of(session_id: str, turns: int | str, entry: Mapping[str, Any], trees: tuple[str, str] | None) -> dict[str, str]:
    """The refs that keep an inner checkpoint alive in its store: its commit, and its index
    tree when that is neither the commit's tree nor HEAD's (`trees`; None: pin it anyway)."""
    ref = pin_name(session_id, turns, entry["path"])
    pins = {ref: entry["worktreeSha"]}
    index_tree = entry.get("indexTree")
    if git.is_object_id(index_tree) and (trees is None or index_tree not in trees):
        pins[f"{ref}-index"] = index_tree
    return pins


def pin(store: Path, pins: Mapping[str, str]) -> None:
    """Write the pins into the store: loose refs by hand, else one `update-ref --stdin`."""
    dirs = gitfiles.GitDirs(store, store)
    rest = {name: sha for name, sha in pins.items() if not gitfiles.write_loose_ref(dirs, name, sha)}
    if rest:
        git.output(store, "--git-dir", str(store), "update-ref", "--stdin", "-z", input=b"".join(
            b"update " + name.encode() + b"\0" + sha.encode() + b"\0\0" for name, sha in rest.items()))


def snapshot_trees(snap: gitsnapshot.Snapshot) -> tuple[str, str] | None:
    """(worktree tree, HEAD tree) when known without git (HEAD's: equal to the index's
    when nothing is staged)."""
    if snap.worktree_tree and not snap.staged:
        return snap.worktree_tree, snap.index_tree
    return None


def delete_session_pins(stores: Sequence[Path], session_id: str) -> None:
    """Remove every pin of a session from the given stores (a deleted session)."""
    for store in dict.fromkeys(stores):
        if (store / "HEAD").exists():
            proc = git.run(store, ["--git-dir", str(store), "for-each-ref", "--format=%(refname)",
                                   f"{git.REF_NAMESPACE}{session_id}/"])
            names = [n for n in proc.stdout.decode().splitlines() if n]
            if names:
                git.run(store, ["--git-dir", str(store), "update-ref", "--stdin"],
                        input="".join(f"delete {n}\n" for n in names).encode())


def forget_session(map_file: Path | None, repo: Path, session_id: str) -> None:
    """Remove a session's pins from every store of its inner repositories (it is deleted,
    or its creation rolled back): read its map before its folder goes."""
    try:
        common = git.common_dir(Path(repo))
    except CairnError:
        return
    delete_session_pins(list(stores(map_file, common).values()), session_id)

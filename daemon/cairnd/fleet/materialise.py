"""A session made on another host, rebuilt on this one (SPEC 17): its log from the
object store, byte for byte, and its worktree at its last checkpoint from the
checkpoint repository, in this host's own repository for the session's origin, with
its submodules and nested repositories at the states its checkpoint records (their
objects fetched into this host's stores for them: `fetch_inner`).

Used for a takeover (the owner died: this host carries the session on) and, without
a worktree, for a fork of a session another host owns (the fork needs the log and
the checkpoint objects, not the parent's files).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairnd.git import run as git
from cairnd.git import worktree as gitworktree
from cairnd.git import inner, places
from cairnd.state.layout import StateLayout
from cairnd.state.durable import write_atomic
from cairnd.sessionlog.entries import CHECKPOINT_METHOD, method_of, parse_message, params_of
from cairnd.errors import CairnError
from cairnd.fleet import remote
from cairnd.state.registry import Registry, SessionRow
from cairnd.sessionlog.transcript import session_state


@dataclass(frozen=True)
class Descriptor:
    """What the fleet knows of a session beyond its log (bucket cairnd_sessions)."""

    session: str
    origin: str           # the repository it was made from: a git URL or the first host's path
    title: str
    agent: str
    parent: str | None
    root: str
    deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "title": self.title, "agent": self.agent, "parent": self.parent,
                "root": self.root, "deleted": self.deleted}

    @classmethod
    def of(cls, session: str, value: dict[str, Any]) -> Descriptor:
        return cls(session, str(value["origin"]), str(value.get("title") or session), str(value.get("agent") or "reference"),
                   value.get("parent"), str(value.get("root") or session), bool(value.get("deleted")))


def checkpoints_in(data: bytes) -> list[dict[str, Any]]:
    """Every agent_checkpoint's params in a log, in order."""
    found = []
    for line in data.splitlines():
        if b"agent_checkpoint" not in line:
            continue
        message = parse_message(line)
        if message is not None and method_of(message) == CHECKPOINT_METHOD:
            found.append(params_of(message))
    return found


def index_ref(ref: str) -> str:
    """Where a checkpoint's index tree is kept in the checkpoint repository: the index
    may hold content that neither HEAD nor the worktree commit reaches."""
    return "refs/cairnd-index/" + ref[len("refs/cairnd/"):]


def refs_of(checkpoints: list[dict[str, Any]]) -> dict[str, str]:
    """The refs (and index refs) that keep a log's checkpoints alive: name -> object."""
    refs: dict[str, str] = {}
    for params in checkpoints:
        ref, sha, index = params.get("ref"), params.get("worktreeSha"), params.get("indexTree")
        if isinstance(ref, str) and ref.startswith("refs/cairnd/") and isinstance(sha, str):
            refs[ref] = sha
            if isinstance(index, str) and git.is_object_id(index):
                refs[index_ref(ref)] = index
    return refs


INNER_NAMESPACE = "refs/cairnd-inner/"  # in the checkpoint repository: the inner repositories' pins


def inner_remote_ref(pin: str) -> str:
    """An inner repository's pin (`refs/cairnd/<session>/<turns>/<path>`, in its store)
    -> its name in the checkpoint repository, beside the superproject's refs."""
    return INNER_NAMESPACE + pin[len(git.REF_NAMESPACE):]


def _inner_entries(checkpoints: list[dict[str, Any]], kind: str) -> Iterator[tuple[dict[str, Any], Mapping[str, Any]]]:
    """(checkpoint, entry) for each well-formed entry of `kind` (submodules, nested)."""
    for params in checkpoints:
        if not isinstance(params.get("sessionId"), str) or not isinstance(params.get("turns"), int):
            continue
        for entry in params.get(kind) or ():
            if (isinstance(entry, Mapping) and isinstance(entry.get("path"), str)
                    and git.is_object_id(entry.get("worktreeSha"))):
                yield params, entry


def _pins(params: dict[str, Any], entry: Mapping[str, Any]) -> dict[str, str]:
    return inner.pins_of(params["sessionId"], params["turns"], entry, None)


def inner_refs_of(checkpoints: list[dict[str, Any]], stores: Mapping[str, Path]) -> dict[Path, dict[str, str]]:
    """What to push for the inner repositories of `checkpoints`: store -> remote ref ->
    object, each store found in `stores` (`inner.stores`: cairnd's map, never a `.git`
    file), its state the checkpoint entry's (`submodules`, `nested`)."""
    out: dict[Path, dict[str, str]] = {}
    for kind in ("submodules", "nested"):
        for params, entry in _inner_entries(checkpoints, kind):
            store = stores.get(entry["path"] if kind == "submodules" else "")
            if store is None or not (store / "objects").is_dir():
                continue
            out.setdefault(store, {}).update({inner_remote_ref(n): sha for n, sha in _pins(params, entry).items()})
    return out


def fetch_inner(common: Path, remote_url: str, checkpoints: list[dict[str, Any]]) -> None:
    """Bring the inner repositories' states of `checkpoints` into this host's stores for
    them, as a local checkpoint would have left them: each submodule's into
    `<common>/modules/<name>` (recursively `.../modules/<name>/modules/<name>`, the names
    from the `.gitmodules` of the parent's checkpoint), each nested repository's into
    `<common>/cairnd-nested`, pinned under the same refs. A state the checkpoint
    repository lacks (pushed by an older cairnd) is left out: the submodule stays an
    empty directory, as before. Blocking."""
    nested = {inner_remote_ref(n): n for params, entry in _inner_entries(checkpoints, "nested")
              for n in _pins(params, entry)}
    if nested:
        _fetch_into(inner.ensure_nested_store(common), remote_url, nested, made=False)
    listed = list(_inner_entries(checkpoints, "submodules"))
    paths = sorted({entry["path"] for _, entry in listed}, key=lambda p: (p.count("/"), p))
    stores: dict[str, Path] = {}
    for path in paths:
        holders = [p for p in paths if path.startswith(p + "/")]
        parent = max(holders, key=len) if holders else None
        parent_store = common if parent is None else stores.get(parent)
        if parent_store is None:
            continue
        mine = [(params, entry) for params, entry in listed if entry["path"] == path]
        name = None
        for params, _entry in reversed(mine):
            tree = params.get("worktreeSha") if parent is None else next(
                (e["worktreeSha"] for p, e in listed if p is params and e["path"] == parent), None)
            name = _module_name(parent_store, tree, path if parent is None else path[len(parent) + 1:])
            if name is not None:
                break
        if name is None:
            continue
        store = parent_store / "modules" / name
        made = not (store / "objects").is_dir()
        if made:
            store.mkdir(parents=True, exist_ok=True)
            git.output(store, "init", "--bare", "--quiet", env={"GIT_DIR": str(store)})
        if _fetch_into(store, remote_url, {inner_remote_ref(n): n for p, e in mine for n in _pins(p, e)}, made):
            stores[path] = store


def _fetch_into(store: Path, remote_url: str, refs: dict[str, str], made: bool) -> bool:
    try:
        remote.fetch_refs(store, remote_url, refs, git_dir=store)
        return True
    except CairnError as exc:
        if exc.code != "commit_missing":
            raise
        if made:  # nothing to check out from: left out, as git leaves an uninitialised submodule
            shutil.rmtree(store, ignore_errors=True)
        return False


def _module_name(store: Path, tree: object, path: str) -> str | None:
    """The name `.gitmodules` in `tree` (objects in `store`) gives the submodule at `path`;
    None when it names none, or one that is not a plain relative name (it comes from
    the agent's files: never a way out of `modules/`)."""
    if not git.is_object_id(tree):
        return None
    proc = git.run(store, ["config", "--blob", f"{tree}:.gitmodules", "-z", "--get-regexp", r"^submodule\..*\.path$"],
                   env={"GIT_DIR": str(store)})
    if proc.returncode != 0:
        return None
    for record in proc.stdout.decode("utf-8", "surrogateescape").split("\0"):
        key, _, value = record.partition("\n")
        if key.startswith("submodule.") and key.endswith(".path") and value.rstrip("/") == path:
            name = key[len("submodule."):-len(".path")]
            if name and not name.startswith("/") and all(p not in ("", ".", "..") for p in name.split("/")):
                return name
    return None


def origin_of(repo: Path) -> str:
    """The origin a host repository was made for (recorded in its config), else the path."""
    proc = git.run(repo, ["config", "--get", "cairnd.origin"])
    return proc.stdout.decode().strip() if proc.returncode == 0 and proc.stdout.strip() else str(repo)


def materialise(layout: StateLayout, registry: Registry, descriptor: Descriptor, log_bytes: bytes,
                checkpoints_remote: str, *, with_worktree: bool) -> SessionRow:
    """Write the session here: log, repository objects, worktree (optionally), registry
    row. Blocking: run it in a worker thread. Replaces what a former stay left."""
    if not log_bytes:
        raise CairnError("unknown_session", f"session {descriptor.session!r} has no log in the store")
    sid = descriptor.session
    checkpoints = checkpoints_in(log_bytes)
    last = checkpoints[-1] if checkpoints else None
    if last is None or not isinstance(last.get("headSha"), str):
        raise CairnError("commit_missing", f"the stored log of session {sid} has no checkpoint to start from")
    old = registry.get(sid)
    repo = old.repo if old is not None and old.repo.exists() else remote.ensure_host_repo(layout.root, descriptor.origin)
    remote.fetch_refs(repo, checkpoints_remote, sorted(refs_of(checkpoints)))
    fetch_inner(git.common_dir(repo), checkpoints_remote, checkpoints)
    name = old.worktree.name if old is not None else remote.repo_name(descriptor.origin)
    worktree = layout.worktree_parent(sid) / name
    if with_worktree or (old is not None and old.worktree.exists()):
        # A worktree this host kept from an earlier stay is out of date: made again.
        if old is not None and old.worktree.exists():
            gitworktree.remove_worktree(old.repo, old.worktree)
        shutil.rmtree(layout.worktree_parent(sid), ignore_errors=True)
        if with_worktree:
            gitworktree.add_worktree(repo, worktree, last["headSha"], last.get("worktreeSha"), last.get("indexTree"),
                                     inner_map=layout.inner_map(sid), checkpoint=last,
                                     views=places.root_of(layout.root))
    layout.session_dir(sid).mkdir(parents=True, exist_ok=True)
    write_atomic(layout.log_path(sid), log_bytes)
    turns = session_state(iter(enumerate_lines(log_bytes)), agent_text=False).turns
    result = {"session": sid, "title": descriptor.title, "worktree": str(worktree), "headSha": last["headSha"],
              "log": str(layout.log_path(sid))}
    registry.adopt_session(id=sid, title=descriptor.title, repo=repo, worktree=worktree, agent=descriptor.agent,
                           parent_id=descriptor.parent, root_id=descriptor.root, turns=turns, result=result)
    place = places.lookup(worktree) if with_worktree else None
    if place is not None:
        registry.set_git_dirs(sid, place.git_dir, place.common_dir)
    row = registry.get(sid)
    assert row is not None
    return row


def enumerate_lines(data: bytes):
    offset = 0
    for line in data.splitlines(keepends=True):
        if line.endswith(b"\n"):
            yield offset, line
        offset += len(line)

"""The repositories inside a worktree at a checkpoint (SPEC 3): each submodule's and
each nested repository's state, captured into its store (`cairnd.git.inner`), pinned
under the session's refs there, and listed in the entry as `submodules` and `nested`.

Submodules are taken deepest first, so each parent's snapshot records its children's
HEADs as its gitlinks, and the superproject's records its own submodules'. A submodule
that nothing touched since the last checkpoint (no changed path under it, the same
HEAD, index and exclude file) costs no git process: its last state is pinned again
under this turn's ref, by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairnd.git import files as gitfiles
from cairnd.git import inner
from cairnd.git import snapshot as gitsnapshot

InnerStamp = tuple[Any, ...]


@dataclass
class InnerCache:
    """What the last checkpoint of one session saw of its inner repositories."""

    seen: dict[str, tuple[InnerStamp, inner.Captured]] = field(default_factory=dict)
    nested: tuple[str, ...] = ()  # nested repositories of the superproject, last found


@dataclass(frozen=True)
class InnerState:
    submodules: list[dict[str, Any]]
    nested: list[dict[str, Any]]
    skipped: list[str]  # inner repositories that could not be captured
    dirty: bool
    pins: dict[Path, dict[str, str]]  # store -> ref -> object


def _stamp(repo: inner.InnerRepo) -> InnerStamp:
    dirs = gitfiles.GitDirs(repo.git_dir, repo.git_dir)
    return (gitfiles.read_head(dirs), gitfiles.file_stamp(dirs.index),
            gitfiles.file_stamp(repo.git_dir / "info" / "exclude"))


def _under(path: bytes, roots: Iterable[bytes]) -> bool:
    return any(path == r or path.startswith(r + b"/") for r in roots)


def touched(changed: set[bytes] | None, path: str) -> bool:
    """Whether anything under `path` changed (None: unknown, so yes)."""
    return changed is None or _under_any(changed, path.encode("utf-8", "surrogateescape"))


def _under_any(changed: set[bytes], root: bytes) -> bool:
    return any(p == root or p.startswith(root + b"/") or root.startswith(p + b"/") for p in changed)


def outside(changed: set[bytes] | None, roots: Iterable[str]) -> set[bytes] | None:
    """The changed paths that are not inside any of `roots` (the superproject's own)."""
    if changed is None:
        return None
    encoded = [r.encode("utf-8", "surrogateescape") for r in roots]
    return {p for p in changed if not _under(p, encoded)}


class _Taker:
    def __init__(self, top: Path, session_id: str, turns: int, cap: int, message: str,
                 changed: set[bytes] | None, cache: InnerCache | None, nested_store: Callable[[], Path]) -> None:
        self.top, self.session_id, self.turns, self.cap, self.message = top, session_id, turns, cap, message
        self.changed, self.cache, self.nested_store = changed, cache, nested_store
        self.submodules: list[dict[str, Any]] = []
        self.nested: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.dirty = False
        self.pins: dict[Path, dict[str, str]] = {}
        self.fresh: dict[str, tuple[InnerStamp, inner.Captured]] = {}
        self.inside: list[str] = [*(cache.seen if cache is not None else ())]  # inner paths last seen

    def one(self, repo: inner.InnerRepo, gitlinks: Mapping[bytes, str] | None) -> inner.Captured | None:
        stamp = _stamp(repo)
        last = self.cache.seen.get(repo.path) if self.cache is not None else None
        # Paths inside its own inner repositories are theirs: they change its snapshot
        # only through their HEADs (its gitlinks), which are compared below.
        own = outside(self.changed, [p for p in self.inside if p.startswith(repo.path + "/")])
        if (last is not None and last[0] == stamp and not touched(own, repo.path)
                and dict(gitlinks or {}) == last[1].gitlinks):
            captured = last[1]
        else:
            captured = inner.capture(repo, self.top, self.cap, self.message, gitlinks)
        if captured is None:
            self.skipped.append(repo.path)
            return None
        self.fresh[repo.path] = (stamp, captured)
        entry = captured.entry
        (self.submodules if repo.kind == inner.SUBMODULE else self.nested).append(
            {k: v for k, v in entry.items() if k != "dirty"})
        self.dirty = self.dirty or bool(entry["dirty"])
        self.pins.setdefault(repo.store, {}).update(
            inner.pins_of(self.session_id, self.turns, entry, inner.snapshot_trees(captured.snapshot)))
        for nested in captured.snapshot.nested:
            self.nested_repo(f"{repo.path}/{nested.decode('utf-8', 'surrogateescape')}")
        self.skipped.extend(f"{repo.path}/{p}" for p in captured.snapshot.skipped
                            if p.encode("utf-8", "surrogateescape") not in captured.snapshot.nested)
        return captured

    def nested_repo(self, path: str) -> None:
        git_dir = self.top / path / ".git"
        if git_dir.is_symlink() or not git_dir.is_dir():
            self.skipped.append(path)  # a .git file (another repository's worktree) or a link: not ours to read
            return
        self.one(inner.InnerRepo(path, inner.NESTED, git_dir, self.nested_store()), None)


def take_inner(top: Path, repos: list[inner.InnerRepo], session_id: str, turns: int, cap: int, message: str,
               changed: set[bytes] | None, cache: InnerCache | None,
               snapshot: Callable[[Mapping[bytes, str] | None], gitsnapshot.Snapshot],
               common_dir: Callable[[], Path]) -> tuple[gitsnapshot.Snapshot, InnerState]:
    """Capture the submodules (deepest first), then the superproject through `snapshot`
    (given the gitlinks of its own submodules), then the nested repositories it found."""
    store_made: list[Path] = []

    def nested_store() -> Path:
        if not store_made:
            store_made.append(inner.ensure_nested_store(common_dir()))
        return store_made[0]

    taker = _Taker(top, session_id, turns, cap, message, changed, cache, nested_store)
    submodule_paths = [r.path for r in repos]
    heads: dict[str, str] = {}
    for repo in sorted(repos, key=lambda r: r.path.count("/"), reverse=True):
        children = {c: h for c, h in heads.items() if _parent(c, submodule_paths) == repo.path}
        links = {c[len(repo.path) + 1:].encode("utf-8", "surrogateescape"): h for c, h in children.items()}
        captured = taker.one(repo, links or None)
        if captured is not None:
            heads[repo.path] = captured.entry["headSha"]
    top_links = {p.encode("utf-8", "surrogateescape"): h for p, h in heads.items()
                 if _parent(p, submodule_paths) is None}
    snap = snapshot(top_links or None)
    for path in snap.nested:
        taker.nested_repo(path.decode("utf-8", "surrogateescape"))
    if cache is not None:
        cache.seen = taker.fresh
    captured_nested = {n["path"].encode("utf-8", "surrogateescape") for n in taker.nested}
    skipped = sorted({*(p for p in snap.skipped if p.encode("utf-8", "surrogateescape") not in captured_nested),
                      *taker.skipped})
    state = InnerState(sorted(taker.submodules, key=lambda e: e["path"]), sorted(taker.nested, key=lambda e: e["path"]),
                       skipped, taker.dirty, taker.pins)
    return snap, state


def _parent(path: str, submodules: list[str]) -> str | None:
    """The innermost submodule holding `path`, None for the superproject."""
    holders = [s for s in submodules if path.startswith(s + "/")]
    return max(holders, key=len) if holders else None


def pin_all(pins: Mapping[Path, Mapping[str, str]]) -> None:
    for store, refs in pins.items():
        if refs:
            inner.pin(store, refs)

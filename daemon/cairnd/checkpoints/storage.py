"""Storage over time (SPEC 15): checkpoint refs kept packed, checkpoint objects packed
off the turn path, deleted sessions' logs removed after `keep_deleted_days`, and the
figures `cairnd status` shows per repository.

- `RefKeeper` counts the loose refs checkpoints leave in each repository (a checkpoint
  writes one, without a git process) and says when to pack them; at `REFS_HARD_LIMIT`
  it packs them itself, so `refs/cairnd` never holds more loose refs than that.
- `maintain(repo)` is the background work: `git pack-refs --all` (git gc packs the
  same refs) and, once enough checkpoints have written objects, an incremental
  `git repack -d --geometric=2` (loose objects into a pack, small packs rolled up;
  the user's big pack is left alone until the new ones add up to half of it).
- `collect(...)` is `cairnd gc`: the logs of sessions deleted more than
  `keep_deleted_days` ago; their refs went when they were deleted, so git's own gc
  can reclaim their objects. Lineage rows stay (a fork still names its parent's title).
- `repository_figures(...)` is what `cairnd status` shows per repository.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairnd.git import run as git
from cairnd.git import places
from cairnd.git import refs as gitrefs
from cairnd.state.registry import SessionRow

REFS_PACK_AT = 50  # loose checkpoint refs that make the background pack them
REFS_HARD_LIMIT = 100  # ... and that a checkpoint never leaves behind
REPACK_EVERY = 50  # checkpoints of a repository between two background repacks
DAY = 86400.0


class RefKeeper:
    """Per repository (its common git directory): loose checkpoint refs written and
    checkpoints taken since the last pack. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loose: dict[Path, int] = {}
        self._since_repack: dict[Path, int] = {}
        self._worktree: dict[Path, Path] = {}  # a worktree to run git in, per repository
        self.packs = 0
        self.repacks = 0

    def wrote(self, worktree: Path, refs: int = 1) -> None:
        """A checkpoint pinned `refs` refs in `worktree`'s repository: pack at once when the
        loose refs reach the hard limit (the background is behind)."""
        common = gitrefs.home_dir(Path(worktree))  # the vault, where the refs are
        if common is None:
            return
        with self._lock:
            if common not in self._loose:
                self._loose[common] = count_loose_refs(common)
            else:
                self._loose[common] += refs
            self._since_repack[common] = self._since_repack.get(common, 0) + 1
            self._worktree[common] = Path(worktree)
            urgent = self._loose[common] >= REFS_HARD_LIMIT
        if urgent:
            self.pack_refs(common)

    def due(self) -> list[Path]:
        """Repositories with background work to do."""
        with self._lock:
            return [common for common in self._worktree
                    if self._loose.get(common, 0) >= REFS_PACK_AT or self._since_repack.get(common, 0) >= REPACK_EVERY]

    def pack_refs(self, common: Path) -> None:
        worktree = self._worktree.get(common, common)
        gitrefs.pack_refs(worktree)
        with self._lock:
            self._loose[common] = count_loose_refs(common)
            self.packs += 1

    def maintain(self, common: Path) -> None:
        """The background work for one repository (run in a worker thread)."""
        with self._lock:
            loose = self._loose.get(common, 0)
            since = self._since_repack.get(common, 0)
            worktree = self._worktree.get(common, common)
        if loose >= REFS_PACK_AT:
            self.pack_refs(common)
        if since >= REPACK_EVERY:
            gitrefs.repack_incremental(worktree)
            with self._lock:
                self._since_repack[common] = 0
                self.repacks += 1


def count_loose_refs(common_dir: Path) -> int:
    """Loose refs under refs/cairnd of a repository."""
    count = 0
    for _dir, _subdirs, files in os.walk(Path(common_dir) / "refs" / "cairnd"):
        count += sum(1 for name in files if not name.endswith(".lock"))
    return count


# --------------------------------------------------------------------------- gc


@dataclass(frozen=True)
class Collected:
    session: str
    deleted_at: float
    log_bytes: int


def expired(rows: list[SessionRow], keep_days: float, now: float) -> list[SessionRow]:
    """Deleted sessions whose time to keep has run out (a pure rule, tested by table)."""
    limit = now - keep_days * DAY
    return [row for row in rows if row.state == "deleted" and row.deleted_at is not None
            and row.deleted_at <= limit]


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (not following links); files that vanish meanwhile count nothing."""
    total = 0
    for directory, _subdirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


def collect(rows: list[SessionRow], session_dir: Any, keep_days: float, *, dry_run: bool,
            now: float | None = None) -> list[Collected]:
    """Remove the session directories (log and all) of sessions deleted more than
    `keep_days` ago, and any checkpoint ref of theirs left behind; with `dry_run`,
    only say which. `session_dir` maps a session id to its directory."""
    done = []
    for row in expired(rows, keep_days, time.time() if now is None else now):
        directory = Path(session_dir(row.id))
        if not directory.exists():
            continue
        done.append(Collected(row.id, row.deleted_at or 0.0, tree_bytes(directory)))
        if dry_run:
            continue
        if row.repo.exists():
            try:
                gitrefs.delete_refs(row.repo, f"{git.REF_NAMESPACE}{row.id}/")
            except Exception:  # noqa: BLE001  a repository gone or broken keeps no refs worth keeping
                pass
        shutil.rmtree(directory, ignore_errors=True)
    return done


# --------------------------------------------------------------------------- status


def repository_figures(rows: list[SessionRow], log_bytes: Any) -> list[dict[str, Any]]:
    """Per repository of `rows`: its checkpoint refs (and how many are loose), the
    size on disk of its objects (loose and packed), and the size of its sessions'
    logs (`log_bytes` maps a session id to it)."""
    by_repo: dict[Path, list[SessionRow]] = {}
    for row in rows:
        by_repo.setdefault(row.repo, []).append(row)
    figures = []
    for repo, members in sorted(by_repo.items()):
        entry: dict[str, Any] = {
            "repo": str(repo),
            "sessions": sum(1 for row in members if row.state == "ready"),
            "deleted_sessions": sum(1 for row in members if row.state == "deleted"),
            "logs_bytes": sum(log_bytes(row.id) for row in members),
            "checkpoint_refs": None, "loose_checkpoint_refs": None, "objects_bytes": None,
        }
        if repo.exists():
            try:
                entry["checkpoint_refs"] = len(gitrefs.list_refs(repo, git.REF_NAMESPACE))
                objects = gitrefs.object_sizes(repo)
                entry["objects_bytes"] = objects["loose_bytes"] + objects["pack_bytes"]
                entry["loose_objects"] = objects["loose"]
                entry["loose_checkpoint_refs"] = count_loose_refs(gitrefs.home_dir(repo) or repo)
            except Exception as exc:  # noqa: BLE001  status shows what it can
                entry["error"] = str(exc)
        figures.append(entry)
    return figures


def log_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0

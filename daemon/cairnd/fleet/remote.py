"""The checkpoint repository (SPEC 17) and each host's own clones.

Every checkpoint ref (`refs/cairnd/<session>/<turns>`) is pushed, with the objects it
needs, to one bare repository shared by the fleet, before the turn's result. Refs
there are create-only:

- on the push side, each ref is pushed with `--force-with-lease=<ref>:` (an empty
  expected value: "only if it does not exist yet"); pushing the same value again is
  "up to date", any other value is refused by git itself before anything moves;
- on the remote, `GUARD_HOOK` (an `update` hook; `install_guard`) refuses any push
  that would move or delete a ref under refs/cairnd/, whoever pushes and however.

The inner repositories' states (SPEC 3: each submodule's and nested repository's
checkpoint) go to the same repository, create-only too, under
`refs/cairnd-inner/<session>/<turns>/<path>` (`fleet.materialise.inner_refs_of`).

Each host keeps its own repositories under `<state>/fleet/repos/`: a clone of a git
URL given to `new`, or, for a session made elsewhere, a repository that holds only
what it fetched from the checkpoint repository (a checkpoint's worktree commit has
the session's HEAD as parent, so it brings the whole history with it).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import threading
from pathlib import Path

from cairnd.git import run as git
from cairnd.git import places
from cairnd.errors import CairnError

GUARD_HOOK = """#!/bin/sh
# cairnd checkpoint repository: refs under refs/cairnd/ and refs/cairnd-*/ are create-only.
# git runs this once per ref: update <ref> <old> <new>.
case "$1" in
refs/cairnd/*|refs/cairnd-*/*)
    if [ -n "$(printf %s "$2" | tr -d 0)" ]; then
        echo "cairnd: $1 exists: checkpoint refs never move and are never deleted" >&2
        exit 1
    fi
    ;;
esac
exit 0
"""

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _repo_lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(os.path.realpath(path), threading.Lock())


def install_guard(bare_repo: Path) -> Path:
    """Make `bare_repo` refuse moving or deleting refs/cairnd/* and refs/cairnd-*/* (its `update` hook)."""
    hook = bare_repo / "hooks" / "update"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(GUARD_HOOK)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return hook


def repo_name(origin: str) -> str:
    """`https://h/x/proj.git` -> `proj`; `/srv/proj` -> `proj`."""
    tail = re.split(r"[/:]", origin.rstrip("/"))[-1]
    tail = tail[:-4] if tail.endswith(".git") else tail
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", tail).lstrip(".")
    return cleaned or "repo"


def host_repo_dir(state_dir: Path, origin: str) -> Path:
    """Where this host keeps its own repository for `origin` (a URL or another host's path)."""
    digest = hashlib.sha256(origin.encode()).hexdigest()[:16]
    return state_dir / "fleet" / "repos" / digest / repo_name(origin)


def clone_url(state_dir: Path, url: str) -> Path:
    """This host's clone of `url` (made on first use, fetched again later). Blocking."""
    target = host_repo_dir(state_dir, url)
    with _repo_lock(target):
        if (target / ".git").is_dir():
            git.output(target, "fetch", "--quiet", "--prune", "origin",
                       "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        proc = git.run(target.parent, ["clone", "--quiet", "--no-checkout", "--", url, str(partial)])
        if proc.returncode != 0:
            message = proc.stderr.decode("utf-8", "replace").strip()
            raise CairnError("repo_not_found", f"cannot clone {url}: {message}")
        git.output(partial, "config", "cairnd.origin", url)
        os.rename(partial, target)
        return target


def resolve_in_clone(clone: Path, ref: str) -> str:
    """`ref` in a clone: the remote's branch of that name first (the clone's own
    branches are as old as the clone), then anything git resolves."""
    if ref == "HEAD":
        candidates = ["refs/remotes/origin/HEAD", "HEAD"]
    else:
        candidates = [f"refs/remotes/origin/{ref}", ref]
    for candidate in candidates:
        proc = git.run(clone, ["rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"])
        if proc.returncode == 0:
            return proc.stdout.decode().strip()
    return git.resolve_commit(clone, ref)


def ensure_host_repo(state_dir: Path, origin: str) -> Path:
    """This host's repository for a session whose repository is `origin`: the clone if
    one exists, else an empty repository that checkpoints are fetched into. Blocking."""
    target = host_repo_dir(state_dir, origin)
    with _repo_lock(target):
        if not (target / ".git").is_dir():
            target.mkdir(parents=True, exist_ok=True)
            git.output(target, "init", "--quiet")
            git.output(target, "config", "cairnd.origin", origin)
        return target


def push_refs(repo: Path, remote: str, refs: dict[str, str], *, git_dir: Path | None = None) -> None:
    """Push checkpoint refs (name -> sha) create-only; a ref already there with the
    same value is fine, any other value is `checkpoint_conflict`. Blocking. `git_dir`:
    push from that git directory (an inner repository's store) instead of `repo`'s."""
    if not refs:
        return
    git_dir = git_dir or places.vault_for(repo)  # checkpoints are in the repository's vault
    env = {"GIT_DIR": str(git_dir)} if git_dir is not None else None
    args = ["push", "--porcelain", "--quiet", remote]
    args += [f"--force-with-lease={name}:" for name in sorted(refs)]
    args += [f"{sha}:{name}" for name, sha in sorted(refs.items())]
    proc = git.run(repo, args, env=env)
    if proc.returncode == 0:
        return
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if "stale info" in text or "cairnd:" in text:
        raise CairnError("checkpoint_conflict",
                         f"the checkpoint repository {remote} already holds other commits for "
                         f"{', '.join(sorted(refs))}: checkpoint refs never move ({text.strip()})")
    raise CairnError("checkpoints_unavailable", f"cannot push checkpoints to {remote}: {text.strip()}")


def fetch_refs(repo: Path, remote: str, refs: list[str] | dict[str, str], *, git_dir: Path | None = None) -> list[str]:
    """Fetch checkpoint refs from the checkpoint repository into `repo` under the same
    names, or (a dict) remote name -> local name, into `git_dir` when given (create-only
    locally too: never forced). Returns the remote names it could not find. Blocking."""
    names = dict(refs) if isinstance(refs, dict) else {ref: ref for ref in refs}
    git_dir = git_dir or places.vault_for(repo)  # into the repository's vault, where checkpoints live
    env = {"GIT_DIR": str(git_dir)} if git_dir is not None else None
    wanted = [ref for ref, local in names.items()
              if git.run(repo, ["rev-parse", "--verify", "--quiet", local], env=env).returncode != 0]
    if not wanted:
        return []
    proc = git.run(repo, ["fetch", "--quiet", "--no-tags", remote, *[f"{ref}:{names[ref]}" for ref in wanted]], env=env)
    if proc.returncode == 0:
        return []
    text = proc.stderr.decode("utf-8", "replace").strip()
    if "couldn't find remote ref" not in text:
        raise CairnError("checkpoints_unavailable", f"cannot fetch checkpoints from {remote}: {text}")
    # Some are not there (a log from an older tool, a checkpoint whose result never
    # left its host): take the others one by one; a missing one is reported by
    # whoever needs it (commit_missing), and here only when none could be had.
    missing = []
    for ref in wanted:
        if git.run(repo, ["fetch", "--quiet", "--no-tags", remote, f"{ref}:{names[ref]}"], env=env).returncode != 0:
            missing.append(ref)
    if len(missing) == len(wanted):
        raise CairnError("commit_missing", f"the checkpoint repository {remote} has no {', '.join(wanted)}")
    return missing


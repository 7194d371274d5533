"""Where a session's agent may write, and how it is started confined there (SPEC 16).

With a profile's `sandbox = "worktree"` (the default) on a kernel with Landlock, the
agent is started through the launcher (`cairnd.sandbox`, a program of its own) with
these paths writable, and no others:

- the session's worktree;
- its own git state, as much of it as a commit needs: `objects/`, `refs/`, `logs/` of
  the session's store (`cairnd.git.vault`: a repository of the session's own, so the
  user's repository, the vault holding the checkpoints and the siblings' stores are
  out of reach) and the worktree's own record `worktrees/<name>/` there (its HEAD,
  index and their locks); for a session in the repository's own working tree (in
  place), the whole git directory. Which directories these are comes from cairnd's
  registry (`git_dir`, `common_dir`), never from the worktree's `.git`, which the agent
  can rewrite;
- the agent's HOME: the session's own (`cairnd.agent.home`, under the state directory),
  never the user's real one;
- a temporary directory of the session's own, `<state>/tmp/<session>`, given as TMPDIR,
  made at the agent's start and removed with the session;
- `/dev/null`-like devices, terminals and `/dev/shm`.

`detect` asks the kernel once, at start; without Landlock (or with the launcher's test
switch) agents run unconfined and the daemon says so once.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cairnd.agent import sandbox

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx",
           "/dev/pts", "/dev/shm")
# The parts of a session's store a commit in its worktree writes, besides the worktree's own
# record: new objects, the branch ref (through `<ref>.lock`), and its reflog.
GIT_SHARED_PARTS = ("objects", "refs", "logs")


@dataclass(frozen=True)
class SandboxSupport:
    """What the kernel offers, found once at start."""

    abi: int

    @property
    def available(self) -> bool:
        return self.abi >= 1

    def describe(self) -> str:
        if self.available:
            return f"landlock (ABI {self.abi}): agents write only to their worktree, git directory, HOME and TMPDIR"
        return "unavailable: this kernel offers no Landlock, so agents run unconfined"


def detect() -> SandboxSupport:
    return SandboxSupport(sandbox.abi_version())


def fallback_notice(support: SandboxSupport, modes: Sequence[str]) -> str | None:
    """What to say once at start when profiles ask for a sandbox the kernel cannot give."""
    if support.available or "worktree" not in modes:
        return None
    return (f"agent sandbox {support.describe()} (set `sandbox = \"off\"` in a profile to silence this, "
            f"or boot a kernel with Landlock: Linux 5.13 or later with `landlock` in lsm=)")


def carve(root: Path, protected: Sequence[Path]) -> list[Path]:
    """The paths that grant writing to all of `root` except what lies in `protected`:
    `[root]` when nothing protected is inside it; else, entry by entry, the entries of
    each directory on the way down to a protected path, less that path. Landlock can
    only allow, never deny inside an allowed tree, so the tree is granted in pieces.
    Symbolic links on the way are not granted (a write through one is judged where it
    lands). A protected path that is `root` or holds it does not count: `root` was
    granted on purpose (a HOME inside the state directory, as under the system unit)."""
    inside = [p for p in protected if root in p.parents]
    if not inside:
        return [root]
    granted: list[Path] = []
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError:
        return granted
    for entry in entries:
        path = root / entry.name
        if path in inside or entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            granted.extend(carve(path, inside))
        else:
            granted.append(path)
    return granted


def git_paths(git_dir: Path, common_dir: Path) -> list[Path]:
    """The parts of the repository's git directory a session's agent may write."""
    if git_dir == common_dir:  # the main working tree: its record is the git directory itself
        return [common_dir]
    return [common_dir / part for part in GIT_SHARED_PARTS] + [git_dir]


@dataclass(frozen=True)
class Confinement:
    """How to start one session's agent confined (see the module docstring)."""

    worktree: Path
    source: Path  # the repository's own checkout (or git directory, when bare)
    state_dir: Path
    tmpdir: Path
    agent_dir: Path | None = None  # the profile's own place in the state directory
    git_dir: Path | None = None  # the session's git directories, from cairnd's registry:
    common_dir: Path | None = None  # never from the worktree's `.git`, which the agent writes

    def writable_paths(self, home: Path | None) -> list[Path]:
        """Blocking: reads HOME's entries. The git grants come from the registry's record
        alone: an agent that rewrites its `.git` file and restarts gains no path."""
        paths = [self.worktree, self.tmpdir]
        if self.git_dir is not None and self.common_dir is not None:
            paths[1:1] = git_paths(self.git_dir, self.common_dir)
        if self.agent_dir is not None:
            paths.append(self.agent_dir)
        if home is not None:
            real_home = Path(os.path.realpath(home))
            protected = [Path(os.path.realpath(p)) for p in (self.state_dir, self.source)
                         if Path(os.path.realpath(p)) != Path(os.path.realpath(self.worktree))]
            paths.extend(carve(real_home, protected))
        return paths + [Path(device) for device in DEVICES]

    def wrap(self, command: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        """The launcher's argv around `command`, and the agent's environment with its own
        TMPDIR (made here, private). Blocking: run it in a worker thread."""
        self.tmpdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.agent_dir is not None:  # a rule needs it to exist; the agent cannot make it
            self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**env, "TMPDIR": str(self.tmpdir), "TMP": str(self.tmpdir), "TEMP": str(self.tmpdir)}
        if shutil.which(command[0], path=env.get("PATH")) is None:  # as exec would say, before the launcher
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])
        home = env.get("HOME")
        argv = [sys.executable, "-I", "-S", sandbox.__file__]  # by path, no site: it starts in a few ms
        for path in self.writable_paths(Path(home) if home else None):
            argv += ["--write", str(path)]
        return [*argv, "--", *command], env

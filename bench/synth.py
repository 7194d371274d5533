"""Synthetic git repositories of a given number of files, built once and cached, and
the dirtying a turn of an agent does to a working tree.

Files sit 100 to a directory, a few hundred bytes to a few KB each, like a source tree.
Every git call gets a clean environment and a fixed identity (as tests/gitrepos.py).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from measure import CACHE, run_quiet

_VERSION = 2
IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(IDENTITY, LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=os.devnull)
    return env


def git(cwd: Path, *args: str | Path, env: dict[str, str] | None = None) -> bytes:
    return run_quiet(["git", *args], cwd=cwd, env={**git_env(), **(env or {})}, stdout=-1).stdout


def git_text(cwd: Path, *args: str | Path) -> str:
    return git(cwd, *args).decode().strip()


def _content(rng: random.Random, index: int) -> bytes:
    words = " ".join(f"w{rng.randrange(5000)}" for _ in range(rng.randint(20, 400)))
    return f"# file {index}\n{words}\n".encode()


def repo(files: int) -> Path:
    """The cached repository with `files` files in one commit (built the first time)."""
    path = CACHE / f"repo-v{_VERSION}-{files}"
    if (path / ".bench-ready").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rng = random.Random(files)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "commit.gpgsign", "false")
    git(path, "config", "gc.auto", "0")  # no background gc in the middle of a measurement
    for index in range(files):
        target = path / f"src/d{index // 100:04d}/f{index % 100:02d}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_content(rng, index))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", f"{files} files")
    # Packed, as any real repository is: a checkout then reads one file, not a
    # loose object per file (which, with a cold cache, is a random read each).
    git(path, "repack", "-adq")
    git(path, "prune-packed")
    (path / ".git" / "info" / "exclude").write_text(".bench-ready\n")
    (path / ".bench-ready").write_text("")
    return path


def dirty(worktree: Path, files: int, seed: int = 1) -> int:
    """What an agent's turn leaves: about 1% of the files (at least 10) modified, some
    added, a few deleted. Returns how many paths changed."""
    rng = random.Random(seed)
    count = max(10, files // 100)
    changed = 0
    for index in rng.sample(range(files), min(files, count)):
        target = worktree / f"src/d{index // 100:04d}/f{index % 100:02d}.txt"
        if changed % 10 == 9:
            target.unlink(missing_ok=True)
        else:
            with open(target, "ab") as f:
                f.write(f"edited {seed}\n".encode())
        changed += 1
    for index in range(count // 5 + 1):
        target = worktree / f"new/n{seed}_{index}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_content(rng, index))
        changed += 1
    return changed

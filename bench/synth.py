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


def _shaped_paths(files: int, rng: random.Random) -> list[str]:
    """Paths shaped like a real source tree: a few top-level areas, packages nested
    2 to 9 levels deep, directories of 1 to 60 files (most small), common names."""
    areas = ["src", "lib", "tests", "docs", "tools", "vendor", "packages", "services"]
    words = ["core", "api", "util", "model", "view", "net", "io", "db", "auth", "ui", "cli", "fs",
             "parse", "render", "store", "cache", "jobs", "http", "grpc", "plugin", "test", "impl"]
    exts = [".py", ".ts", ".go", ".rs", ".c", ".h", ".md", ".json", ".txt", ".png", ".yaml"]
    paths: list[str] = []
    serial = 0
    while len(paths) < files:
        depth = min(9, max(2, int(rng.gammavariate(2.0, 1.5)) + 1))
        parts = [rng.choice(areas)] + [f"{rng.choice(words)}{rng.randrange(40)}" for _ in range(depth - 1)]
        directory = "/".join(parts)
        for _ in range(min(files - len(paths), max(1, int(rng.paretovariate(1.3) * 4) % 60))):
            serial += 1
            paths.append(f"{directory}/{rng.choice(words)}_{serial}{rng.choice(exts)}")
    return paths


def _shaped_content(rng: random.Random, path: str) -> bytes:
    # Mixed sizes: mostly a few KB, a long tail to a few hundred KB; images are binary.
    size = int(min(400_000, max(40, rng.lognormvariate(7.3, 1.3))))
    if path.endswith(".png"):
        return rng.randbytes(size)
    line = f"{path} {rng.random():.6f} the quick brown fox jumps over the lazy dog\n".encode()
    return (line * (size // len(line) + 1))[:size]


def shaped_repo(files: int) -> Path:
    """A cached repository of `files` files with a real repository's shape (see
    `_shaped_paths`): deep directories, mixed sizes; `shaped_paths(files)` lists them."""
    path = CACHE / f"shaped-v{_VERSION}-{files}"
    if (path / ".bench-ready").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rng = random.Random(files)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "commit.gpgsign", "false")
    git(path, "config", "gc.auto", "0")
    names = _shaped_paths(files, rng)
    for name in names:
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_shaped_content(rng, name))
    (path / ".gitignore").write_text("*.o\nbuild/\nnode_modules/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", f"{files} files")
    git(path, "repack", "-adq")
    git(path, "prune-packed")
    (path / ".git" / "info" / "exclude").write_text(".bench-ready\n")
    (path / ".bench-paths").write_text("\n".join(names) + "\n")
    (path / ".git" / "info" / "exclude").write_text(".bench-ready\n.bench-paths\n")
    (path / ".bench-ready").write_text("")
    return path


def shaped_paths(repo_path: Path) -> list[str]:
    return (repo_path / ".bench-paths").read_text().splitlines()


def vault_env(state: Path) -> dict[str, str]:
    """What lets plain git read checkpoints' objects, which live in the vaults cairnd keeps
    under the state directory `state` (SPEC 16): their objects as alternates."""
    dirs = sorted(str(p) for p in (Path(state) / "git" / "vaults").glob("*/objects"))
    return {"GIT_ALTERNATE_OBJECT_DIRECTORIES": ":".join(dirs)} if dirs else {}

"""A private HOME for each session's agent (SPEC 16), under the state directory:
`<state>/homes/<session>/`, never the user's real HOME, never one a sibling's agent runs
with (a `.bashrc` or `.pth` planted there would run in the sibling's sandbox).

It is made before the session's agent first starts:

- for a fork (or a rewind's abandoned session), as a copy of its parent's private HOME
  (the parent's agent state, such as the transcript a native fork resumes from, is
  there: copied by cairnd, never shared);
- otherwise seeded from the profile's `home_seed`: paths (relative to the HOME the
  profile names in its `env`, else cairnd's own, or absolute) copied to the same place
  relative to the private HOME. The default seeds each known agent's settings and
  credentials: Claude Code's `~/.claude.json`, `~/.claude/settings.json` and
  `~/.claude/.credentials.json`, Codex's `~/.codex/config.toml` and `auth.json`, Gemini
  CLI's `~/.gemini/settings.json` and its login files, and git's own config.

A variable of the profile's `env` whose value lies inside that HOME (`CODEX_HOME`,
`CLAUDE_CONFIG_DIR`, ...) is moved to the same place inside the private HOME, its
contents seeded with it. The XDG directories point inside it too.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEED: tuple[str, ...] = (
    ".claude.json", ".claude/settings.json", ".claude/.credentials.json", ".claude/plugins/blocklist.json",
    ".codex/config.toml", ".codex/auth.json",
    ".gemini/settings.json", ".gemini/oauth_creds.json", ".gemini/google_accounts.json", ".gemini/installation_id",
    ".gitconfig", ".config/git/config", ".config/git/ignore",
)
SEEDED_MARK = ".cairnd-home"  # written last: a HOME without it was cut short and is made again
XDG = {"XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share", "XDG_STATE_HOME": ".local/state",
       "XDG_CACHE_HOME": ".cache"}


@dataclass(frozen=True)
class PrivateHome:
    """One session's HOME, and where it is seeded from."""

    path: Path
    source: Path  # the HOME the profile names, else cairnd's
    seed: tuple[str, ...] = DEFAULT_SEED
    parent: Path | None = None  # the parent session's private HOME (a fork's)
    moved: Mapping[str, str] = field(default_factory=dict)  # env var -> its path relative to HOME

    def env(self, profile_env: Mapping[str, str]) -> dict[str, str]:
        """The agent's variables: HOME, the XDG directories and the moved ones, inside it."""
        env = {name: str(self.path / rel) for name, rel in XDG.items()}
        env.update({name: str(self.path / rel) if rel else str(self.path) for name, rel in self.moved.items()})
        env["HOME"] = str(self.path)
        env["CAIRND_REFERENCE_STORE"] = str(self.path / ".local/state/cairnd-reference")
        return {**profile_env, **env}

    def prepare(self) -> None:
        """Make it if it is not whole yet (blocking: run it in a worker thread)."""
        if (self.path / SEEDED_MARK).exists():
            return
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(aside, ignore_errors=True)
        if self.parent is not None and (self.parent / SEEDED_MARK).exists():
            shutil.copytree(self.parent, aside, symlinks=True, ignore_dangling_symlinks=True,
                            ignore=shutil.ignore_patterns("*.lock", "*.sock"))
            rehome_databases(aside, str(self.parent), str(self.path))
        else:
            aside.mkdir(parents=True, mode=0o700)
            for relative in [*self.seed, *(rel for rel in self.moved.values() if rel)]:
                _copy_into(self.source, aside, relative)
        for rel in [*XDG.values(), ".local/state/cairnd-reference"]:
            (aside / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
        (aside / SEEDED_MARK).write_text("seeded by cairnd\n")
        _private(aside)
        shutil.rmtree(self.path, ignore_errors=True)  # one a stop cut short
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(aside, self.path)


def _private(root: Path) -> None:
    """Copies of credentials are the state directory's: readable by cairnd's user alone
    (a copy keeps its source's mode, often 0644)."""
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = os.path.join(directory, name) if name else directory
            try:
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & ~0o077)
            except OSError:
                continue


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rehome_databases(home: Path, old: str, new: str) -> None:
    """In the SQLite databases of a copied HOME, the parent's HOME named in a text value
    becomes the copy's (Codex keeps its sessions' absolute paths in one, and refuses a
    path outside its home). Values only: identifiers quoted, values bound."""
    import sqlite3
    for path in home.rglob("*.sqlite"):
        try:
            db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error:
            continue
        try:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for column in [row[1] for row in db.execute(f"PRAGMA table_info({_quoted(table)})")]:
                    db.execute(f"UPDATE {_quoted(table)} SET {_quoted(column)} = replace({_quoted(column)}, ?, ?)"
                               f" WHERE typeof({_quoted(column)}) = 'text' AND instr({_quoted(column)}, ?) > 0",
                               (old, new, old))
        except sqlite3.Error:
            pass  # a database the copy cannot use: the agent's history falls back (replay)
        finally:
            db.close()


def _copy_into(source: Path, target: Path, relative: str) -> None:
    path = Path(relative)
    origin = path if path.is_absolute() else source / path
    if path.is_absolute():
        try:
            path = path.relative_to(source)
        except ValueError:
            path = Path(path.name)
    if ".." in path.parts or not origin.exists():
        return
    destination = target / path
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if origin.is_dir():
        shutil.copytree(origin, destination, symlinks=True, dirs_exist_ok=True, ignore_dangling_symlinks=True)
    else:
        shutil.copy2(origin, destination, follow_symlinks=True)


def private_home(path: Path, profile_env: Mapping[str, str], seed: Sequence[str] | None,
                 parent: Path | None) -> PrivateHome:
    """The private HOME at `path` for a profile's `env` and `home_seed` (None: the default)."""
    source = Path(profile_env.get("HOME") or os.environ.get("HOME") or Path.home())
    moved: dict[str, str] = {}
    for name, value in profile_env.items():
        if name == "HOME" or not value or not os.path.isabs(value):
            continue
        try:
            moved[name] = str(Path(value).relative_to(source))
        except ValueError:
            continue
        if moved[name] == ".":
            moved[name] = ""
    return PrivateHome(path=path, source=source, seed=tuple(DEFAULT_SEED if seed is None else seed),
                       parent=parent, moved=moved)

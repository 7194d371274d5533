"""Where cairnd's git finds a session's git state, and the fixed configuration it runs
with (SPEC 16): from cairnd's registry, never from a file an agent can write.

An agent may rewrite anything in its reach: its worktree's `.git` file, its worktree
record (`gitdir`, `commondir`, `config.worktree`), its `HOME`, and, in an `in_place`
session, the repository's own `.git/config`. A git process started in the worktree
the ordinary way would follow all of them, and run whatever program they name
(`core.fsmonitor`, hooks, a filter a `.gitattributes` names). So every git process
cairnd starts gets:

- its directories in its environment, from a `Place` cairnd recorded when it made
  the session (`register`) or read back from its registry (`attach`): git never
  looks for a `.git`;
- a fixed configuration (`git_env`): no system or global config file, no hooks,
  no fsmonitor, no gpg, no transport;
- for work on the files (`status`, `update-index`, `read-tree`, `diff`, ...: the
  "tree" scope), a git directory of cairnd's own: `GIT_DIR` is the session's *view*
  (`<state>/git/views/<key>/`, holding only HEAD, copied from the session's own HEAD
  as data before each command) and `GIT_COMMON_DIR` is cairnd's *conf* directory for
  the repository (`<state>/git/conf/<key>/`: a config cairnd wrote, with the few
  settings of the user's that change how files are read, and no program anywhere),
  with the objects and index named by `GIT_OBJECT_DIRECTORY` and `GIT_INDEX_FILE`.
  No filter, textconv or diff driver is configured there, so a `.gitattributes`
  naming one runs nothing;
- for work on refs (`update-ref`, `for-each-ref`, `rev-parse`, `worktree`, ...: the
  "repo" scope), the session's own directories named explicitly: those commands run
  no configured program once hooks and fsmonitor are off.

A path no session owns (the user's own checkout, named in a `new` request) is the
user's: git finds its directories there itself, asked once (`discover`).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cairnd.git import vault as vaults
from cairnd.git.files import GitDirs, read_head

IDENTITY_NAME = "cairnd"
IDENTITY_EMAIL = "cairnd@localhost"

# Settings that outrank every config file (git's command-line level): no program runs.
FIXED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),  # no hook can be found under a device
    ("core.untrackedCache", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("core.sshCommand", "ssh"),  # the fleet's remotes: plain ssh, never a configured program
    ("core.askPass", "false"),
    ("credential.helper", ""),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("core.alternateRefsCommand", ""),
    ("protocol.ext.allow", "never"),
    ("diff.external", ""),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)
REPO_COMMANDS = frozenset({
    "update-ref", "for-each-ref", "pack-refs", "repack", "count-objects", "worktree", "check-ref-format",
    "config", "symbolic-ref", "show-ref", "rev-parse", "merge-base", "gc", "prune", "fsck", "reflog",
})


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """cairnd's environment minus every GIT_* variable, plus the fixed configuration and
    what makes git predictable (C messages, no prompt, cairnd's identity)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_OPTIONAL_LOCKS="0",
        GIT_AUTHOR_NAME=IDENTITY_NAME,
        GIT_AUTHOR_EMAIL=IDENTITY_EMAIL,
        GIT_COMMITTER_NAME=IDENTITY_NAME,
        GIT_COMMITTER_EMAIL=IDENTITY_EMAIL,
        GIT_CONFIG_COUNT=str(len(FIXED_SETTINGS)),
    )
    for i, (key, value) in enumerate(FIXED_SETTINGS):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Place:
    """A session's git state, as cairnd recorded it."""

    work_tree: Path
    git_dir: Path  # the session's own (HEAD, index): the agent's to write, read as data only
    common_dir: Path  # objects and refs
    view: Path  # cairnd's GIT_DIR for the tree scope: HEAD alone
    conf: Path  # cairnd's GIT_COMMON_DIR for the tree scope: config, info/, empty refs/
    vault: Path | None = None  # where its checkpoints' refs and objects go (`vault`): no agent writes it

    @property
    def dirs(self) -> GitDirs:
        return GitDirs(self.git_dir, self.common_dir)

    @property
    def own_store(self) -> bool:
        """Whether the session's repository is a store of its own (`vault.make_store`),
        rather than the user's (an `in_place` session, or one an older cairnd made)."""
        return self.vault is not None and self.common_dir.parent == self.vault / vaults.STORES

    @property
    def objects(self) -> GitDirs:
        """Where cairnd writes the session's new objects: its vault, else its repository."""
        return GitDirs(self.git_dir, self.vault if self.vault is not None else self.common_dir)

    @property
    def source_common(self) -> Path:
        """The common git directory of the user's repository the session came from."""
        if self.own_store and self.vault is not None:
            return vaults.source_of(self.vault) or self.common_dir
        return self.common_dir

    @property
    def index(self) -> Path:
        return self.git_dir / "index"


class PlaceSource(Protocol):
    path: Path

    def git_place(self, worktree: Path) -> tuple[Path, Path, Path] | None: ...


_lock = threading.Lock()
_places: dict[str, Place] = {}
_sources: weakref.WeakSet[Any] = weakref.WeakSet()
_discovered: dict[str, GitDirs] = {}
_roots: list[Path] = []  # the state directories' git roots this process has seen, latest last
_vaults: dict[str, Path] = {}  # a repository path -> its vault


def root_of(state_dir: Path) -> Path:
    """Where cairnd keeps its views and conf directories in a state directory."""
    return Path(state_dir) / "git"


def attach(source: PlaceSource) -> None:
    """Let `lookup` find the sessions a registry (`git_place`) knows of."""
    with _lock:
        _sources.add(source)
    _use_root(root_of(source.path.parent))


def use_state(state_dir: Path) -> None:
    """Let this process find the vaults of a state directory (`vault_for`): every entry
    point that works on a state directory's sessions calls it (or `attach`)."""
    _use_root(root_of(Path(state_dir)))


def roots() -> list[Path]:
    """The git roots of the state directories this process has seen, latest first."""
    with _lock:
        return list(reversed(_roots))


def _use_root(root: Path) -> None:
    root = Path(root)
    with _lock:
        if root in _roots:
            if _roots[-1] == root:
                return
            _roots.remove(root)
        _roots.append(root)


def _key(path: Path) -> str:
    return hashlib.sha1(os.fsencode(os.path.realpath(path))).hexdigest()[:20]


def register(work_tree: Path, git_dir: Path, common_dir: Path, root: Path) -> Place:
    """Record a session's git state (found when cairnd made it, before any agent ran
    there), with its view and conf directories under `root` made if missing."""
    work_tree, git_dir, common_dir = Path(work_tree), Path(git_dir), Path(common_dir)
    _use_root(Path(root))
    # A store's vault is where cairnd put the store; a session in the user's own
    # repository (in place, or made by an older cairnd) gets the repository's vault.
    vault = vaults.vault_of_store(common_dir) or vaults.ensure_vault(Path(root), common_dir, git_env())
    source = vaults.source_of(vault) if vault.parent.name == vaults.VAULTS and common_dir.parent.name == vaults.STORES else None
    conf = _conf_dir(source or common_dir, Path(root))
    view = Path(root) / "views" / _key(work_tree)
    if not (view / "HEAD").exists():
        view.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_file(view / "HEAD", "ref: refs/heads/cairnd-unborn\n")
    place = Place(work_tree, git_dir, common_dir, view, conf, vault)
    with _lock:
        _places[str(work_tree)] = place
        _places[os.path.realpath(work_tree)] = place
    return place


def forget(work_tree: Path) -> None:
    """Drop a session's place (its worktree is gone)."""
    with _lock:
        place = _places.pop(str(work_tree), None)
        _places.pop(os.path.realpath(work_tree), None)
    if place is not None:
        for name in ("HEAD",):
            (place.view / name).unlink(missing_ok=True)
        try:
            place.view.rmdir()
        except OSError:
            pass


def lookup(path: Path | str) -> Place | None:
    """The place of the session whose worktree `path` is, or None."""
    text = str(path)
    place = _places.get(text)
    if place is not None:
        return place
    real = os.path.realpath(text)
    place = _places.get(real)
    if place is not None:
        return place
    for source in list(_sources):
        found = source.git_place(Path(text))
        if found is None and real != text:
            found = source.git_place(Path(real))
        if found is not None:
            work_tree, git_dir, common_dir = found
            return register(work_tree, git_dir, common_dir, root_of(source.path.parent))
    return None


def discover(path: Path) -> GitDirs:
    """(git dir, common dir) of a path no session owns, asked of git once: the user's
    own checkout (its directories are the user's, not an agent's)."""
    place = lookup(path)
    if place is not None:
        return place.dirs
    key = os.path.realpath(path)
    found = _discovered.get(key)
    if found is not None and found.git_dir.exists():
        return found
    proc = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"],
                          cwd=path, env=git_env(), capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        from cairnd.errors import CairnError
        message = proc.stderr.decode("utf-8", "replace").strip()
        code = "not_a_git_repo" if "not a git repository" in message else "git_failed"
        raise CairnError(code, f"{path}: {message or 'git rev-parse failed'}")
    git_dir, common_dir = proc.stdout.decode("utf-8", "surrogateescape").strip().split("\n")
    found = GitDirs(Path(git_dir), Path(common_dir))
    _discovered[key] = found
    return found


def vault_for(path: Path | str) -> Path | None:
    """The vault of the repository `path` is a session worktree of, or the top of (the
    user's checkout, or its git directory when bare), when this process has one; None
    where there is none (checkpoints then live in the repository itself, as before).
    Costs no git process for a path that is not the top of a repository."""
    place = lookup(path)
    if place is not None:
        return place.vault
    if not _roots:
        return None
    key = os.path.realpath(path)
    found = _vaults.get(key)
    if found is not None:
        return found
    dot_git = os.path.join(key, ".git")
    if os.path.isdir(dot_git) and not os.path.islink(dot_git):
        common = Path(dot_git)  # a main checkout: its git directory is the common one, no git asked
    elif os.path.lexists(dot_git) or os.path.isfile(os.path.join(key, "HEAD")):
        dirs = dirs_or_none(Path(path))
        if dirs is None:
            return None
        common = dirs.common_dir
    else:
        return None
    found = vault_of_common(common)
    if found is not None:
        _vaults[key] = found
    return found


def vault_of_common(common_dir: Path) -> Path | None:
    """The vault of the repository whose common git directory is `common_dir`, when this
    process knows one."""
    for root in roots():
        candidate = vaults.vault_dir(root, common_dir)
        if (candidate / "HEAD").exists():
            return candidate
    return None


def objects_of(path: Path) -> GitDirs | None:
    """Where cairnd writes new objects for the worktree at `path`: a session's vault,
    else its repository's directories (`dirs_or_none`)."""
    place = lookup(path)
    if place is not None:
        return place.objects
    dirs = dirs_or_none(path)
    vault = vault_for(path) if dirs is not None else None
    return GitDirs(dirs.git_dir, vault) if dirs is not None and vault is not None else dirs


def source_common(path: Path) -> Path:
    """The common git directory of the user's repository `path` belongs to: for a
    session with a store of its own, the repository it came from."""
    place = lookup(path)
    if place is not None:
        return place.source_common
    return discover(path).common_dir


def sync(place: Place) -> None:
    """Copy what the session's agent added to its store (or, in place, to the user's
    repository) into the vault (checked, each
    object against its id), so what cairnd reads or records next needs nothing the
    agent can delete. Cheap when the store did not change (one directory read)."""
    if place.vault is None:
        return
    if place.own_store:
        vaults.copy_objects(place.common_dir / "objects", place.vault, git_env(), remember=True)
    else:
        # The user's own repository (an in-place session): what the agent added there is
        # loose (`git add`, `git commit`); copied, so the user's `gc` cannot take what a
        # checkpoint borrows. Its packs are its history, borrowed as they are.
        vaults.copy_objects(place.common_dir / "objects", place.vault, git_env(), remember=True, packs=False)


def dirs_or_none(path: Path) -> GitDirs | None:
    """`discover`, or None where `path` is not in a repository."""
    try:
        return discover(path)
    except Exception:  # noqa: BLE001  not a repository, gone, unreadable
        return None


# --------------------------------------------------------------------------- the environment


def subcommand(args: Sequence[str | bytes]) -> str:
    """git's subcommand among `args` (after `-c key=value` and other global options)."""
    skip = False
    for arg in args:
        text = arg if isinstance(arg, str) else arg.decode("utf-8", "replace")
        if skip:
            skip = False
            continue
        if text in ("-c", "-C"):
            skip = True
            continue
        if not text.startswith("-"):
            return text
    return ""


def scoped_env(place: Place, args: Sequence[str | bytes]) -> dict[str, str]:
    """The variables that point a git command at a session's place (see the module
    docstring for the two scopes)."""
    if subcommand(args) in REPO_COMMANDS:
        env = {"GIT_DIR": str(place.git_dir), "GIT_COMMON_DIR": str(place.common_dir),
               "GIT_WORK_TREE": str(place.work_tree)}
        if place.vault is not None and not place.own_store:  # a store borrows from its vault itself
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(place.vault / "objects")
        return env
    sync(place)
    sync_head(place)
    return {"GIT_DIR": str(place.view), "GIT_COMMON_DIR": str(place.conf),
            "GIT_OBJECT_DIRECTORY": str(place.objects.common_dir / "objects"),
            "GIT_WORK_TREE": str(place.work_tree), "GIT_INDEX_FILE": str(place.index)}


def head_of(place: Place) -> tuple[str, str | None] | None:
    """(the session's HEAD commit, its branch or None), read from its files as data."""
    return read_head(place.dirs)


def sync_head(place: Place) -> None:
    """Copy the session's HEAD, resolved to its commit, into its view (as data: its
    HEAD and ref files are read, never run). An unborn or unreadable HEAD leaves the
    view's HEAD unborn, so git says there is no commit."""
    head = head_of(place)
    if head is None:
        head = _head_by_git(place)
    text = f"{head[0]}\n" if head is not None else "ref: refs/heads/cairnd-unborn\n"
    target = place.view / "HEAD"
    try:
        if target.read_text("ascii") == text:
            return
    except (OSError, UnicodeDecodeError):
        place.view.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_file(target, text)


def _head_by_git(place: Place) -> tuple[str, str | None] | None:
    # Another ref storage than files: ask git in the repo scope (rev-parse runs no program).
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=place.work_tree,
                          env=git_env({"GIT_DIR": str(place.git_dir), "GIT_COMMON_DIR": str(place.common_dir),
                                       "GIT_WORK_TREE": str(place.work_tree)}),
                          capture_output=True, stdin=subprocess.DEVNULL, check=False)
    sha = proc.stdout.decode("ascii", "replace").strip()
    return (sha, None) if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha) else None


def _write_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- conf directories


def _conf_dir(common_dir: Path, root: Path) -> Path:
    """cairnd's common directory for the repository whose common directory is
    `common_dir`: made once, whole (built aside, renamed into place)."""
    conf = root / "conf" / _key(common_dir)
    if (conf / "config").exists():
        _copy_rules(common_dir, conf)
        return conf
    conf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = conf.with_name(f".{conf.name}.{os.getpid()}.{threading.get_ident()}")
    (aside / "refs").mkdir(parents=True, mode=0o700)
    (aside / "info").mkdir(mode=0o700)
    (aside / "objects").mkdir(mode=0o700)
    _write_file(aside / "HEAD", "ref: refs/heads/cairnd-unborn\n")
    _write_file(aside / "config", vaults.conf_text(vaults.user_settings(common_dir, git_env())))
    try:
        os.rename(aside, conf)
    except OSError:  # made meanwhile by another thread
        import shutil
        shutil.rmtree(aside, ignore_errors=True)
    _copy_rules(common_dir, conf)
    return conf


def _copy_rules(common_dir: Path, conf: Path) -> None:
    """The user's own ignore and attribute rules (`info/exclude`, `info/attributes`: rules,
    never programs), copied when they changed; the copies are cairnd's files."""
    for name in ("exclude", "attributes"):
        try:
            text = (common_dir / "info" / name).read_bytes()
        except OSError:
            text = b""
        target = conf / "info" / name
        try:
            if target.read_bytes() == text:
                continue
        except OSError:
            pass
        tmp = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, target)

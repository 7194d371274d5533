"""Where checkpoints live out of every agent's reach (SPEC 16): a *vault* per source
repository, and a *store* per session; and the few settings of the user's that cairnd's
own git directories carry (`conf_text`, `store_config`: none names a program).

- **The vault**, `<state>/git/vaults/<key>/`, is a bare repository of cairnd's own for
  one source repository (the user's checkout, by its common git directory). It holds
  every checkpoint ref (`refs/cairnd/...`) and every object a checkpoint needs that the
  user's repository does not: cairnd writes its snapshots there, and copies in the
  objects an agent made. It borrows the rest from the user's repository
  (`objects/info/alternates`), so making one costs nothing. No agent can write it.
- **A session's store**, `<vault>/stores/<name>/`, is a bare repository of the
  session's own: its worktree is a linked worktree of the store, so the agent's
  commits, branches, `gc`, `prune` and `update-ref` land there and nowhere else. It
  borrows from the vault (and, through it, from the user's repository), and starts
  with a copy of the user's branches and tags, so `git log main` works in it. Only
  the store's own objects are the agent's; before cairnd reads a session's files it
  copies the store's new objects into the vault (`copy_objects`), each checked
  against its id, so nothing the agent later deletes, prunes or forges there can
  change a checkpoint.

The user's repository is the agent's to read, never to write: its branches move only
when `land` moves them. Everything here is plain files written whole (built aside,
renamed into place). The git processes started here run with the fixed configuration
they are handed and the directory they name: `index-pack` (a pack the agent made, an
older cairnd's checkpoints adopted), `for-each-ref` and `pack-objects` (that adoption),
and `git config` reading settings as text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from cairnd.state.durable import write_all
from cairnd.state.privacy import child_umask

VAULTS = "vaults"
STORES = "stores"
SOURCE_FILE = "cairnd-source"  # in a vault: the source repository's common git directory


def key_of(path: Path) -> str:
    return hashlib.sha1(os.fsencode(os.path.realpath(path))).hexdigest()[:20]


def vault_dir(root: Path, common_dir: Path) -> Path:
    """Where the vault of the repository whose common git directory is `common_dir` is."""
    return Path(root) / VAULTS / key_of(common_dir)


def _object_format(common_dir: Path) -> str | None:
    try:
        config = (Path(common_dir) / "config").read_text("utf-8", "replace").lower()
    except OSError:
        return None
    return "sha256" if "objectformat = sha256" in config.replace("\t", " ").replace("  ", " ") else None


def _config(bare_extra: str, object_format: str | None) -> str:
    core = "[core]\n\trepositoryformatversion = {}\n\tbare = true\n".format(1 if object_format else 0)
    ext = f"[extensions]\n\tobjectformat = {object_format}\n" if object_format else ""
    return core + ext + bare_extra


def _make_whole(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory aside and rename it into place; a race lost is fine."""
    if (target / "HEAD").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(aside)
        os.rename(aside, target)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
        if not (target / "HEAD").exists():
            raise
    return target


def ensure_vault(root: Path, common_dir: Path, env: Mapping[str, str]) -> Path:
    """The vault of the repository whose common git directory is `common_dir`, made on
    first use (with the checkpoints an older cairnd kept in the repository adopted:
    `adopt`). `env`: git's environment (the fixed configuration)."""
    common = Path(os.path.realpath(common_dir))
    target = vault_dir(root, common)
    if (target / "HEAD").exists():
        return target
    object_format = _object_format(common)

    def build(aside: Path) -> None:
        (aside / "objects" / "info").mkdir(parents=True)
        (aside / "objects" / "pack").mkdir()
        (aside / "refs" / "heads").mkdir(parents=True)
        (aside / "refs" / "tags").mkdir()
        (aside / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
        # `land` fetches a checkpoint's commit from here by its id.
        (aside / "config").write_text(_config("[uploadpack]\n\tallowAnySHA1InWant = true\n", object_format))
        (aside / "HEAD").write_text("ref: refs/heads/cairnd-unborn\n")
        (aside / SOURCE_FILE).write_text(f"{common}\n")

    vault = _make_whole(target, build)
    adopt(vault, common, env)
    return vault


def adopt(vault: Path, common: Path, env: Mapping[str, str]) -> None:
    """Copy into the vault the objects of the checkpoints an older cairnd pinned in the
    repository itself (`refs/cairnd/...` there), less what the repository's branches and
    tags reach: once their refs are moved or re-pinned in the vault, the repository's
    own `gc` could otherwise take them. Nothing when there are none."""
    def refs(*patterns: str) -> list[bytes]:
        proc = subprocess.run(["git", "for-each-ref", "--format=%(objectname)", *patterns], cwd=common,
                              env={**env, "GIT_DIR": str(common)}, capture_output=True, check=False)
        return proc.stdout.split() if proc.returncode == 0 else []
    pinned = refs("refs/cairnd")
    if not pinned:
        return
    wanted = b"".join(sha + b"\n" for sha in dict.fromkeys(pinned)) + b"--not\n"
    wanted += b"".join(sha + b"\n" for sha in dict.fromkeys(refs("refs/heads", "refs/tags")))
    pack = subprocess.run(["git", "pack-objects", "--revs", "--stdout", "-q"], input=wanted, cwd=common,
                          env={**env, "GIT_DIR": str(common)}, capture_output=True, check=False)
    if pack.returncode == 0 and pack.stdout:
        subprocess.run(["git", "index-pack", "--stdin", "--fix-thin"], input=pack.stdout, cwd=vault,
                       env={**env, "GIT_DIR": str(vault)}, capture_output=True, check=False)


def source_of(vault: Path) -> Path | None:
    """The source repository's common git directory a vault borrows from (cairnd wrote it)."""
    try:
        return Path((Path(vault) / SOURCE_FILE).read_text("utf-8", "surrogateescape").strip())
    except OSError:
        return None


def vault_of_store(store: Path) -> Path | None:
    """The vault a session's store belongs to, from where cairnd put it; None when
    `store` is not a store (a repository's own common directory)."""
    store = Path(store)
    if store.parent.name != STORES:
        return None
    vault = store.parent.parent
    return vault if (vault / SOURCE_FILE).is_file() and vault.parent.name == VAULTS else None


def make_store(vault: Path, name: str, config: str) -> Path:
    """A new store in `vault` for a session: a bare repository borrowing the vault's
    objects, with the source repository's branches and tags, its ignore rules, and
    `config` (`store_config`: the settings that change how its files are read,
    and who commits; none names a program)."""
    source = source_of(vault)
    store = Path(vault) / STORES / f"{name}-{time.time_ns():x}"

    def build(aside: Path) -> None:
        (aside / "objects" / "info").mkdir(parents=True)
        (aside / "objects" / "pack").mkdir()
        (aside / "refs" / "heads").mkdir(parents=True)
        (aside / "refs" / "tags").mkdir()
        (aside / "info").mkdir()
        (aside / "objects" / "info" / "alternates").write_text(f"{os.path.realpath(Path(vault) / 'objects')}\n")
        (aside / "config").write_text(config)
        (aside / "HEAD").write_text("ref: refs/heads/cairnd-unborn\n")
        if source is not None:
            _copy_refs(source, aside)
            try:
                shutil.copyfile(source / "info" / "exclude", aside / "info" / "exclude")
            except OSError:
                pass

    return _make_whole(store, build)


def _copy_refs(source: Path, store: Path) -> None:
    """The source's branches and tags, as packed refs of the store (files only: a
    reftable repository's are not copied). Read as data; nothing runs."""
    lines: dict[bytes, bytes] = {}
    try:
        with open(source / "packed-refs", "rb") as f:
            name = b""
            peeled: dict[bytes, bytes] = {}
            for line in f:
                if line.startswith(b"^") and name:
                    peeled[name] = line
                elif not line.startswith(b"#"):
                    sha, _, name = line.rstrip(b"\n").partition(b" ")
                    if name.startswith((b"refs/heads/", b"refs/tags/")):
                        lines[name] = sha
    except OSError:
        peeled = {}
    for kind in ("heads", "tags"):
        top = source / "refs" / kind
        for directory, _subdirs, files in os.walk(top):
            for file in files:
                path = Path(directory) / file
                if file.endswith(".lock"):
                    continue
                try:
                    sha = path.read_bytes().strip()
                except OSError:
                    continue
                if len(sha) in (40, 64) and all(c in b"0123456789abcdef" for c in sha):
                    lines[os.fsencode(path.relative_to(source).as_posix())] = sha
                    peeled.pop(os.fsencode(path.relative_to(source).as_posix()), None)
    text = b"# pack-refs with: peeled fully-peeled sorted \n"
    for name in sorted(lines):
        text += lines[name] + b" " + name + b"\n"
        if name in peeled:
            text += peeled[name]
    (store / "packed-refs").write_bytes(text)


# --------------------------------------------------------------------------- objects into the vault


_seen_lock = threading.Lock()
_seen: dict[str, dict[str, int]] = {}  # objects directory -> fan or pack name -> mtime ns copied at


def copy_objects(source: Path, store: Path, env: Mapping[str, str], *, remember: bool = False,
                 packs: bool = True) -> int:
    """Copy into `store`'s objects what `source` (an objects directory an agent writes)
    holds and the store lacks: loose objects, each checked against its id, and packs,
    checked and indexed by `git index-pack`. Returns how many were copied.

    `packs` False: loose objects only (the user's own repository, whose packs are its
    history, borrowed as they are). With `remember`, a fan directory (`xx/`) or pack already copied is not read again
    until its mtime changes: a store the agent did not write since costs one directory
    read. `env`: git's environment (the fixed configuration)."""
    copied = 0
    target = Path(store) / "objects"
    key = os.path.realpath(source)
    with _seen_lock:
        seen = dict(_seen.get(key, {})) if remember else {}
    try:
        entries = [e for e in os.scandir(source) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for fan in entries:
        if len(fan.name) != 2 and (fan.name != "pack" or not packs):
            continue
        try:
            mtime = fan.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            continue
        if seen.get(fan.name) == mtime:
            continue
        done = (_copy_packs(Path(fan.path), Path(store), env) if fan.name == "pack"
                else _copy_loose(Path(fan.path), target / fan.name))
        if done is None:
            continue  # something could not be read whole: read it again next time
        copied += done
        seen[fan.name] = mtime
    if remember:
        with _seen_lock:
            _seen[key] = seen
    return copied


def _copy_loose(fan: Path, target: Path) -> int | None:
    copied = 0
    whole = True
    try:
        names = [e.name for e in os.scandir(fan) if len(e.name) in (38, 62) and e.is_file(follow_symlinks=False)]
    except OSError:
        return None
    for name in names:
        final = target / name
        if final.exists():
            continue
        try:
            data = (fan / name).read_bytes()
            raw = zlib.decompress(data)
        except (OSError, zlib.error):
            whole = False
            continue  # half-written or not an object: what it would be is not copied
        digest = hashlib.sha1 if len(name) == 38 else hashlib.sha256
        if digest(raw).hexdigest() != fan.name + name:
            continue  # not the object its name says: never copied under that name
        target.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"tmp_obj_cairnd_{os.getpid()}_{threading.get_ident()}_{name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o444)  # as git: read-only,
        try:  # less what cairnd's umask takes (the state directory is private)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        copied += 1
    return copied if whole else None


def _copy_packs(source: Path, store: Path, env: Mapping[str, str]) -> int | None:
    copied = 0
    try:
        packs = [e for e in os.scandir(source) if e.name.endswith(".pack") and e.is_file(follow_symlinks=False)]
    except OSError:
        return None
    for pack in packs:
        if (store / "objects" / "pack" / pack.name.replace(".pack", ".idx")).exists():
            continue
        if not os.path.exists(pack.path[:-5] + ".idx"):
            continue  # still being written: its index comes last
        (store / "objects" / "pack").mkdir(parents=True, exist_ok=True)
        with open(pack.path, "rb") as f:  # streamed: a pack may be larger than memory allows
            proc = subprocess.run(["git", "--git-dir", str(store), "index-pack", "--stdin", "--fix-thin"],
                                  stdin=f, env={**env, "GIT_DIR": str(store)}, cwd=store,
                                  capture_output=True, check=False)
        if proc.returncode == 0:
            copied += 1
    return copied


def forget_seen(source: Path) -> None:
    with _seen_lock:
        _seen.pop(os.path.realpath(source), None)


def remove_store(store: Path) -> None:
    """Remove a session's store (its objects are in the vault, or were never needed)."""
    if vault_of_store(store) is not None:
        forget_seen(Path(store) / "objects")
        shutil.rmtree(store, ignore_errors=True)


# --------------------------------------------------------------------------- settings cairnd copies


# The user's settings that change how files are read and written (copied into the conf
# directory): none names a program.
COPIED_SETTINGS = ("core.autocrlf", "core.eol", "core.filemode", "core.symlinks", "core.ignorecase",
                   "core.precomposeunicode", "core.safecrlf", "core.checkroundtripencoding",
                   "core.quotepath", "core.bigfilethreshold", "core.protectntfs",
                   "core.protecthfs", "extensions.objectformat")
GLOBAL_ONLY_SETTINGS = ("core.excludesfile",)  # a path: taken only from the user's global file
_SETTING_VALUE = re.compile(r"^[^\n\\\"]*$")


def conf_text(settings: Mapping[str, str]) -> str:
    """The conf directory's config: a repository of the user's format, and the copied
    settings (values with no newline, quote or backslash; others are left out)."""
    sections: dict[str, list[str]] = {"core": ["\trepositoryformatversion = 0", "\tbare = false"]}
    if "extensions.objectformat" in settings:
        sections["core"][0] = "\trepositoryformatversion = 1"
    for key, value in sorted(settings.items()):
        section, _, name = key.partition(".")
        if not _SETTING_VALUE.match(value) or not name.isalnum():
            continue
        sections.setdefault(section, []).append(f'\t{name} = "{value}"')
    return "".join(f"[{section}]\n" + "".join(f"{line}\n" for line in lines) for section, lines in sections.items())


STORE_SETTINGS = COPIED_SETTINGS + ("user.name", "user.email")
_store_configs: dict[str, tuple[int | None, str]] = {}  # common dir -> (its config's mtime, a store's config)


def store_config(common_dir: Path, env: Mapping[str, str]) -> str:
    """The config of a session's store (`vault.make_store`): a bare repository of the
    user's format, with the user's repository's own settings that change how files are
    read and who commits (`user.name`, `user.email`); no remote, hook or program. Read
    as settings by `git config`, which runs nothing; again only when the file changed."""
    try:
        stamp = os.stat(Path(common_dir) / "config").st_mtime_ns
    except OSError:
        stamp = None
    cached = _store_configs.get(str(common_dir))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = _settings(["--file", str(Path(common_dir) / "config")], STORE_SETTINGS, env)
    found.setdefault("core.logallrefupdates", "true")  # a bare repository's default is off: its worktrees keep reflogs
    text = conf_text(found).replace("\tbare = false\n", "\tbare = true\n", 1)
    _store_configs[str(common_dir)] = (stamp, text)
    return text


def user_settings(common_dir: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The values of `COPIED_SETTINGS` the user's repository config and the user's
    global config give (read as text by `git config`, which runs nothing)."""
    env = {k: v for k, v in env.items() if k != "GIT_CONFIG_GLOBAL"}  # the user's own global file, as settings only
    return {**_settings(["--global"], COPIED_SETTINGS + GLOBAL_ONLY_SETTINGS, env),
            **_settings(["--file", str(common_dir / "config")], COPIED_SETTINGS, env)}


def _settings(source: list[str], wanted: tuple[str, ...], env: Mapping[str, str]) -> dict[str, str]:
    """The `wanted` settings one config file gives (`git config --list`, which runs nothing)."""
    proc = subprocess.run(["git", "config", *source, "--includes", "--null", "--list"], env=env, cwd="/",
                          capture_output=True, stdin=subprocess.DEVNULL, check=False, umask=child_umask())
    found: dict[str, str] = {}
    for item in proc.stdout.decode("utf-8", "replace").split("\0"):
        key, _, value = item.partition("\n")
        if key.lower() in wanted:
            found[key.lower()] = value
    return found

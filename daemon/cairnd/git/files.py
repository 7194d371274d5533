"""The few git files cairnd reads and writes itself, where a git process would cost more
than the work: HEAD and branch refs (read), loose objects, a loose ref and a linked
worktree's record (written), and the stamp of what a checkpoint's snapshot depends on.

Each follows git's own file formats and locking exactly (a ref is written as
`<ref>.lock`, created exclusively, then renamed over the ref, as git does), and each
answers None, so the caller runs git instead, wherever the repository is not the
plain kind these formats describe: another ref storage (reftable), another object
format than SHA-1, anything unreadable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from cairnd.state.durable import write_all

_HEX = frozenset("0123456789abcdef")
FileStamp = tuple[int, int, int] | None  # (inode, mtime ns, size), None when absent


@dataclass(frozen=True)
class GitDirs:
    """The per-worktree git directory (HEAD, index) and the common one (refs, objects)."""

    git_dir: Path
    common_dir: Path

    @property
    def index(self) -> Path:
        return self.git_dir / "index"


def plain_repository(dirs: GitDirs) -> bool:
    """Whether the repository uses the files ref storage and SHA-1 objects (the formats
    this module reads and writes): no `extensions.refStorage` / `objectFormat`."""
    try:
        config = (dirs.common_dir / "config").read_text("utf-8", "replace").lower()
    except OSError:
        return False
    return "refstorage" not in config and "objectformat" not in config


def _is_sha1(text: str) -> bool:
    return len(text) == 40 and set(text) <= _HEX


def read_ref(dirs: GitDirs, name: str) -> str | None:
    """The object id of ref `name` (loose, else packed); None when unknown."""
    try:
        value = (dirs.common_dir / name).read_text("ascii").strip()
    except FileNotFoundError:
        value = None
    except (OSError, UnicodeDecodeError):
        return None
    if value is not None:
        return value if _is_sha1(value) else None
    try:
        with open(dirs.common_dir / "packed-refs", "rb") as f:
            wanted = b" " + os.fsencode(name) + b"\n"
            for line in f:
                if line.endswith(wanted) and not line.startswith((b"#", b"^")):
                    sha = line[:40].decode("ascii", "replace")
                    return sha if _is_sha1(sha) else None
    except OSError:
        return None
    return None


def read_head(dirs: GitDirs) -> tuple[str, str | None] | None:
    """(HEAD's commit id, its branch or None when detached), read from the files; None
    when that cannot be told without git (a symbolic ref outside refs/heads, an unborn
    branch, a HEAD that is neither form)."""
    try:
        head = (dirs.git_dir / "HEAD").read_text("utf-8", "surrogateescape").strip()
    except OSError:
        return None
    if _is_sha1(head):
        return head, None
    if not head.startswith("ref: refs/heads/"):
        return None
    ref = head[len("ref: "):]
    sha = read_ref(dirs, ref)
    return (sha, ref[len("refs/heads/"):]) if sha else None


def file_stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def index_entries(index: Path) -> int | None:
    """The number of entries an index file's header declares."""
    try:
        with open(index, "rb") as f:
            header = f.read(12)
    except OSError:
        return None
    return int.from_bytes(header[8:12], "big") if len(header) == 12 and header[:4] == b"DIRC" else None


def _config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg else Path.home() / ".config"


@dataclass(frozen=True)
class TreeStamp:
    """What a snapshot depends on besides the files of the tree: HEAD, the session's
    index file, and every file that says which files are ignored or how content is
    filtered (repository and user configuration, exclude and attribute files). Equal
    stamps mean a snapshot may be built from the paths that changed alone."""

    head: tuple[str, str | None]
    index: FileStamp
    settings: tuple[FileStamp, ...]


def tree_stamp(dirs: GitDirs) -> TreeStamp | None:
    head = read_head(dirs)
    if head is None:
        return None
    settings = (
        dirs.common_dir / "config", dirs.git_dir / "config.worktree", dirs.common_dir / "info" / "exclude",
        dirs.common_dir / "info" / "attributes", Path.home() / ".gitconfig", _config_home() / "git" / "config",
        _config_home() / "git" / "ignore", _config_home() / "git" / "attributes",
    )
    return TreeStamp(head, file_stamp(dirs.index), tuple(file_stamp(p) for p in settings))


# --------------------------------------------------------------------------- writing


def _timezone() -> str:
    offset = -(time.altzone if time.localtime().tm_isdst > 0 else time.timezone) // 60
    sign = "+" if offset >= 0 else "-"
    return f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def write_commit(dirs: GitDirs, tree: str, parent: str, message: str, name: str, email: str) -> str | None:
    """Write a commit object (one tree, one parent) as a loose object, as `git
    commit-tree` would; its id, or None where git must do it (see the module docstring)."""
    if not (plain_repository(dirs) and _is_sha1(tree) and _is_sha1(parent)):
        return None
    stamp = f"{name} <{email}> {int(time.time())} {_timezone()}"
    body = (f"tree {tree}\nparent {parent}\nauthor {stamp}\ncommitter {stamp}\n\n{message}\n").encode()
    return write_object(dirs, b"commit", body)


def write_object(dirs: GitDirs, kind: bytes, body: bytes) -> str | None:
    """Write an object of type `kind` (blob, tree, commit) as a loose object, as git
    does (level-1 zlib, read-only, renamed into place); its id, or None where it cannot.
    Plain `os` calls: a checkpoint may write dozens of these."""
    raw = b"%s %d\0" % (kind, len(body)) + body
    sha = hashlib.sha1(raw).hexdigest()
    directory = os.path.join(dirs.common_dir, "objects", sha[:2])
    final = os.path.join(directory, sha[2:])
    if os.path.exists(final):
        return sha
    tmp = os.path.join(directory, f"tmp_obj_cairnd_{os.getpid()}_{threading.get_ident()}_{time.monotonic_ns()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o444)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, flags, 0o444)
        try:
            write_all(fd, zlib.compress(raw, 1))
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except OSError:
        return None
    return sha


def write_loose_ref(dirs: GitDirs, name: str, sha: str) -> bool:
    """Point ref `name` at `sha` as a loose ref, with git's lock protocol; False where
    git must do it (the lock is taken, another storage, a name that is not plain)."""
    if not (plain_repository(dirs) and _is_sha1(sha)) or ".." in name or not name.startswith("refs/"):
        return False
    path = dirs.common_dir / name
    lock = path.with_name(path.name + ".lock")
    for _attempt in range(3):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            continue  # `git pack-refs` removed the emptied directory meanwhile
        except OSError:
            return False
        try:
            try:
                write_all(fd, sha.encode() + b"\n")
            finally:
                os.close(fd)
            os.rename(lock, path)
        except OSError:
            lock.unlink(missing_ok=True)
            return False
        return True
    return False


WORKTREE_RECORD_TMP = "cairnd-worktree-"  # prefix of a record being built, in the common directory


def write_worktree_record(dirs: GitDirs, path: Path, head_sha: str) -> bool:
    """Make `path` a linked worktree of the repository, HEAD detached at `head_sha`, with
    no files or index yet: the record `git worktree add --no-checkout --detach` writes
    (`<common>/worktrees/<name>/` holding gitdir, commondir and HEAD, and `path/.git`),
    without its two processes. False where git must do it: another repository format,
    per-worktree configuration, `path` not empty.

    The record is built aside and renamed into `worktrees/` whole, after `path/.git`, so
    nothing that reads the records (another add, a repack, `worktree list`, a remove
    after a crash) sees it half-made, and no lock is needed. Nor does it need git's
    `locked` file ("initializing"), which keeps `git worktree prune` from a record whose
    `.git` is not written yet: here that file is always there first. Its name follows
    from `path` (`record_name`; git's would be `path`'s base name, numbered), which git
    only shows inside `.git/worktrees/`, so a record a stop left half-built is found
    from the path alone (`remove_record_aside`)."""
    if not (plain_repository(dirs) and _is_sha1(head_sha)):
        return False
    try:
        if b"worktreeconfig" in (dirs.common_dir / "config").read_bytes().lower():
            return False
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            return False
        records = Path(os.path.realpath(dirs.common_dir / "worktrees"))
        records.mkdir(exist_ok=True)
    except OSError:
        return False
    name = record_name(path)
    aside = dirs.common_dir / f"{WORKTREE_RECORD_TMP}{name}"
    record = records / name
    try:
        aside.mkdir()
        (aside / "gitdir").write_text(f"{os.path.realpath(path)}/.git\n")
        (aside / "commondir").write_text("../..\n")
        (aside / "HEAD").write_text(f"{head_sha}\n")
        # The worktree's .git before the record appears: git refuses to remove a
        # worktree whose record exists but whose .git does not ("validation failed"),
        # while one whose record does not exist yet is simply not a worktree to it.
        (path / ".git").write_text(f"gitdir: {record}\n")
        os.rename(aside, record)
    except OSError:
        (path / ".git").unlink(missing_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        return False
    return True


def record_name(path: Path) -> str:
    """The name of the record cairnd writes for a worktree at `path`: one worktree per
    path at a time, so one name (a record of that name already there makes the write
    fail, and git writes it instead)."""
    return "cairnd-" + hashlib.sha1(os.fsencode(os.path.realpath(path))).hexdigest()[:16]


def remove_record_aside(dirs: GitDirs, path: Path) -> None:
    """Remove the record for `path` that a stop left half-built beside the records
    (never renamed into `worktrees/`, so not a worktree to git, and left by nothing else)."""
    shutil.rmtree(dirs.common_dir / f"{WORKTREE_RECORD_TMP}{record_name(path)}", ignore_errors=True)


_PACK_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3}


def write_pack(dirs: GitDirs, objects: list[tuple[bytes, bytes, bytes]]) -> bool:
    """Write `objects` ((binary id, kind, body) each) as one pack with its index, as git
    writes a pack without deltas (version 2 of both formats): two files where loose
    objects would be one each. False where it cannot (then write them loose)."""
    if not plain_repository(dirs):
        return False
    pack = bytearray(b"PACK" + struct.pack(">II", 2, len(objects)))
    entries: list[tuple[bytes, int, int]] = []  # (id, crc32 of its packed bytes, offset)
    for sha, kind, body in objects:
        size = len(body)
        byte = (_PACK_TYPES[kind] << 4) | (size & 0x0F)  # type and the low 4 bits of the size,
        size >>= 4
        header = bytearray()
        while size:  # then 7 bits at a time, the high bit saying more follow
            header.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        header.append(byte)
        packed = bytes(header) + zlib.compress(body, 1)
        entries.append((sha, zlib.crc32(packed), len(pack)))
        pack += packed
    checksum = hashlib.sha1(pack).digest()
    pack += checksum
    if len(pack) >= 1 << 31:  # offsets past 2 GiB need the index's large-offset table
        return False
    entries.sort()
    index = bytearray(b"\xfftOc" + struct.pack(">I", 2))
    below = 0
    firsts = [sha[0] for sha, _, _ in entries]
    for byte in range(256):  # fan-out: how many ids begin with a byte up to this one
        while below < len(firsts) and firsts[below] <= byte:
            below += 1
        index += struct.pack(">I", below)
    index += b"".join(sha for sha, _, _ in entries)
    index += b"".join(struct.pack(">I", crc) for _, crc, _ in entries)
    index += b"".join(struct.pack(">I", offset) for _, _, offset in entries)
    index += checksum
    index += hashlib.sha1(index).digest()
    directory = dirs.common_dir / "objects" / "pack"
    base = directory / f"pack-{checksum.hex()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".pack", pack), (".idx", index)):  # the index last: it makes the pack seen
            tmp = directory / f"tmp_pack_cairnd_{os.getpid()}_{threading.get_ident()}{suffix}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o444)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, f"{base}{suffix}")
    except OSError:
        if not os.path.exists(f"{base}.idx"):
            Path(f"{base}.pack").unlink(missing_ok=True)
        return False
    return True

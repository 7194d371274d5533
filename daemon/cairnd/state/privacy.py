"""Who may read the state directory: cairnd's user, and its group only on purpose (SPEC 16).

The state directory holds whole conversations (code, command output, keys an agent
printed). The policy, in one place, is the umask of the process that writes there:
`claim` sets it once at start, from the mode the state directory already has:

    state directory found   new directories   new files    umask
    missing, or 0700        0700              0600         077
    0750 (group r-x)        0750              0640         027   systemd's StateDirectoryMode=0750
    0770 (group rwx)        0770              0660         007   a group that submits requests

that is: the state directory's group bits are kept, others' bits never given. Every
file cairnd creates there (spool, results, logs, stderr files, cairnd.db and its WAL,
status.json, the lock) then gets its mode from it, whichever module opens it, and
SQLite's own files too. Nothing found is ever chmod-ed: a state directory others can
read is reported (`warning`), not changed.

Programs cairnd starts for the user's sake (git, which writes worktrees and the
repository's objects; the agents) get the umask cairnd was started with
(`child_umask`), and so do the files cairnd writes into a worktree for an agent
(`write_user_file`, ACP's fs/write_text_file): worktrees keep the repository's own modes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

OTHERS = 0o007
NEVER = 0o077  # what the umask always takes away, before the state directory's group bits


@dataclass(frozen=True)
class StateAccess:
    """What `claim` found and decided."""

    root: Path
    found_mode: int | None  # the state directory's permission bits, None when cairnd made it
    umask: int  # cairnd's umask from now on
    user_umask: int  # the one it was started with

    @property
    def dir_mode(self) -> int:
        return 0o777 & ~self.umask

    @property
    def file_mode(self) -> int:
        return 0o666 & ~self.umask

    @property
    def warning(self) -> str | None:
        if self.found_mode is None or not self.found_mode & OTHERS:
            return None
        return (f"the state directory {self.root} is readable by other users (mode {self.found_mode:04o}): "
                f"anyone on this machine can read its sessions' conversations; cairnd leaves modes it finds "
                f"as they are (`chmod o-rwx {self.root}` to close it). What cairnd creates there from now "
                f"on is mode {self.dir_mode:04o} (directories) and {self.file_mode:04o} (files)")


def umask_for(found_mode: int | None) -> int:
    """The umask for a state directory of this mode (None: cairnd makes it): the
    directory's group bits are kept, others' are always taken away."""
    group = (found_mode or 0) & 0o070
    return NEVER & ~group


_user_umask: int | None = None  # set by claim(): the umask cairnd was started with
_state_umask: int | None = None  # set by claim(): the one for the state directory


def claim(root: Path) -> StateAccess:
    """Set this process's umask for the state directory `root` and say what was found.
    Call it once at start, before anything is created there (a missing state directory,
    and its missing parents such as ~/.local/state, are then made private, as XDG asks
    of a state home); calling it again keeps the first user umask."""
    global _user_umask, _state_umask
    try:
        found: int | None = stat.S_IMODE(os.stat(root).st_mode)
    except FileNotFoundError:
        found = None
    mask = umask_for(found)
    previous = os.umask(mask)
    if _user_umask is None:
        _user_umask = previous
    _state_umask = mask
    return StateAccess(root, found, mask, _user_umask)


def child_umask() -> int:
    """The umask for programs working in the user's files (git, agents), to pass as
    `subprocess`'s `umask=`: the one cairnd was started with, or -1 (inherit) when
    `claim` never changed it."""
    return -1 if _user_umask is None else _user_umask


def keep_private(path: Path) -> None:
    """Narrow a file in the state directory that a program with the user's umask wrote
    (git, writing a private index there) to the state directory's file mode."""
    if _state_umask is None:
        return
    try:
        os.chmod(path, 0o666 & ~_state_umask & stat.S_IMODE(os.stat(path).st_mode))
    except FileNotFoundError:
        pass


def write_user_file(path: Path, data: bytes) -> None:
    """Write `path` in a worktree for an agent: what it creates (the file, missing parent
    directories) gets the modes of the umask cairnd was started with, as git gives."""
    user = _user_umask
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        if user is not None:
            os.chmod(directory, 0o777 & ~user)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        if user is not None:
            os.fchmod(fd, 0o666 & ~user)
    except FileExistsError:  # an existing file keeps its mode
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)

"""The web view's token (SPEC 14): `[web] token`, or the one cairnd makes once and keeps
in `<state>/web.token`.

Loopback is not a user boundary: every local user and every local process can connect
to 127.0.0.1, so the web view answers nobody without its token, on every address. When
the configuration names none, the first `cairnd web` (or `cairnd serve` with `[web]
listen`) makes one (32 random bytes, URL-safe) and keeps it in the state directory,
readable by cairnd's user only, so the address a user bookmarked keeps working across
restarts, and every process serving that state directory agrees on it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from cairnd.config.settings import Config, ConfigError, is_web_token
from cairnd.state.durable import fsync_dir, temp_name, write_all

TOKEN_BYTES = 32
TOKEN_FILE_MODE = 0o600
MAX_TOKEN_FILE = 4096


def web_token(config: Config) -> str:
    """The token every request to this configuration's web view must carry."""
    if config.web.token:
        return config.web.token
    return kept_token(config.layout.web_token)


def kept_token(path: Path) -> str:
    """The token kept in `path`, made there first when missing. Two processes starting at
    once agree: the file appears whole (a hard link of a finished temporary file) or not
    at all, and the loser reads the winner's."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, TOKEN_FILE_MODE)
    try:
        os.fchmod(fd, TOKEN_FILE_MODE)  # whatever the umask: the group gets no token either
        write_all(fd, (token + "\n").encode())
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: theirs is the token
            return _read(path)
        fsync_dir(path.parent)
        return token
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link: remove it, and cairnd makes a new web token") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"cannot read the web token {path}: {exc.strerror}") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(f"{path} is not a regular file: remove it, and cairnd makes a new web token")
        if found.st_uid != os.geteuid():
            raise ConfigError(f"{path} belongs to uid {found.st_uid}, not to cairnd's user ({os.geteuid()}): "
                              "another user could choose the web view's token; remove it")
        if stat.S_IMODE(found.st_mode) & 0o077:
            raise ConfigError(f"{path} has mode {stat.S_IMODE(found.st_mode):04o}: others could read the web "
                              f"view's token; `chmod 600 {path}`, or remove it for a new one")
        text = os.read(fd, MAX_TOKEN_FILE).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not is_web_token(text):
        raise ConfigError(f"{path} does not hold a web token (letters, digits and - . _ ~ + / =): "
                          "remove it, and cairnd makes a new one")
    return text

"""The pickup benchmark's peer floor: the plainest Python program that does what the
spool protocol asks of a daemon for a no-op request. An inotify watch on new/; per
request: rename into cur/, read and parse it, write the result to a temporary name,
fsync, rename into done/, fsync the directory, remove the cur/ entry. No event loop,
no threads: the time left is the kernel's and the interpreter's.

    python bench/pickup_peer.py SPOOL     (runs until SIGTERM)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import orjson

from inotify import IN_MOVED_TO, Inotify


def answer(spool: Path, name: str) -> None:
    cur = spool / "cur" / name
    try:
        os.rename(spool / "new" / name, cur)
    except FileNotFoundError:
        return
    request = orjson.loads(cur.read_bytes())
    body = orjson.dumps({"id": name[:-5], "kind": request.get("kind"), "status": "ok", "request": request,
                         "result": {"session": request.get("session"), "cancelled": False}})
    tmp = spool / "done" / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, spool / "done" / name)
    dir_fd = os.open(spool / "done", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    os.unlink(cur)


def serve(spool: Path) -> None:
    watcher = Inotify()
    watcher.watch(spool / "new", IN_MOVED_TO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (spool / "peer-ready").write_text("")
    while True:
        for _folder, name in watcher.names(None):
            if name.endswith(".json") and not name.startswith("."):
                answer(spool, name)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

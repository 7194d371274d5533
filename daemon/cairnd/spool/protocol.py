"""The request spool (SPEC section 6), maildir-style: the whole file protocol.

    tmp/  writers create files here       new/  writers rename finished requests here
    cur/  cairnd works on them here       done/ failed/  one result per request

Ownership moves by `rename`, so at every instant a request is in exactly one place,
and a crash anywhere leaves it either in `new/` (not yet claimed), in `cur/` (claimed,
to be finished on restart) or answered. Nothing is deleted until its result is durable.

Everything SPEC 6 says about files lives here: the name -> request id rule, the 1 MiB
cap, how a file is read (never followed, never blocked on, never past the cap), the
result file's shape (`result_body`), where the bytes of a request that cannot travel in
its result are kept (`<name>.raw`), duplicate ids, and the queue depths.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from cairnd.state.durable import fsync_dir, write_all, write_atomic
from cairnd.sessionlog.entries import now_timestamp
from cairnd.errors import CairnError
from cairnd.ids import is_request_id
from cairnd.state.layout import SPOOL_DIRS

MAX_REQUEST_BYTES = 1024 * 1024
_DUP_RE = re.compile(r"^(?P<id>.+)\.dup-(?P<n>[0-9]+)\.json$")
NAME_MAX = 255


@dataclass(frozen=True)
class SpoolFile:
    """Where a request came in, typed at intake: a file in this host's spool, answered
    by its result file in done/ or failed/ (which the daemon writes)."""


class Door(Protocol):
    """Where a request came in when not this host's spool (the fleet's stream; later an
    editor, the web), with its reply path: the request runs here and `reply` sends its
    result back through the same door."""

    async def reply(self, claimed: Claimed, body: dict[str, Any]) -> None: ...


SPOOL_FILE = SpoolFile()
Intake = SpoolFile | Door  # a claimed request's origin


@dataclass
class Claimed:
    """A request that cairnd owns: its file sits in `cur/<name>`."""

    name: str                       # the file name in cur/, and the result's name
    request_id: str | None          # None when the name is not a valid <id>.json
    received_at: str
    data: bytes | None = None       # the bytes, when the entry is a readable regular file within the cap
    problem: CairnError | None = None  # a failure found before parsing (bad_name, not_a_file, too_large, duplicate_id)
    recovered: bool = False  # found in cur/ at start: a stop came while it was being worked on
    origin: Intake = SPOOL_FILE


def request_id_of(file_name: str) -> str:
    """The request id a file in `new/` stands for, or `bad_name`."""
    if not file_name.endswith(".json") or not is_request_id(file_name[: -len(".json")]):
        raise CairnError(
            "bad_name",
            f"file name {file_name!r} is not <request-id>.json with an id matching [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}",
        )
    return file_name[: -len(".json")]


def _identify(name: str) -> tuple[str | None, CairnError | None]:
    """The request id of a file name, or the problem with the name."""
    try:
        return request_id_of(name), None
    except CairnError as exc:
        return None, exc


def _duplicate(request_id: str) -> CairnError:
    return CairnError("duplicate_id", f"request id {request_id!r} was already used; the first request's result stays")


def result_body(claimed: Claimed, echo: Any, kind: str | None, *, finished_at: str,
                result: dict[str, Any] | None = None, error: CairnError | None = None) -> dict[str, Any]:
    """The one result file of a request (SPEC 6), pure. `echo` is the request's JSON as
    `requests.admit` kept it (None: the file itself is kept as `<name>.raw`). A result
    that cannot be written as JSON becomes an `internal` error that says why: still
    exactly one result."""
    body: dict[str, Any] = {
        "id": claimed.request_id,
        "kind": kind,
        "status": "ok" if error is None else "error",
        "request": echo,
    }
    if error is None:
        body["result"] = result
    else:
        body["error"] = error.as_dict()
    body["received_at"] = claimed.received_at
    body["finished_at"] = finished_at
    try:
        orjson.dumps(body)
    except TypeError as exc:
        body.pop("result", None)
        body["status"] = "error"
        body["error"] = CairnError("internal", f"the result could not be written as JSON: {exc}").as_dict()
    return body


def count_entries(spool_root: Path, folders: tuple[str, ...] = ("new", "cur")) -> dict[str, int]:
    """How many requests wait (new), are being worked on (cur), or are answered (done,
    failed: result files only, not the `.raw` entries kept beside them). A missing
    folder counts 0."""
    counts: dict[str, int] = {}
    for sub in folders:
        try:
            with os.scandir(spool_root / sub) as it:
                names = [entry.name for entry in it if not entry.name.startswith(".")]
        except FileNotFoundError:
            names = []
        if sub in ("done", "failed"):
            names = [name for name in names if name.endswith(".json")]
        counts[sub] = len(names)
    return counts


def _raw_name(name: str) -> str:
    raw = f"{name}.raw"
    if len(os.fsencode(raw)) <= NAME_MAX:
        return raw
    return f"{os.fsencode(name)[: NAME_MAX - 8].decode('utf-8', 'ignore')}....raw"


def _by_arrival(folder: Path) -> list[str]:
    """Entries of a spool folder, oldest first, without dot names (writers' own)."""
    entries = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                entries.append((entry.stat(follow_symlinks=False).st_ctime_ns, entry.name))
            except FileNotFoundError:
                continue
    entries.sort()
    return [name for _, name in entries]


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp, self.new, self.cur, self.done, self.failed = (root / sub for sub in SPOOL_DIRS)

    # -- daemon side -----------------------------------------------------------------

    def pending(self) -> list[str]:
        """Names waiting in new/, oldest first (rename sets ctime: arrival order)."""
        return _by_arrival(self.new)

    def in_progress(self) -> list[str]:
        """Names left in cur/ (by a crash), oldest first."""
        return _by_arrival(self.cur)

    def has_result(self, name: str) -> bool:
        return (self.done / name).exists() or (self.failed / name).exists()

    def _taken(self, name: str) -> bool:
        return self.has_result(name) or os.path.lexists(self.cur / name)

    def _dup_name(self, name: str) -> str:
        """The first free `<id>.dup-<n>.json` (or `<name>.dup-<n>` for a bad name)."""
        stem, ext = (name[: -len(".json")], ".json") if name.endswith(".json") else (name, "")
        n = 1
        while self._taken(f"{stem}.dup-{n}{ext}"):
            n += 1
        return f"{stem}.dup-{n}{ext}"

    def claim(self, name: str) -> Claimed | None:
        """Move new/<name> into cur/ and read it. None if it vanished meanwhile (a
        writer took it back, or another scan claimed it)."""
        received = now_timestamp()
        request_id, problem = _identify(name)
        target = name
        if self._taken(name):
            # The first result stays; the newcomer is answered under a name of its own.
            target = self._dup_name(name)
            if request_id is not None:
                problem = _duplicate(request_id)
        try:
            os.rename(self.new / name, self.cur / target)
        except FileNotFoundError:
            return None
        claimed = Claimed(name=target, request_id=request_id, received_at=received, problem=problem)
        self.read(claimed)
        return claimed

    def read(self, claimed: Claimed) -> None:
        """Fill in the bytes of cur/<name>, refusing anything but a regular file within
        the size cap, without following links or blocking on a fifo."""
        path = self.cur / claimed.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                kind = "a symbolic link"
                try:
                    kind += f" to {os.readlink(path)!r}"
                except OSError:
                    pass
                claimed.problem = claimed.problem or CairnError("not_a_file", f"{claimed.name} is {kind}; write a regular file")
                return
            if exc.errno == errno.ENOENT:
                claimed.problem = claimed.problem or CairnError("internal", f"{claimed.name} disappeared from cur/")
                return
            claimed.problem = claimed.problem or CairnError("not_a_file", f"{claimed.name} cannot be opened: {exc.strerror}")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = {stat.S_IFDIR: "directory", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
                        stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}.get(
                            stat.S_IFMT(st.st_mode), "special file")
                claimed.problem = claimed.problem or CairnError("not_a_file", f"{claimed.name} is a {kind}; write a regular file")
                return
            if st.st_size > MAX_REQUEST_BYTES:
                claimed.problem = claimed.problem or CairnError(
                    "too_large", f"{claimed.name} is {st.st_size} bytes; the limit is {MAX_REQUEST_BYTES} (1 MiB)")
                return
            chunks, total = [], 0
            while total <= MAX_REQUEST_BYTES:
                chunk = os.read(fd, MAX_REQUEST_BYTES + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
            if len(data) > MAX_REQUEST_BYTES:
                claimed.problem = claimed.problem or CairnError(
                    "too_large", f"{claimed.name} grew past the limit of {MAX_REQUEST_BYTES} bytes while being read")
                return
            claimed.data = data
        finally:
            os.close(fd)

    def publish(self, claimed: Claimed, result: dict[str, Any], *, keep_raw: bool) -> Path:
        """Write the one result of a claimed request, then let go of cur/<name>.

        keep_raw: the request's bytes could not be carried in the result as JSON
        (not JSON, too large, not a file), so the entry itself is kept as
        failed/<name>.raw: not copied, not lost. It is linked there before the result
        is written (a client that sees the result finds it) and leaves cur/ only
        after: a crash in between leaves it in cur/, to be answered on restart. A
        directory cannot be linked; it moves after the result."""
        ok = result.get("status") == "ok"
        folder = self.done if ok else self.failed
        target = folder / claimed.name
        if keep_raw:
            try:
                os.link(self.cur / claimed.name, self.failed / _raw_name(claimed.name), follow_symlinks=False)
            except FileExistsError:
                pass  # linked by an earlier try
            except OSError:
                pass  # a directory (or a folder on another mount): moved below
        write_atomic(target, orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE), sync_dir=True)
        self._let_go(claimed.name, keep_raw and not os.path.lexists(self.failed / _raw_name(claimed.name)))
        return target

    def _let_go(self, name: str, keep_raw: bool) -> None:
        path = self.cur / name
        try:
            if keep_raw:
                os.rename(path, self.failed / _raw_name(name))
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            os.rename(path, self.failed / _raw_name(name))

    def forget_answered(self, name: str) -> None:
        """A cur/ entry whose result was published before a crash stopped us removing it
        (or moving it beside a result that does not carry the request)."""
        try:
            answer = orjson.loads((self.failed / name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            answer = {}
        keep_raw = isinstance(answer, dict) and "request" in answer and answer["request"] is None
        self._let_go(name, keep_raw and not os.path.lexists(self.failed / _raw_name(name)))

    def reclaim(self, name: str) -> Claimed:
        """A request found in cur/ at start: read it again to finish it."""
        match = _DUP_RE.match(name)
        if match and self.has_result(f"{match['id']}.json"):
            request_id, problem = match["id"], _duplicate(match["id"])
        else:
            request_id, problem = _identify(name)
        claimed = Claimed(name=name, request_id=request_id, received_at=now_timestamp(), problem=problem,
                          recovered=True)
        self.read(claimed)
        return claimed

    def depths(self) -> dict[str, int]:
        """Requests waiting (new) and being worked on (cur)."""
        return count_entries(self.root)

    # -- client side -----------------------------------------------------------------

    def submit(self, request_id: str, request: dict[str, Any]) -> Path:
        """What any writer does: tmp/<id>.json, fsync, rename into new/."""
        name = f"{request_id}.json"
        tmp = self.tmp / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, orjson.dumps(request))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.new / name)
        fsync_dir(self.new)
        return self.new / name

    def result_of(self, request_id: str) -> dict[str, Any] | None:
        for folder in (self.done, self.failed):
            try:
                return orjson.loads((folder / f"{request_id}.json").read_bytes())
            except FileNotFoundError:
                continue
        return None

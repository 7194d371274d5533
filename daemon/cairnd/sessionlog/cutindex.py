"""The user-message offsets of a session log, kept beside it (`cuts.ndjson`), so finding
a fork's cut does not read the log: a fork of a gigabyte log starts as fast as a fork
of a kilobyte one.

One JSON object per line, appended:

    {"m": [ordinal, line_index, offset, top_level, sub_session], "c": checkpoint-or-null}
    {"s": {"v": 2, "covered": N, "lines": L, "ordinal": K, "open": [sub, id] | null,
           "checkpoint": {...} | null, "inode": I, "tail": crc32}}

An `m` line is one user message (SPEC 4) with the last checkpoint before it; an `s`
line says the messages before it are every one in the first `covered` bytes of the
log (`lines` lines), with the count's state there (`forkpoint.CountState`), so the
index goes on from there by reading only what the log gained since.

Crash-safe by distrust: only what precedes the last whole `s` line counts (a torn or
half-written tail is cut away before the next append), and an index is rebuilt from
the log when it is missing, unreadable, or stale: the log has another inode (a rewind
replaced it), is shorter than `covered`, or its bytes just before `covered` are not
the ones the index saw (`tail`, a CRC of up to 4 KiB), or it was counted by an
older rule (`v`: 2 since prompts and checkpoints an agent forged stopped counting,
SPEC 3 provenance).
"""

from __future__ import annotations

import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from collections import OrderedDict

import orjson

from cairnd.sessionlog.entries import parse_message, prompt_text
from cairnd.sessionlog.forkpoint import CountState, ForkPoint, IndexedMessage, UserMessage, count_from, fork_point_of
from cairnd.sessionlog.file import iter_lines

INDEX_NAME = "cuts.ndjson"
VERSION = 2  # the counting rule an index was made by: any other is rebuilt
_TAIL = 4096


def index_path(log_path: Path) -> Path:
    return Path(log_path).with_name(INDEX_NAME)


@dataclass
class CutIndex:
    messages: list[IndexedMessage]
    state: CountState
    covered: int
    lines: int
    inode: int
    tail: int
    valid_bytes: int  # bytes of the index file up to its last `s` line


def _tail_crc(fd: int, covered: int) -> int:
    begin = max(0, covered - _TAIL)
    return zlib.crc32(os.pread(fd, covered - begin, begin))


def _load(path: Path) -> CutIndex | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    messages: list[IndexedMessage] = []
    pending: list[IndexedMessage] = []
    index: CutIndex | None = None
    position = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            break
        position += len(line)
        if "m" in record:
            ordinal, line_index, offset, top_level, sub = record["m"]
            pending.append(IndexedMessage(UserMessage(ordinal, line_index, offset, bool(top_level), sub, ""),
                                          record.get("c")))
        elif "s" in record:
            s = record["s"]
            if s.get("v") != VERSION:
                return None
            messages.extend(pending)
            pending = []
            state = CountState(s["ordinal"], tuple(s["open"]) if s["open"] else None, s["checkpoint"])
            index = CutIndex(messages, state, s["covered"], s["lines"], s["inode"], s["tail"], position)
    if index is not None:
        index.messages = list(messages)
    return index


def _fresh(index: CutIndex | None, fd: int) -> CutIndex:
    st = os.fstat(fd)
    if (index is not None and index.inode == st.st_ino and index.covered <= st.st_size
            and index.tail == _tail_crc(fd, index.covered)):
        return index
    return CutIndex([], CountState(), 0, 0, st.st_ino, _tail_crc(fd, 0), 0)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


# The indexes last used, kept parsed while their file is unchanged: a fork then costs a
# stat of the index, a look at the log's end and a list lookup, whatever the log's size.
_CACHE_SIZE = 64
_Stamp = tuple[int, int, int] | None  # (inode, mtime ns, size) of the index file, None when absent
_cache: OrderedDict[str, tuple[_Stamp, CutIndex]] = OrderedDict()


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _cached_load(path: Path) -> CutIndex | None:
    stamp = _stamp(path)
    with _locks_guard:
        hit = _cache.get(str(path))
    if hit is not None and hit[0] == stamp and stamp is not None:
        return hit[1]
    return _load(path)


def _remember(path: Path, index: CutIndex) -> None:
    stamp = _stamp(path)
    with _locks_guard:
        _cache[str(path)] = (stamp, index)
        _cache.move_to_end(str(path))
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def current(log_path: Path) -> CutIndex:
    """The index of `log_path`, brought up to the log's last complete line (and written
    back, so the next call reads only what comes after). Thread-safe per log."""
    log_path = Path(log_path)
    path = index_path(log_path)
    with _lock(path):
        fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            index = _fresh(_cached_load(path), fd)
            rebuilt = index.covered == 0
            source = iter_lines(log_path, index.covered)
            found, state = count_from(source, index.state, index.lines)
            covered = source.scanned_to if source.scanned_to is not None else index.covered
            if covered == index.covered and not rebuilt:
                _remember(path, index)
                return index
            index.messages.extend(found)
            index.state, index.lines = state, index.lines + source.scanned_lines
            index.covered, index.tail = covered, _tail_crc(fd, covered)
        finally:
            os.close(fd)
        _write(path, index, found, rebuilt)
        _remember(path, index)
        return index


def _write(path: Path, index: CutIndex, found: list[IndexedMessage], rebuilt: bool) -> None:
    records = [orjson.dumps({"m": [m.message.ordinal, m.message.line_index, m.message.offset,
                                   int(m.message.top_level), m.message.sub_session], "c": m.checkpoint})
               for m in (index.messages if rebuilt else found)]
    records.append(orjson.dumps({"s": {
        "v": VERSION, "covered": index.covered, "lines": index.lines, "ordinal": index.state.ordinal,
        "open": list(index.state.open_sub) if index.state.open_sub else None,
        "checkpoint": index.state.checkpoint, "inode": index.inode, "tail": index.tail}}))
    data = b"\n".join(records) + b"\n"
    try:
        if rebuilt:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            index.valid_bytes = len(data)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, index.valid_bytes)  # whatever a crash left after the last `s` line
            os.pwrite(fd, data, index.valid_bytes)
        finally:
            os.close(fd)
        index.valid_bytes += len(data)
    except OSError:
        path.unlink(missing_ok=True)  # an index it cannot keep is rebuilt next time


def find_cut(log_path: Path, k: int, session_id: str, tip: bool = False) -> ForkPoint:
    """`forkpoint.find_fork_point` of the log, answered from its index. `tip`: k may
    also be the number of user messages, a cut after the whole log (an editor's
    session/fork with no message named, SPEC 18)."""
    index = current(log_path)
    if tip and k == index.state.ordinal:
        return ForkPoint(k, index.lines, index.covered, index.state.checkpoint, "")
    found = index.messages[k] if 0 <= k < len(index.messages) else None
    prefill = ""
    if found is not None and found.message.top_level:
        with open(log_path, "rb") as f:
            f.seek(found.message.offset)
            message = parse_message(f.readline())
        prefill = prompt_text((message or {}).get("params"))
    return fork_point_of(found, index.state.ordinal, k, session_id, prefill)

"""The session log file (SPEC 3): whole-line appends with torn-tail repair, a streaming
reader with a fast scan for marked lines, and a byte-exact prefix copy. File I/O only:
what the lines mean is `cairnd.entries`.

A log is `log.ndjson`, one envelope per line. The writer side is `SessionLog`; readers
use `iter_lines`, which never trusts the file: a torn last line is not there, and a
line that is not an envelope is skipped by whoever reads it (`entries.parse_message`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

from cairnd.state.durable import fsync_dir, write_all
from cairnd.sessionlog.entries import envelope_frame, envelope_line

_READ_CHUNK = 1 << 20  # bounded memory for readers, whatever the log's size
_COPY_CHUNK = 1 << 24


def iter_lines(path: Path | str, start: int = 0) -> LogLines:
    """Every complete line of the file from byte `start` (a line boundary), as
    `(offset, line)` with the line's `\\n`. A last line without `\\n` was cut by a crash
    and is not yielded. Memory is bounded by the read buffer and the longest line.

    The iterator it returns can also hand out only the lines holding some rare byte
    strings (`LogLines.marked`), at a fraction of the cost of iterating every line."""
    return LogLines(path, start)


def _read_lines(path: Path | str, start: int) -> Generator[tuple[int, bytes], None, None]:
    with open(path, "rb", buffering=_READ_CHUNK) as f:
        if start:
            f.seek(start)
        offset = start
        # The buffered reader's C readline is several times faster than splitting in
        # Python, and finds the torn tail for free (its last line lacks "\n").
        for line in f:
            if line[-1:] != b"\n":
                return
            yield offset, line
            offset += len(line)


class LogLines(Iterator[tuple[int, bytes]]):
    """The complete lines of a log from byte `start`, as `(offset, line)` pairs (what
    `iter_lines` returns).

    Besides plain iteration, `marked` yields only the lines that hold one of a few
    byte strings, without handing every line to Python: a fork of a gigabyte log
    needs a few thousand of its million lines. Once iteration has begun, `marked` and
    `lines_from` still read the file from the start they are given, not from where
    iteration stopped (`started` tells).
    """

    def __init__(self, path: Path | str, start: int = 0) -> None:
        self.path = path
        self.start = start
        self._lines: Generator[tuple[int, bytes], None, None] | None = None
        self.scanned_to: int | None = None  # set by a marked() scan run to its end
        self.scanned_lines = 0

    @property
    def started(self) -> bool:
        """Whether plain iteration has begun (then `marked` would not follow on)."""
        return self._lines is not None

    def __iter__(self) -> LogLines:
        return self

    def __next__(self) -> tuple[int, bytes]:
        if self._lines is None:
            self._lines = _read_lines(self.path, self.start)
        return next(self._lines)

    def close(self) -> None:
        """Release the file now rather than when the iterator is collected."""
        if self._lines is not None:
            self._lines.close()

    def lines_from(self, offset: int) -> Generator[tuple[int, bytes], None, None]:
        """A fresh iteration of the complete lines from `offset` (a line boundary)."""
        return _read_lines(self.path, offset)

    def marked(self, marks: Sequence[bytes]) -> Iterator[tuple[int, int, bytes]]:
        """`(line_index, offset, line)` of every complete line from `start` that holds
        any of `marks` (none of which may contain `\\n`), in file order; `line_index`
        counts the lines from `start`, as `enumerate` over this iterator would.

        The file is read in cache-sized chunks (in two threads on big files); each
        chunk is searched for every mark and its newlines are counted, so Python only
        sees the lines that hold a mark. Lines appended while it runs are not read.
        Once it has run to the end, `scanned_to` is the offset it read up to (the end
        of the last complete line) and `scanned_lines` the lines it counted.
        """
        if any(b"\n" in mark or not mark for mark in marks):
            raise ValueError("marks must be non-empty and hold no newline")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            end = max(self.start, _complete_length(fd, os.fstat(fd).st_size))
            lines_before = 0  # complete lines between `start` and the current chunk
            passed = self.start  # every line before this offset was yielded or has no mark
            with closing(_scan_chunks(fd, self.start, end, tuple(marks))) as chunks:
                for newlines, hits in chunks:
                    for hit, newlines_before in hits:
                        if hit < passed:
                            continue  # another mark of a line already yielded
                        found = _line_around(fd, hit, self.start, end)
                        if found is None:
                            return  # the torn tail: not written yet
                        offset, line = found
                        yield lines_before + newlines_before, offset, line
                        passed = offset + len(line)
                    lines_before += newlines
            self.scanned_to, self.scanned_lines = end, lines_before
        finally:
            os.close(fd)


# Chunks of the marked-line scan: small enough that the several passes over one
# (a search per mark, a newline count) run in a core's L2 cache, big enough that
# Python's overhead per chunk is noise.
_SCAN_CHUNK = 1 << 20
_SCAN_THREADS = min(2, os.cpu_count() or 1)
_SCAN_AHEAD = 4  # chunks in flight: bounds the memory of a threaded scan
_SCAN_PARALLEL_MIN = 16  # fewer chunks than this are scanned inline
_COUNT_PIECE = 1 << 16


def _load_memmem() -> Any:
    """libc's memmem through ctypes, or None where there is none.

    On the short, fixed needles of a log scan it runs about three times as fast as
    `bytes.find`, and like every ctypes call it releases the GIL, so two threads
    search two chunks at once."""
    try:
        memmem = ctypes.CDLL(None).memmem
    except (OSError, AttributeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return memmem


_MEMMEM = _load_memmem()


class _ChunkBuffers(threading.local):
    """One read buffer per thread of one scan, reused from chunk to chunk and freed
    with the scan (the daemon's worker threads live long: they keep nothing)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.address = 0

    def at_least(self, size: int) -> tuple[bytearray, int]:
        if len(self.data) < size:
            self.data = bytearray(size)
            # Never resized afterwards, so the address stays valid for memmem.
            self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.data))
        return self.data, self.address


def _count_newlines(data: bytearray, begin: int, end: int) -> int:
    # bytes.replace finds newlines with memchr: several times as fast as bytes.count,
    # whose byte loop is not vectorised. In pieces, because copies of half a megabyte
    # made and freed in turn make malloc hand pages back to the kernel and fault them
    # in again, which costs more than the counting.
    count = 0
    for piece in range(begin, end, _COUNT_PIECE):
        stop = min(end, piece + _COUNT_PIECE)
        count += (stop - piece) - len(data[piece:stop].replace(b"\n", b""))
    return count


def _scan_chunk(fd: int, begin: int, end: int, marks: tuple[bytes, ...],
                buffers: _ChunkBuffers) -> tuple[int, list[tuple[int, int]]]:
    """The newlines in bytes [begin, end) of `fd`, and every mark occurrence starting
    there (the first of each line) as `(offset, newlines in [begin, offset))`."""
    # A mark that starts in this chunk may end in the next one: read that far.
    reach = end - begin + max(len(mark) for mark in marks) - 1
    data, address = buffers.at_least(reach)
    view = memoryview(data)
    got = 0
    while got < reach:
        n = os.preadv(fd, [view[got:reach]], begin + got)
        if n == 0:
            break
        got += n
    size = min(got, end - begin)
    starts: list[int] = []
    for mark in marks:
        pos = 0
        while pos < size:
            if _MEMMEM is not None:
                found = _MEMMEM(address + pos, got - pos, mark, len(mark))
                hit = found - address if found else -1
            else:
                hit = data.find(mark, pos, got)
            if hit < 0 or hit >= size:
                break
            starts.append(hit)
            line_end = data.find(b"\n", hit, got)  # more of this mark in the line add nothing
            if line_end < 0:
                break
            pos = line_end + 1
    starts.sort()
    hits: list[tuple[int, int]] = []
    counted = newlines = 0
    for hit in starts:
        newlines += _count_newlines(data, counted, hit)
        counted = hit
        hits.append((begin + hit, newlines))
    newlines += _count_newlines(data, counted, size)
    return newlines, hits


def _scan_chunks(fd: int, start: int, end: int, marks: tuple[bytes, ...]) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """`_scan_chunk` over [start, end) in order, two chunks at a time on big files."""
    spans = [(begin, min(begin + _SCAN_CHUNK, end)) for begin in range(start, end, _SCAN_CHUNK)]
    buffers = _ChunkBuffers()
    if len(spans) < _SCAN_PARALLEL_MIN or _SCAN_THREADS < 2 or _MEMMEM is None:
        for begin, stop in spans:
            yield _scan_chunk(fd, begin, stop, marks, buffers)
        return
    # Closing this generator waits for the chunks being read, so `fd` outlives them.
    with ThreadPoolExecutor(_SCAN_THREADS, thread_name_prefix="cairnd-scan") as pool:
        pending: deque[Future[tuple[int, list[tuple[int, int]]]]] = deque()
        todo = iter(spans)
        try:
            for begin, stop in islice(todo, _SCAN_AHEAD):
                pending.append(pool.submit(_scan_chunk, fd, begin, stop, marks, buffers))
            while pending:
                done = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(_scan_chunk, fd, *following, marks, buffers))
                yield done
        finally:
            for future in pending:
                future.cancel()


def _line_around(fd: int, pos: int, start: int, end: int) -> tuple[int, bytes] | None:
    """The complete line of `fd` holding byte `pos` as `(offset, line)`, looking no
    earlier than `start` (a line boundary) and no later than `end`; None when the
    line has no `\\n` before `end` (a torn tail)."""
    block = 4096
    line_start = start
    scan_end = pos
    while scan_end > start:
        scan_begin = max(start, scan_end - block)
        newline = os.pread(fd, scan_end - scan_begin, scan_begin).rfind(b"\n")
        if newline >= 0:
            line_start = scan_begin + newline + 1
            break
        scan_end = scan_begin
        block *= 2
    parts = [os.pread(fd, pos - line_start, line_start)] if pos > line_start else []
    block = 4096
    at = pos
    while at < end:
        piece = os.pread(fd, min(block, end - at), at)
        if not piece:
            return None
        newline = piece.find(b"\n")
        if newline >= 0:
            parts.append(piece[: newline + 1])
            return line_start, b"".join(parts)
        parts.append(piece)
        at += len(piece)
        block *= 2
    return None


def _complete_length(fd: int, size: int) -> int:
    """Bytes up to and including the last `\\n` of the first `size` bytes of `fd`."""
    end = size
    while end > 0:
        begin = max(0, end - _READ_CHUNK)
        block = os.pread(fd, end - begin, begin)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


class SessionLog:
    """The one writer of a session log: opens it for appending (creating it and its
    directories), cuts a torn last line away, then appends whole lines only.

    Each append is one `os.write` of the whole line (looping only on a short write), so
    a reader sees complete lines or a torn tail that the next open repairs. Not
    thread-safe: one writer per session, calls in order.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd: int | None = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            self._size = os.fstat(self._fd).st_size
            complete = _complete_length(self._fd, self._size)
            if complete != self._size:
                os.ftruncate(self._fd, complete)
                os.fsync(self._fd)
                self._size = complete
            if created:
                fsync_dir(self.path.parent)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    @property
    def size(self) -> int:
        """Bytes of complete lines in the log (the offset the next line will have)."""
        return self._size

    def append(self, message: dict[str, Any], timestamp: str | None = None) -> None:
        """Append `message`, an entry of cairnd's own, in a fresh envelope."""
        self.append_line(envelope_line(message, timestamp))

    def append_raw(self, raw: bytes, timestamp: str | None = None, *, sender: str) -> dict[str, Any] | None:
        """Append a wire frame verbatim, under who sent it (`agent` or `client`); returns
        it parsed, or None (see `envelope_frame`), for the caller to act on."""
        line, parsed = envelope_frame(raw, timestamp, sender=sender)
        self.append_line(line)
        return parsed

    def append_line(self, line: bytes) -> None:
        """Append one complete line: it must end with its only `\\n`."""
        if not line.endswith(b"\n") or line.find(b"\n") != len(line) - 1:
            raise ValueError("a log line must be exactly one line ending with \\n")
        fd = self._require_open()
        try:
            write_all(fd, line)
        except BaseException:
            # A failed write (disk full...) may have left part of the line: cut it now
            # rather than leave a torn line in the middle of the log.
            os.ftruncate(fd, self._size)
            raise
        self._size += len(line)

    def append_entries(self, messages: list[dict[str, Any]]) -> None:
        """Append several entries in one write, so a crash keeps all of them or none
        (a turn_complete without its checkpoint would record a turn whose state is lost)."""
        data = b"".join(envelope_line(message) for message in messages)
        fd = self._require_open()
        try:
            write_all(fd, data)
        except BaseException:
            os.ftruncate(fd, self._size)
            raise
        self._size += len(data)

    def sync(self) -> None:
        """Make every appended line durable."""
        os.fsync(self._require_open())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"session log {self.path} is closed")
        return self._fd

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# Errors after which a faster copy call is given up for the next one down the ladder
# (another filesystem, an O_APPEND target, an old kernel, a sandbox that forbids it).
_COPY_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}
)


def copy_prefix(src: Path | str, dst: int | Path | str, length: int) -> None:
    """Copy the first `length` bytes of `src` to `dst` byte for byte.

    `dst` is an open file descriptor (written at its current position) or a path
    (created or truncated). Uses the kernel's copy (copy_file_range, then sendfile)
    and falls back to read/write. Raises ValueError when `src` is shorter than `length`.
    """
    if length < 0:
        raise ValueError(f"cannot copy a negative length ({length})")
    if isinstance(dst, int):
        _copy_fd_prefix(src, dst, length)
        return
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _copy_fd_prefix(src, dst_fd, length)
    finally:
        os.close(dst_fd)


def _copy_fd_prefix(src: Path | str, dst_fd: int, length: int) -> None:
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        if size < length:
            raise ValueError(f"{src} has {size} bytes, fewer than the {length} to copy")
        done = 0
        for method in (_copy_range, _copy_sendfile, _copy_readwrite):
            try:
                done = method(src_fd, dst_fd, done, length)
                break
            except _PartialCopy as partial:
                done = partial.done
        if done < length:
            raise ValueError(f"{src} ended after {done} bytes, {length} to copy")
    finally:
        os.close(src_fd)


class _PartialCopy(Exception):
    """A copy method gave up after `done` bytes; the next one carries on from there."""

    def __init__(self, done: int) -> None:
        super().__init__(done)
        self.done = done


def _copy_range(src_fd: int, dst_fd: int, done: int, length: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise _PartialCopy(done)
    while done < length:
        try:
            n = os.copy_file_range(
                src_fd, dst_fd, min(length - done, _COPY_CHUNK), offset_src=done
            )
        except OSError as e:
            if e.errno in _COPY_UNSUPPORTED:
                raise _PartialCopy(done) from e
            raise
        if n == 0:
            # Some filesystems report 0 instead of an error: let the next method try.
            raise _PartialCopy(done)
        done += n
    return done


def _copy_sendfile(src_fd: int, dst_fd: int, done: int, length: int) -> int:
    while done < length:
        try:
            n = os.sendfile(dst_fd, src_fd, done, min(length - done, _COPY_CHUNK))
        except OSError as e:
            if e.errno in _COPY_UNSUPPORTED:
                raise _PartialCopy(done) from e
            raise
        if n == 0:
            raise _PartialCopy(done)
        done += n
    return done


def _copy_readwrite(src_fd: int, dst_fd: int, done: int, length: int) -> int:
    while done < length:
        block = os.pread(src_fd, min(length - done, _READ_CHUNK), done)
        if not block:
            break
        write_all(dst_fd, block)
        done += len(block)
    return done


def log_mark(path: Path) -> tuple[int, int]:
    """(inode, size) of a log: another writer's append or a rewind's rename changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_size)

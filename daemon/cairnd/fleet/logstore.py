"""The log mirror: every session log in an S3-compatible object store (SPEC 17).

Layout, under the store's prefix:

    logs/<session>/<gen>/<offset>   one part: the log's bytes [offset, offset + size),
                                    whole lines only; <gen> is 6 and <offset> 16 digits

A reader lists `logs/<session>/`, takes the highest generation, sorts its parts by
offset and concatenates: they tile the log from 0 with no gap and no overlap, so the
result is the log byte for byte (`rebuild`). A new generation begins when the log
file is replaced whole (a rewind, SPEC 13): it is uploaded again from 0. Every part is written create-only (`If-None-Match: *`): a part is never
replaced, so two hosts that both believe they own a session cannot overwrite each
other; the second finds the part taken (`StoreConflict`) and knows it lost the lease.

Speaks plain S3 through obstore (object_store, the Rust crate behind Arrow/DataFusion):
conditional puts built in, one small wheel with no botocore, credentials from
`fleet.store_credentials` or the usual AWS_* variables, so production may be AWS S3, R2, Ceph, MinIO or SeaweedFS.
Its blocking calls run in worker threads: its own async calls leave a Tokio runtime
that aborts the interpreter at exit (SIGABRT), which a daemon cannot have.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import anyio
import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import S3Store

from cairnd.errors import CairnError
from cairnd.config.fleet import FleetConfig

OFFSET_DIGITS = 16
# One part at most this big: a log that grew by more while the store was away is
# caught up in several parts, each of whole lines.
MAX_PART_BYTES = 8 * 1024 * 1024


class StoreConflict(CairnError):
    """A part at this offset already holds other bytes: another host wrote this log."""

    def __init__(self, message: str) -> None:
        super().__init__("fleet_conflict", message)


GEN_DIGITS = 6


def part_key(session_id: str, offset: int, gen: int = 0) -> str:
    return f"logs/{session_id}/{gen:0{GEN_DIGITS}d}/{offset:0{OFFSET_DIGITS}d}"


def parse_part_key(key: str) -> tuple[str, int, int] | None:
    """`logs/<session>/<gen>/<offset>` (without the store prefix) -> (session, gen, offset)."""
    parts = key.split("/")
    if (len(parts) != 4 or parts[0] != "logs" or len(parts[2]) != GEN_DIGITS or not parts[2].isdigit()
            or len(parts[3]) != OFFSET_DIGITS or not parts[3].isdigit()):
        return None
    return parts[1], int(parts[2]), int(parts[3])


def whole_lines(data: bytes, limit: int = MAX_PART_BYTES) -> bytes:
    """The longest prefix of `data` that ends with a newline and is at most `limit`
    bytes (or the first whole line, if one line alone is longer)."""
    end = data.rfind(b"\n", 0, limit)
    if end < 0:
        end = data.find(b"\n")
        if end < 0:
            return b""
    return data[: end + 1]


def tile(parts: list[tuple[int, int]]) -> int:
    """The end of the log that sorted (offset, size) parts tile from 0, or ValueError
    naming the gap or overlap."""
    end = 0
    for offset, size in parts:
        if offset != end:
            raise ValueError(f"part at {offset} does not follow the bytes up to {end}")
        end = offset + size
    return end


def make_store(fleet: FleetConfig) -> S3Store:
    keys = fleet.store_keys
    region = (fleet.store_region or (keys.region if keys else None) or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    # obstore retries a failed call for up to 3 minutes by default: too long to hold a
    # turn's result; cairnd retries on its own, up to fleet.wait_seconds.
    kwargs: dict = {"region": region, "retry_config": {
        "max_retries": 3, "retry_timeout": timedelta(seconds=10),
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2}}}
    if fleet.store_endpoint:
        kwargs["endpoint"] = fleet.store_endpoint
        kwargs["virtual_hosted_style_request"] = False
        if fleet.store_endpoint.startswith("http://"):
            kwargs["client_options"] = {"allow_http": True, "timeout": "30s", "connect_timeout": "5s"}
    if keys is not None:  # fleet.store_credentials: the file's keys, not the environment's
        kwargs["access_key_id"], kwargs["secret_access_key"] = keys.access_key_id, keys.secret_access_key
        if keys.session_token:
            kwargs["session_token"] = keys.session_token
    # Else obstore reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN ... itself.
    return S3Store(fleet.bucket, prefix=fleet.prefix or None, **kwargs)


class LogStore:
    """The session logs in the object store. `mirror` is called by the owner of a
    session; `rebuild` by anyone."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        # session -> (generation, bytes known to be in the store, inode of the local log)
        self._mirrored: dict[str, tuple[int, int, int]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def _lock(self, session_id: str) -> anyio.Lock:
        return self._locks.setdefault(session_id, anyio.Lock())

    async def generation(self, session_id: str) -> tuple[int, list[tuple[int, int]]]:
        """The newest generation of the stored log and its sorted (offset, size) parts."""
        def listing() -> tuple[int, list[tuple[int, int]]]:
            found: dict[int, list[tuple[int, int]]] = {}
            for batch in obstore.list(self.store, prefix=f"logs/{session_id}/"):
                for meta in batch:
                    parsed = parse_part_key(meta["path"])
                    if parsed is not None and parsed[0] == session_id:
                        found.setdefault(parsed[1], []).append((parsed[2], int(meta["size"])))
            if not found:
                return 0, []
            gen = max(found)
            return gen, sorted(found[gen])
        return await anyio.to_thread.run_sync(listing)

    async def parts(self, session_id: str) -> list[tuple[int, int]]:
        return (await self.generation(session_id))[1]

    async def _get(self, key: str) -> bytes:
        return await anyio.to_thread.run_sync(lambda: bytes(obstore.get(self.store, key).bytes()))

    async def _create(self, key: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(lambda: obstore.put(self.store, key, data, mode="create"))

    async def stored_size(self, session_id: str) -> tuple[int, int]:
        """(generation, size) of the stored log."""
        gen, parts = await self.generation(session_id)
        try:
            return gen, tile(parts)
        except ValueError as exc:
            raise CairnError("internal", f"the stored log of session {session_id} is broken: {exc}") from None

    async def rebuild(self, session_id: str) -> bytes:
        """The whole stored log, byte for byte."""
        gen, parts = await self.generation(session_id)
        try:
            tile(parts)
        except ValueError as exc:
            raise CairnError("internal", f"the stored log of session {session_id} is broken: {exc}") from None
        return b"".join([await self._get(part_key(session_id, offset, gen)) for offset, _size in parts])

    async def exists(self, session_id: str) -> bool:
        return bool(await self.parts(session_id))

    def forget(self, session_id: str) -> None:
        """Drop what this host believed about a log (after losing or taking it over)."""
        self._mirrored.pop(session_id, None)

    def mirrored(self, session_id: str) -> int | None:
        state = self._mirrored.get(session_id)
        return state[1] if state is not None else None

    async def mirror(self, session_id: str, log_path: Path) -> int:
        """Upload the whole lines of `log_path` not yet in the store; returns the bytes
        now mirrored. Raises StoreConflict when another host wrote this log, and the
        store's own errors when it is unreachable (the caller retries)."""
        async with self._lock(session_id):
            inode = _inode(log_path)
            state = self._mirrored.get(session_id)
            if state is None:
                gen, done = await self.stored_size(session_id)
            else:
                gen, done, known = state
                if known and inode and inode != known:
                    # The log was replaced whole (a rewind): a new generation, from 0.
                    gen, done = gen + 1, 0
            self._mirrored[session_id] = (gen, done, inode)
            while True:
                data = await anyio.to_thread.run_sync(_read_from, log_path, done, MAX_PART_BYTES)
                if done and data is None:
                    raise StoreConflict(f"the local log of session {session_id} is shorter than the "
                                        f"{done} bytes already in the store")
                part = whole_lines(data or b"")
                if not part:
                    return done
                try:
                    await self._create(part_key(session_id, done, gen), part)
                except AlreadyExistsError:
                    if await self._get(part_key(session_id, done, gen)) != part:
                        raise StoreConflict(f"the store already holds other bytes of session {session_id} "
                                            f"at offset {done}: another host owns it") from None
                done += len(part)
                self._mirrored[session_id] = (gen, done, inode)


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def _read_from(path: Path, offset: int, limit: int) -> bytes | None:
    """Up to `limit` + one line's worth of bytes from `offset`; None when the file is
    shorter than `offset` (it was replaced)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                return None
            f.seek(offset)
            data = f.read(limit)
            if b"\n" not in data and offset + len(data) < size:
                data += f.read()  # one line longer than a part: it goes whole
            return data
    except FileNotFoundError:
        return None if offset else b""

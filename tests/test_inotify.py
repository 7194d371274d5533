"""The spool's doorbell: an inotify descriptor that rings on rename-in and on
close-after-write, and stays silent otherwise (no polling)."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from cairnd import inotify

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux-only")


def rings(watch: inotify.DirectoryWatch, timeout: float) -> bool:
    ready, _, _ = select.select([watch.fd], [], [], timeout)
    watch.drain()
    return bool(ready)


def test_rename_in_and_close_after_write_ring(tmp_path: Path):
    new, tmp = tmp_path / "new", tmp_path / "tmp"
    new.mkdir(), tmp.mkdir()
    with inotify.DirectoryWatch(new) as watch:
        assert not rings(watch, 0.05)
        (tmp / "a.json").write_text("{}")
        assert not rings(watch, 0.05)  # nothing in new/ yet
        os.rename(tmp / "a.json", new / "a.json")
        assert rings(watch, 5)
        (new / "b.json").write_text("{}")
        assert rings(watch, 5)
        assert not rings(watch, 0.05)  # drained: silent again


def test_a_missing_directory_is_an_os_error(tmp_path: Path):
    with pytest.raises(OSError):
        inotify.DirectoryWatch(tmp_path / "missing")

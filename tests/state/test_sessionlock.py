"""One writer per session (state/sessionlock): the lock another process holds is
refused with session_busy naming its pid, seen by recovery, and gone with the process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cairnd.errors import CairnError
from cairnd.state.layout import StateLayout
from cairnd.state.sessionlock import SessionLocks, held_elsewhere

HOLDER = """
import sys, time
from pathlib import Path
from cairnd.state.layout import StateLayout
from cairnd.state.sessionlock import SessionLocks
SessionLocks(StateLayout(Path(sys.argv[1]))).claim(sys.argv[2])
print("held", flush=True)
time.sleep(60)
"""


def test_a_session_held_by_another_process_is_busy_until_it_exits(tmp_path):
    layout = StateLayout(tmp_path)
    layout.session_dir("s1").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "s1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert held_elsewhere(layout, "s1") and not held_elsewhere(layout, "s2")
        mine = SessionLocks(layout)
        with pytest.raises(CairnError) as busy:
            mine.claim("s1")
        assert busy.value.code == "session_busy" and f"pid {holder.pid}" in busy.value.message
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while held_elsewhere(layout, "s1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not held_elsewhere(layout, "s1")
    mine.claim("s1")  # the lock died with its process
    assert mine.holds("s1")
    mine.claim("s1")  # taking it again is a no-op
    mine.release("s1")
    assert not mine.holds("s1")


def test_a_lock_whose_pid_the_full_disk_refuses_is_held_and_let_go_all_the_same(tmp_path):
    disk = tmp_path / "state"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        layout = StateLayout(disk)
        layout.session_dir("s1").mkdir(parents=True)
        with open(disk / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        mine = SessionLocks(layout)
        mine.claim("s1")  # the lock file is created, but its pid finds no room
        assert mine.holds("s1")
        mine.release("s1")
        mine.claim("s1")  # it was let go, not kept by a file descriptor nobody knew of
        mine.release("s1")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)

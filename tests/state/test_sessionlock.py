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

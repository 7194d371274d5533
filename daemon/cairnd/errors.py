"""The one error type of cairnd: a code (as written in result files) and a message."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Below this many free bytes, an unexpected failure is put down to a full disk.
FULL_DISK_BYTES = 1024 * 1024

# Every code a result file may carry (SPEC section 7).
CODES: frozenset[str] = frozenset(
    {
        "bad_json",
        "bad_request",
        "bad_name",
        "too_large",
        "not_a_file",
        "duplicate_id",
        "unknown_session",
        "session_deleted",
        "fork_out_of_range",
        "fork_in_sub_session",
        "repo_not_found",
        "not_a_git_repo",
        "bad_ref",
        "commit_missing",
        "agent_unknown",
        "agent_failed",
        "turn_interrupted",
        "session_busy",  # another process writes the session now (SPEC 18: cairnd acp, a daemon)
        "branch_exists",
        "branch_checked_out",
        "git_failed",
        "internal",
        # the fleet (SPEC 17)
        "fleet_unavailable",        # NATS unreachable past fleet.wait_seconds
        "store_unavailable",        # the object store unreachable past fleet.wait_seconds
        "checkpoints_unavailable",  # the checkpoint repository unreachable
        "checkpoint_conflict",      # a checkpoint ref there already holds another commit
        "fleet_conflict",           # another host owns the session (its log in the store moved on)
    }
)


class CairnError(Exception):
    """A failure a user can act on: `code` goes into the result file, `message` says
    what was wrong with which value."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def internal_error_text(exc: BaseException, state_dir: Path) -> str:
    """An unexpected failure in words, for an `internal` result: SQLite and git say only
    "disk I/O error" when the state directory's disk is full, so say that too when it is.
    A write the disk refused (ENOSPC) says it too, though room may have been made since."""
    text = f"{type(exc).__name__}: {exc}"
    try:
        st = os.statvfs(state_dir)
        free: int | None = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < FULL_DISK_BYTES:
        text += f" (the disk holding {state_dir} is full: {free} bytes free)"
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        text += " (the disk it was written to is full)"
    return text

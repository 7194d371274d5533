"""What cairnd answers an agent (SPEC 9): `fs/*` confined to the session worktree,
permission requests chosen by the profile's policy, no terminals, no elicitation.

`WorktreeClient` is the `acp.Client` the SDK calls; the rules it applies (`confine`,
`select_lines`, `choose_permission_option`) are pure functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import acp
import anyio
from acp.schema import (
    AllowedOutcome,
    DeniedOutcome,
    PermissionOption,
    ReadTextFileResponse,
    RequestPermissionResponse,
    WriteTextFileResponse,
)

from cairnd.state.privacy import write_user_file

# Permission policies (config `permission`) -> the option kinds to pick, best first.
# A reject policy never escalates to an allow option: with none to reject, it cancels.
PERMISSION_PREFERENCES: dict[str, tuple[str, ...]] = {
    "allow_once": ("allow_once", "allow_always", "reject_once", "reject_always"),
    "reject_once": ("reject_once", "reject_always"),
}


def choose_permission_option(options: Sequence[tuple[str, str]], policy: str) -> str | None:
    """`(option_id, kind)` pairs offered by the agent -> the option id the policy picks,
    or None to answer `cancelled` (nothing offered, or nothing the policy may pick)."""
    for kind in PERMISSION_PREFERENCES[policy]:
        for option_id, option_kind in options:
            if option_kind == kind:
                return option_id
    return None


class PathRefused(Exception):
    """A path an agent named lies outside the session worktree."""


def confine(worktree: Path, path: str) -> Path:
    """The real location `path` names, if it lies inside `worktree` (strictly: not the
    worktree itself); relative paths are taken from the worktree. Symlinks and `..` are
    resolved before judging, so neither can lead out. Raises PathRefused."""
    root = Path(os.path.realpath(worktree))
    try:
        real = Path(os.path.realpath(root / path))  # an absolute `path` replaces `root`
    except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
        raise PathRefused(f"{path!r} is not a usable path: {exc}") from None
    if root not in real.parents:
        raise PathRefused(f"{path!r} is outside the session worktree {str(root)!r}")
    return real


def select_lines(text: str, line: int | None, limit: int | None) -> str:
    """ACP's `fs/read_text_file` window: from 1-based `line`, at most `limit` lines."""
    if line is None and limit is None:
        return text
    start = max((line or 1) - 1, 0)
    lines = text.splitlines(keepends=True)
    return "".join(lines[start:None if limit is None else start + limit])


class WorktreeClient:
    """What cairnd answers an agent: `fs/*` confined to the worktree, permission
    requests per the profile's policy, no terminals. Session updates never reach it:
    the tap logs them and keeps them from the SDK (see `cairnd.tap.Tap.incoming`)."""

    def __init__(self, worktree: Path, permission: str, limiter: anyio.CapacityLimiter | None) -> None:
        self.worktree = worktree
        self.permission = permission
        self.limiter = limiter

    def on_connect(self, conn: acp.Agent) -> None:
        return None

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        return None

    async def request_permission(self, session_id: str, tool_call: Any, options: list[PermissionOption],
                                 **kwargs: Any) -> RequestPermissionResponse:
        chosen = choose_permission_option([(o.option_id, o.kind) for o in options], self.permission)
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=chosen))

    async def read_text_file(self, session_id: str, path: str, line: int | None = None, limit: int | None = None,
                             **kwargs: Any) -> ReadTextFileResponse:
        real = self._confine(path)
        try:
            text = await anyio.to_thread.run_sync(_read_text, real, limiter=self.limiter)
        except FileNotFoundError:
            raise acp.RequestError.resource_not_found(path) from None
        except OSError as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": exc.strerror or str(exc)}) from None
        return ReadTextFileResponse(content=select_lines(text, line, limit))

    async def write_text_file(self, session_id: str, path: str, content: str,
                              **kwargs: Any) -> WriteTextFileResponse:
        real = self._confine(path)
        try:
            await anyio.to_thread.run_sync(_write_text, real, content, limiter=self.limiter)
        except OSError as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": exc.strerror or str(exc)}) from None
        return WriteTextFileResponse()

    def _confine(self, path: str) -> Path:
        try:
            return confine(self.worktree, path)
        except PathRefused as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": str(exc)}) from None

    # Terminals are not offered (SPEC 9); without these the SDK would answer `null`.
    async def create_terminal(self, session_id: str, command: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/create")

    async def terminal_output(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/output")

    async def release_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/release")

    async def wait_for_terminal_exit(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/wait_for_exit")

    async def kill_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/kill")

    # Nobody is there to answer an elicitation, and cairnd has no extensions of its own
    # for agents to call: the answers the SDK gives when a client lacks these.
    async def create_elicitation(self, message: str, mode: Any, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("elicitation/create")

    async def complete_elicitation(self, elicitation_id: str, **kwargs: Any) -> None:
        return None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise acp.RequestError.method_not_found(f"_{method}")

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None


def _read_text(real: Path) -> str:
    with open(real, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def _write_text(real: Path, content: str) -> None:
    write_user_file(real, content.encode("utf-8"))  # with the user's modes, not the state dir's

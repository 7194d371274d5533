"""Request files (SPEC section 7): bytes in, a typed request out, or a CairnError.

Pure: no I/O. The spool hands over a request's bytes (or the problem it already found
with the file); `admit` is the one step from there to what the daemon schedules, and
everything a writer can get wrong is named here, with the value that was wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Union

import orjson

from cairnd.errors import CairnError
from cairnd.ids import SESSION_ID_RE, is_session_id

MAX_TEXT_CHARS = 512 * 1024
MAX_TITLE_CHARS = 200
MAX_PATH_CHARS = 4096
MAX_TRIES = 16  # forks one request may make at one cut (SPEC 19)
MAX_COMMAND_ARGS = 1024
MAX_CHECK_SECONDS = 86_400.0
DEFAULT_CHECK_SECONDS = 600.0


@dataclass(frozen=True)
class NewRequest:
    repo: str
    ref: str = "HEAD"
    title: str | None = None
    agent: str | None = None
    in_place: bool = False
    prompt: str | None = None
    kind: str = "new"


@dataclass(frozen=True)
class PromptRequest:
    session: str
    text: str
    kind: str = "prompt"


@dataclass(frozen=True)
class ForkRequest:
    session: str
    user_message_index: int
    title: str | None = None
    prompt: str | None = None
    # Attempts (SPEC 19): `count` forks, or one per prompt, per agent, or per pair.
    count: int | None = None
    prompts: tuple[str, ...] | None = None
    agents: tuple[str, ...] | None = None
    check: tuple[str, ...] | None = None  # run after each fork's first turn
    kind: str = "fork"

    @property
    def tries(self) -> int | None:
        """How many forks this request makes as attempts (its result lists `sessions`);
        None for a single fork (its result is that fork's)."""
        if self.count is not None:
            return self.count
        return len(self.prompts or self.agents or ()) or None


@dataclass(frozen=True)
class CheckRequest:
    session: str
    command: tuple[str, ...]
    timeout: float = DEFAULT_CHECK_SECONDS
    kind: str = "check"


@dataclass(frozen=True)
class RewindRequest:
    session: str
    user_message_index: int
    prompt: str | None = None
    kind: str = "rewind"


@dataclass(frozen=True)
class LandRequest:
    session: str
    branch: str
    turn: int | None = None
    message: str | None = None
    force: bool = False
    kind: str = "land"


@dataclass(frozen=True)
class CancelRequest:
    session: str
    kind: str = "cancel"


@dataclass(frozen=True)
class DeleteRequest:
    session: str
    keep_worktree: bool = False
    kind: str = "delete"


Request = Union[NewRequest, PromptRequest, ForkRequest, RewindRequest, LandRequest, CancelRequest, DeleteRequest,
                CheckRequest]

# kind -> (class, required fields, optional fields)
_KINDS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    "new": (NewRequest, ("repo",), ("ref", "title", "agent", "in_place", "prompt")),
    "prompt": (PromptRequest, ("session", "text"), ()),
    "fork": (ForkRequest, ("session", "user_message_index"),
             ("title", "prompt", "count", "prompts", "agents", "check")),
    "rewind": (RewindRequest, ("session", "user_message_index"), ("prompt",)),
    "land": (LandRequest, ("session", "branch"), ("turn", "message", "force")),
    "cancel": (CancelRequest, ("session",), ()),
    "delete": (DeleteRequest, ("session",), ("keep_worktree",)),
    "check": (CheckRequest, ("session", "command"), ("timeout",)),
}


def decode_json(data: bytes) -> Any:
    """Parse request bytes. orjson first (fast, strict UTF-8); the standard library only
    to tell a huge integer (valid JSON orjson refuses) from broken JSON. The size cap is
    the spool's: bytes reach here within it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    try:
        value = json.loads(data.decode("utf-8"), parse_int=_parse_int, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CairnError("bad_json", f"request is not UTF-8 (byte {exc.start}); write it as UTF-8 JSON") from None
    except _NotJSON as exc:
        raise CairnError("bad_json", f"request is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        raise CairnError("bad_json", f"request is not valid JSON: {reason}") from None
    try:
        # An escaped lone surrogate (\ud800) is JSON syntax but no text: nothing can write it out again.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CairnError("bad_json", f"request holds an escaped lone surrogate (\\u{ord(exc.object[exc.start]):04x}), "
                                     "which is not text; write UTF-8 JSON") from None
    except RecursionError:
        pass
    return value


class _NotJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # The standard library reads NaN and Infinity; JSON has no such numbers.
    raise _NotJSON(f"{name} is not a JSON number")


def _parse_int(text: str) -> int | float:
    # As orjson does: an integer beyond 64 bits becomes a float (inf past 1e308), so
    # a huge index is out of range rather than a number too long to convert.
    return int(text) if len(text) <= 19 else float(text)


def _describe(value: Any) -> str:
    text = orjson.dumps(value).decode() if _dumpable(value) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dumpable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _string(fields: dict[str, Any], name: str, *, max_chars: int, allow_empty: bool = False) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise CairnError("bad_request", f"{name} must be a string, not {_describe(value)}")
    if not value and not allow_empty:
        raise CairnError("bad_request", f"{name} must not be empty")
    if len(value) > max_chars:
        raise CairnError("bad_request", f"{name} is {len(value)} characters; the limit is {max_chars}")
    if "\x00" in value:
        raise CairnError("bad_request", f"{name} {_describe(value)} contains a NUL character")
    return value


def _boolean(fields: dict[str, Any], name: str) -> bool:
    value = fields[name]
    if not isinstance(value, bool):
        raise CairnError("bad_request", f"{name} must be true or false, not {_describe(value)}")
    return value


def _session_id(fields: dict[str, Any]) -> str:
    value = fields["session"]
    if not is_session_id(value):
        raise CairnError(
            "bad_request", f"session {_describe(value)} is not a session id (pattern {SESSION_ID_RE.pattern})"
        )
    return value


def _index(fields: dict[str, Any], name: str) -> int:
    value = fields[name]
    # orjson reads integers beyond 64 bits as floats: still integers to the writer,
    # and far out of any session's range.
    if isinstance(value, float) and (value.is_integer() or math.isinf(value)) and abs(value) >= 2**63:
        raise CairnError("fork_out_of_range", f"{name} {value:.0f} is out of range")
    # bool is an int in Python and 1.0 is a float: neither is an index.
    if isinstance(value, bool) or not isinstance(value, int):
        raise CairnError("bad_request", f"{name} must be an integer, not {_describe(value)}")
    return value


def _title(fields: dict[str, Any]) -> str | None:
    if "title" not in fields or fields["title"] is None:
        return None
    title = _string(fields, "title", max_chars=MAX_TITLE_CHARS)
    if any(ord(ch) < 32 for ch in title):
        raise CairnError("bad_request", f"title {_describe(title)} contains control characters")
    return title


_GIT_URL = re.compile(r"^(?:(?:ssh|git|https?|file)://[^\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+)$")


def is_git_url(repo: str) -> bool:
    """A git URL (ssh://, git://, http(s)://, file://, or scp-like user@host:path): a
    fleet host clones it under its state directory (SPEC 17)."""
    return bool(_GIT_URL.match(repo))


def validate_request(obj: Any) -> Request:
    """A decoded JSON value in, a typed request out."""
    if not isinstance(obj, dict):
        raise CairnError("bad_request", f"a request is a JSON object with \"kind\", not {_describe(obj)}")
    kind = obj.get("kind")
    if kind not in _KINDS:
        known = ", ".join(_KINDS)
        raise CairnError("bad_request", f"kind {_describe(kind)} is not one of: {known}")
    cls, required, optional = _KINDS[kind]
    fields = {k: v for k, v in obj.items() if k != "kind"}
    unknown = sorted(set(fields) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(("kind", *required, *optional))
        raise CairnError("bad_request", f"unknown field {unknown[0]!r} in a {kind} request (allowed: {allowed})")
    missing = [name for name in required if name not in fields]
    if missing:
        raise CairnError("bad_request", f"a {kind} request needs {missing[0]!r}")

    if kind == "new":
        repo = _string(fields, "repo", max_chars=MAX_PATH_CHARS)
        if not repo.startswith("/") and not is_git_url(repo):
            raise CairnError("bad_request", f"repo {_describe(repo)} must be an absolute path or a git URL")
        ref = _string(fields, "ref", max_chars=1024) if "ref" in fields else "HEAD"
        if ref.startswith("-") or any(ord(ch) < 32 for ch in ref):
            raise CairnError("bad_request", f"ref {_describe(ref)} is not a git revision")
        agent = _string(fields, "agent", max_chars=128) if "agent" in fields else None
        return NewRequest(
            repo=repo, ref=ref, title=_title(fields), agent=agent,
            in_place=_boolean(fields, "in_place") if "in_place" in fields else False,
            prompt=_string(fields, "prompt", max_chars=MAX_TEXT_CHARS) if "prompt" in fields else None,
        )
    session = _session_id(fields)
    if kind == "prompt":
        return PromptRequest(session=session, text=_string(fields, "text", max_chars=MAX_TEXT_CHARS))
    if kind == "fork":
        return _fork(session, fields)
    if kind == "check":
        return CheckRequest(session=session, command=command_of(fields["command"], "command"),
                            timeout=_timeout(fields) if "timeout" in fields else DEFAULT_CHECK_SECONDS)
    if kind == "rewind":
        return RewindRequest(
            session=session, user_message_index=_index(fields, "user_message_index"),
            prompt=_string(fields, "prompt", max_chars=MAX_TEXT_CHARS) if "prompt" in fields else None,
        )
    if kind == "land":
        return _land(session, fields)
    if kind == "cancel":
        return CancelRequest(session=session)
    return DeleteRequest(
        session=session, keep_worktree=_boolean(fields, "keep_worktree") if "keep_worktree" in fields else False
    )


def _fork(session: str, fields: dict[str, Any]) -> ForkRequest:
    index = _index(fields, "user_message_index")
    prompt = _string(fields, "prompt", max_chars=MAX_TEXT_CHARS) if "prompt" in fields else None
    count = None
    if "count" in fields:
        count = fields["count"]
        if isinstance(count, bool) or not isinstance(count, int):
            raise CairnError("bad_request", f"count must be an integer, not {_describe(count)}")
        if not 1 <= count <= MAX_TRIES:
            raise CairnError("bad_request", f"count {count} is out of range: from 1 to {MAX_TRIES} tries")
    prompts = _text_list(fields, "prompts", max_chars=MAX_TEXT_CHARS) if "prompts" in fields else None
    agents = _text_list(fields, "agents", max_chars=128) if "agents" in fields else None
    attempts_fields(count, prompts, agents, has_prompt=prompt is not None)
    return ForkRequest(session=session, user_message_index=index, title=_title(fields), prompt=prompt,
                       count=count, prompts=prompts, agents=agents,
                       check=command_of(fields["check"], "check") if "check" in fields else None)


def attempts_fields(count: int | None, prompts: tuple[str, ...] | None, agents: tuple[str, ...] | None, *,
                    has_prompt: bool) -> None:
    """The rules of SPEC 19 between a fork's `count`, `prompts`, `agents` and `prompt`."""
    if count is not None and (prompts is not None or agents is not None):
        other = "prompts" if prompts is not None else "agents"
        raise CairnError("bad_request", f"count {count} and {other} cannot go together: {other} already says "
                                        f"how many tries (one per entry)")
    if prompts is not None and has_prompt:
        raise CairnError("bad_request", "prompt and prompts cannot go together: give each try's prompt in prompts")
    if prompts is not None and agents is not None and len(prompts) != len(agents):
        raise CairnError("bad_request", f"prompts has {len(prompts)} entries and agents {len(agents)}: "
                                        "as pairs they must be as many")


def _text_list(fields: dict[str, Any], name: str, *, max_chars: int) -> tuple[str, ...]:
    value = fields[name]
    if not isinstance(value, list):
        raise CairnError("bad_request", f"{name} must be a list of strings, not {_describe(value)}")
    if not value:
        raise CairnError("bad_request", f"{name} must not be an empty list")
    if len(value) > MAX_TRIES:
        raise CairnError("bad_request", f"{name} has {len(value)} entries; the limit is {MAX_TRIES} tries")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise CairnError("bad_request", f"{name}[{i}] must be a string, not {_describe(item)}")
        _string({f"{name}[{i}]": item}, f"{name}[{i}]", max_chars=max_chars)
    return tuple(value)


def command_of(value: Any, name: str) -> tuple[str, ...]:
    """A command as an argv: a non-empty list of strings, the first not empty (no shell
    reads it: `["sh", "-c", "..."]` where one is wanted)."""
    if not isinstance(value, list):
        raise CairnError("bad_request", f"{name} must be a list of strings (an argv such as [\"pytest\", \"-q\"]), "
                                        f"not {_describe(value)}")
    if not value:
        raise CairnError("bad_request", f"{name} must not be an empty list: name the program to run")
    if len(value) > MAX_COMMAND_ARGS:
        raise CairnError("bad_request", f"{name} has {len(value)} arguments; the limit is {MAX_COMMAND_ARGS}")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise CairnError("bad_request", f"{name}[{i}] must be a string, not {_describe(arg)}")
        _string({f"{name}[{i}]": arg}, f"{name}[{i}]", max_chars=MAX_TEXT_CHARS, allow_empty=i > 0)
    return tuple(value)


def _timeout(fields: dict[str, Any]) -> float:
    value = fields["timeout"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise CairnError("bad_request", f"timeout must be a number of seconds, not {_describe(value)}")
    if not 0 < value <= MAX_CHECK_SECONDS:
        raise CairnError("bad_request", f"timeout {_describe(value)} is out of range: more than 0 and at most "
                                        f"{MAX_CHECK_SECONDS:.0f} seconds")
    return float(value)


def _land(session: str, fields: dict[str, Any]) -> LandRequest:
    branch = _string(fields, "branch", max_chars=1024)
    if branch.startswith("-") or any(ord(ch) < 32 or ch == "\x7f" for ch in branch):
        raise CairnError("bad_ref", f"branch {_describe(branch)} is not a valid branch name")
    turn = None
    if "turn" in fields:
        value = fields["turn"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise CairnError("bad_request", f"turn must be an integer, not {_describe(value)}")
        if value < 0:
            raise CairnError("bad_request", f"turn {value} is negative: name a turn count (0 is the baseline)")
        turn = value
    message = _string(fields, "message", max_chars=MAX_TEXT_CHARS) if "message" in fields else None
    return LandRequest(session=session, branch=branch, turn=turn, message=message,
                       force=_boolean(fields, "force") if "force" in fields else False)


def round_trips(value: Any) -> bool:
    """Whether orjson writes `value` back as the same JSON value (not so: nesting past
    its depth limit, integers beyond 64 bits)."""
    try:
        return bool(orjson.loads(orjson.dumps(value)) == value)
    except (TypeError, orjson.JSONDecodeError):
        return False


@dataclass(frozen=True)
class Origin:
    """Where a request being run came from, as the sessions need to know it: its id (None
    when its file name was not a valid one) and whether recovery handed it back after a
    stop (then a turn it had begun is answered from the log, never run twice)."""

    request_id: str | None
    recovered: bool = False


@dataclass(frozen=True)
class Admitted:
    """A request as the daemon takes it: either `request` (valid) or `error` (refused),
    with `echo`, the request's JSON to carry in its result (None when it has none that
    can be written back as it was: then the file itself is kept beside the result)."""

    request: Request | None
    error: CairnError | None
    echo: Any
    kind: str | None  # the request's kind, when it names one (a refused request may)


def admit(data: bytes | None, problem: CairnError | None) -> Admitted:
    """The one step from a claimed file to what the daemon schedules: `data` is the
    file's bytes (None when the spool could not read them), `problem` what the spool
    already found wrong (a bad name, a duplicate id, not a file, too large).

    The bytes are decoded even when the request is refused for its name or as a
    duplicate, so its result carries the request's own JSON."""
    decoded: Any = None
    try:
        if data is not None:
            try:
                decoded = decode_json(data)
            except CairnError:
                if problem is None:
                    raise
        if problem is not None:
            raise problem
        request = validate_request(decoded)
    except CairnError as exc:
        kind = decoded.get("kind") if isinstance(decoded, dict) and isinstance(decoded.get("kind"), str) else None
        return Admitted(None, exc, _echo(decoded), kind)
    return Admitted(request, None, _echo(decoded), request.kind)


def _echo(decoded: Any) -> Any:
    return decoded if decoded is not None and round_trips(decoded) else None

"""SPEC 6 and 7 under hostile input: a corpus of bad request files dropped into a real
daemon, in a burst and one by one. Each gets exactly one result with its documented
code and a message naming the bad value; its bytes are kept (in the result's `request`,
or beside it as `<name>.raw`); nothing outside the state directory is touched; names
starting with `.` are left alone; and the daemon still answers a good request after."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemonproc import Daemon
from gitrepos import git_text, make_repo, session_worktrees
from test_crash import eventually

PASSWD = Path("/etc/passwd")


@dataclass(frozen=True)
class Bad:
    """One bad entry in new/: its name (bytes: names need not be UTF-8), how to make it,
    and what its result must say."""

    name: bytes
    code: str
    mentions: str                       # the message names the bad value (or the field)
    content: bytes | None = None        # a regular file with these bytes ...
    make: Callable[[Path], None] | None = None  # ... or an entry made by this
    # "request": the bytes travel in the result (they round-trip exactly as JSON);
    # "raw": they could not, and the entry itself is kept beside it as <name>.raw
    kept: str = "request"
    result_name: bytes | None = None    # when the result takes another name (duplicates)

    @property
    def answer(self) -> bytes:
        return self.result_name or self.name


@dataclass(frozen=True)
class Context:
    session: str        # a live session with no user message yet
    repo: Path
    scratch: Path       # outside the state dir: a place for files the corpus points at
    marker: Path        # must never come to exist (shell injection would create it)
    taken: str          # a request id that already has a result


def js(value: Any) -> bytes:
    return orjson.dumps(value)


def raw_json(text: str) -> bytes:
    return text.encode()


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_dir(path: Path) -> None:
    path.mkdir()
    (path / "inside.json").write_bytes(js({"kind": "cancel", "session": "x"}))


def make_symlink(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def make_socket(path: Path) -> None:
    # AF_UNIX paths are limited to 108 bytes: bind somewhere short, then move it.
    short = Path(f"/tmp/cairnd-sock-{os.getpid()}-{time.monotonic_ns()}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(short))
    os.rename(short, path)


def corpus(ctx: Context) -> list[Bad]:
    s = ctx.session
    cancel = js({"kind": "cancel", "session": "nosuchsession"})
    nested_title = b'{"kind":"new","repo":"/x","title":' + b"[" * 300 + b"]" * 300 + b"}"
    big = js({"kind": "prompt", "session": s, "text": "x" * (2 * 1024 * 1024)})
    a_file = ctx.scratch / "plain-file"
    a_file.write_text("not a repository\n")
    valid_elsewhere = ctx.scratch / "valid.json"
    valid_elsewhere.write_bytes(cancel)
    cases = [
        # -- names: the result takes the entry's own name, with "id": null --------------
        Bad(b"a b.json", "bad_name", "a b.json", cancel),
        Bad(b"a\nb.json", "bad_name", "a\\nb.json", cancel),
        Bad(b"\xff\xfe-latin.json", "bad_name", "latin.json", cancel),
        Bad("caf\u00e9.json".encode(), "bad_name", "caf\u00e9.json", cancel),
        Bad(b"x" * 250 + b".json", "bad_name", "xxxxxxxx", cancel),
        Bad(b"y" * 249 + b".json", "bad_name", "yyyyyyyy", b"not json", kept="raw"),
        Bad(b"a" * 129 + b".json", "bad_name", "a" * 129, cancel),
        Bad(b"-rf.json", "bad_name", "-rf.json", cancel),
        Bad(b"_under.json", "bad_name", "_under.json", cancel),
        Bad(b"request.txt", "bad_name", "request.txt", cancel),
        Bad(b"noextension", "bad_name", "noextension", cancel),
        Bad(b"upper.JSON", "bad_name", "upper.JSON", cancel),
        Bad(b"r.json.tmp", "bad_name", "r.json.tmp", cancel),
        Bad(b"a..b.json", "unknown_session", "nosuchsession", cancel),  # dots are fine in ids
        # -- bytes that are not one JSON object of UTF-8 ---------------------------------
        Bad(b"broken.json", "bad_json", "not valid JSON", b'{"kind": "cancel", "session": ', kept="raw"),
        Bad(b"quotes.json", "bad_json", "not valid JSON", b"{'kind': 'cancel'}", kept="raw"),
        Bad(b"comma.json", "bad_json", "not valid JSON", b'{"kind": "cancel", "session": "s",}', kept="raw"),
        Bad(b"empty.json", "bad_json", "empty", b"", kept="raw"),
        Bad(b"blank.json", "bad_json", "empty", b" \n\t ", kept="raw"),
        Bad(b"utf16.json", "bad_json", "UTF-8", '{"kind": "cancel", "session": "s1"}'.encode("utf-16"), kept="raw"),
        Bad(b"bom.json", "bad_json", "BOM", b"\xef\xbb\xbf" + cancel, kept="raw"),
        Bad(b"latin1.json", "bad_json", "UTF-8", b'{"kind": "cancel", "session": "caf\xe9"}', kept="raw"),
        Bad(b"nan.json", "bad_json", "NaN", raw_json(f'{{"kind":"fork","session":"{s}","user_message_index":NaN}}'),
            kept="raw"),
        Bad(b"inf.json", "bad_json", "Infinity",
            raw_json(f'{{"kind":"fork","session":"{s}","user_message_index":-Infinity}}'), kept="raw"),
        Bad(b"surrogate.json", "bad_json", "surrogate", raw_json('{"kind":"cancel","session":"\\ud800"}'), kept="raw"),
        Bad(b"surrogate-text.json", "bad_json", "surrogate",
            raw_json(f'{{"kind":"prompt","session":"{s}","text":"hi \\udfff"}}'), kept="raw"),
        Bad(b"deep.json", "bad_json", "depth", b"[" * 100_000 + b"]" * 100_000, kept="raw"),
        Bad(b"deep-field.json", "bad_request", "title", nested_title, kept="raw"),
        Bad(b"big.json", "too_large", str(len(big)), big, kept="raw"),
        Bad(b"just-over.json", "too_large", "1048577", b" " * (1024 * 1024 - 1) + b"[]", kept="raw"),
        # -- not an object ------------------------------------------------------------------
        Bad(b"array.json", "bad_request", "[]", b"[]"),
        Bad(b"string.json", "bad_request", '"fork"', b'"fork"'),
        Bad(b"number.json", "bad_request", "42", b"42"),
        Bad(b"null.json", "bad_request", "null", b"null", kept="raw"),  # `"request": null` would say nothing
        Bad(b"true.json", "bad_request", "true", b"true"),
        # -- kind, fields, types ----------------------------------------------------------
        Bad(b"nokind.json", "bad_request", "kind", b"{}"),
        Bad(b"kind-explode.json", "bad_request", "explode", js({"kind": "explode", "session": s})),
        Bad(b"kind-number.json", "bad_request", "7", js({"kind": 7})),
        Bad(b"kind-case.json", "bad_request", "Cancel", js({"kind": "Cancel", "session": s})),
        Bad(b"unknown-field.json", "bad_request", "sesion", js({"kind": "cancel", "session": s, "sesion": s})),
        Bad(b"missing-text.json", "bad_request", "text", js({"kind": "prompt", "session": s})),
        Bad(b"missing-session.json", "bad_request", "session", js({"kind": "cancel"})),
        Bad(b"missing-index.json", "bad_request", "user_message_index", js({"kind": "fork", "session": s})),
        Bad(b"index-true.json", "bad_request", "true", js({"kind": "fork", "session": s, "user_message_index": True})),
        Bad(b"index-float.json", "bad_request", "1.0", js({"kind": "fork", "session": s, "user_message_index": 1.0})),
        Bad(b"index-string.json", "bad_request", '"1"', js({"kind": "fork", "session": s, "user_message_index": "1"})),
        Bad(b"index-null.json", "bad_request", "null", js({"kind": "fork", "session": s, "user_message_index": None})),
        Bad(b"index-list.json", "bad_request", "[0]", js({"kind": "fork", "session": s, "user_message_index": [0]})),
        Bad(b"index-negative.json", "fork_out_of_range", "-1",
            js({"kind": "fork", "session": s, "user_message_index": -1})),
        Bad(b"index-past.json", "fork_out_of_range", "0", js({"kind": "fork", "session": s, "user_message_index": 0})),
        Bad(b"index-huge.json", "fork_out_of_range", "user_message_index",
            raw_json(f'{{"kind":"fork","session":"{s}","user_message_index":{10**30}}}')),
        Bad(b"index-vast.json", "fork_out_of_range", "user_message_index",
            raw_json(f'{{"kind":"fork","session":"{s}","user_message_index":{"9" * 400}}}'), kept="raw"),
        Bad(b"index-endless.json", "fork_out_of_range", "user_message_index",
            raw_json(f'{{"kind":"fork","session":"{s}","user_message_index":{"9" * 5000}}}'), kept="raw"),
        Bad(b"keep-yes.json", "bad_request", '"yes"', js({"kind": "delete", "session": s, "keep_worktree": "yes"})),
        Bad(b"inplace-1.json", "bad_request", "1", js({"kind": "new", "repo": str(ctx.repo), "in_place": 1})),
        Bad(b"text-number.json", "bad_request", "5", js({"kind": "prompt", "session": s, "text": 5})),
        Bad(b"text-empty.json", "bad_request", "text", js({"kind": "prompt", "session": s, "text": ""})),
        Bad(b"text-nul.json", "bad_request", "NUL", js({"kind": "prompt", "session": s, "text": "a\x00b"})),
        Bad(b"title-newline.json", "bad_request", "control",
            js({"kind": "fork", "session": s, "user_message_index": 0, "title": "a\nb"})),
        Bad(b"title-long.json", "bad_request", "200",
            js({"kind": "fork", "session": s, "user_message_index": 0, "title": "t" * 201})),
        # -- session ids -----------------------------------------------------------------
        Bad(b"session-dotdot.json", "bad_request", "../etc", js({"kind": "cancel", "session": "../etc"})),
        Bad(b"session-slash.json", "bad_request", "a/b", js({"kind": "prompt", "session": "a/b", "text": "x"})),
        Bad(b"session-dots.json", "bad_request", '".."', js({"kind": "delete", "session": ".."})),
        Bad(b"session-long.json", "bad_request", "s" * 40, js({"kind": "cancel", "session": "s" * 65})),
        Bad(b"session-empty.json", "bad_request", '""', js({"kind": "cancel", "session": ""})),
        Bad(b"session-nul.json", "bad_request", "session", js({"kind": "cancel", "session": "a\x00b"})),
        Bad(b"session-number.json", "bad_request", "12", js({"kind": "cancel", "session": 12})),
        Bad(b"unknown-prompt.json", "unknown_session", "nosuchsession",
            js({"kind": "prompt", "session": "nosuchsession", "text": "hi"})),
        Bad(b"unknown-fork.json", "unknown_session", "nosuchsession",
            js({"kind": "fork", "session": "nosuchsession", "user_message_index": 0})),
        Bad(b"unknown-cancel.json", "unknown_session", "nosuchsession", cancel),
        Bad(b"unknown-delete.json", "unknown_session", "nosuchsession", js({"kind": "delete", "session": "nosuchsession"})),
        # -- repositories and refs ---------------------------------------------------------
        Bad(b"repo-relative.json", "bad_request", "project", js({"kind": "new", "repo": "project"})),
        Bad(b"repo-dotdot.json", "bad_request", "../etc", js({"kind": "new", "repo": "../etc"})),
        Bad(b"repo-traversal.json", "not_a_git_repo", "/tmp/../etc", js({"kind": "new", "repo": "/tmp/../etc"})),
        Bad(b"repo-missing.json", "repo_not_found", "/nonexistent-cairnd/x",
            js({"kind": "new", "repo": "/nonexistent-cairnd/x"})),
        Bad(b"repo-file.json", "not_a_git_repo", str(a_file), js({"kind": "new", "repo": str(a_file)})),
        Bad(b"repo-passwd.json", "not_a_git_repo", "/etc/passwd", js({"kind": "new", "repo": "/etc/passwd"})),
        Bad(b"repo-gitdir.json", "not_a_git_repo", ".git", js({"kind": "new", "repo": str(ctx.repo / ".git")})),
        Bad(b"repo-nul.json", "bad_request", "NUL", js({"kind": "new", "repo": "/tmp/\x00x"})),
        Bad(b"repo-long.json", "bad_request", "4096", js({"kind": "new", "repo": "/" + "a" * 5000})),
        Bad(b"repo-number.json", "bad_request", "repo", js({"kind": "new", "repo": 1})),
        Bad(b"ref-option.json", "bad_request", "--upload-pack",
            js({"kind": "new", "repo": str(ctx.repo), "ref": f"--upload-pack=touch {ctx.marker}"})),
        Bad(b"ref-missing.json", "bad_ref", "no-such-branch",
            js({"kind": "new", "repo": str(ctx.repo), "ref": "no-such-branch"})),
        Bad(b"ref-blob.json", "bad_ref", "HEAD:README.md",
            js({"kind": "new", "repo": str(ctx.repo), "ref": "HEAD:README.md"})),
        Bad(b"ref-shell.json", "bad_ref", "$(touch",
            js({"kind": "new", "repo": str(ctx.repo), "ref": f"$(touch {ctx.marker})"})),
        Bad(b"ref-newline.json", "bad_request", "ref",
            js({"kind": "new", "repo": str(ctx.repo), "ref": "HEAD\n--output=/tmp/x"})),
        Bad(b"agent-unknown.json", "agent_unknown", "nobody",
            js({"kind": "new", "repo": str(ctx.repo), "agent": "nobody"})),
        Bad(b"agent-path.json", "agent_unknown", "../../bin/sh",
            js({"kind": "new", "repo": str(ctx.repo), "agent": "../../bin/sh"})),
        # -- a request id already answered --------------------------------------------------
        Bad(f"{ctx.taken}.json".encode(), "duplicate_id", ctx.taken, js({"kind": "new", "repo": str(ctx.repo)}),
            result_name=f"{ctx.taken}.dup-1.json".encode()),
        # -- entries that are not regular files: kept as they are, never followed ------------
        Bad(b"passwd.json", "not_a_file", "/etc/passwd", make=make_symlink("/etc/passwd"), kept="raw"),
        Bad(b"dangling.json", "not_a_file", "symbolic link", make=make_symlink("/nonexistent-cairnd"), kept="raw"),
        Bad(b"link-to-valid.json", "not_a_file", "symbolic link", make=make_symlink(str(valid_elsewhere)), kept="raw"),
        Bad(b"fifo.json", "not_a_file", "fifo", make=make_fifo, kept="raw"),
        Bad(b"dir.json", "not_a_file", "directory", make=make_dir, kept="raw"),
        Bad(b"socket.json", "not_a_file", "socket", make=make_socket, kept="raw"),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    return cases


IGNORED = [b".hidden.json", b"..json", b".x"]


# -- the fixture: one daemon per test, one live session, a repository -----------------------


@pytest.fixture
def running(tmp_path: Path):
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    daemon = Daemon(tmp_path / "state").start()
    try:
        session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        taken = daemon.drop({"kind": "cancel", "session": "nosuchsession"}, request_id="taken")
        daemon.wait(taken)
        ctx = Context(session=session, repo=repo, scratch=scratch, marker=scratch / "pwned", taken=taken)
        yield daemon, ctx
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            assert daemon.stop() == 0


def place(daemon: Daemon, case: Bad) -> None:
    """Make the entry in tmp/ (so nothing half-made is ever seen in new/)."""
    tmp = os.path.join(os.fsencode(daemon.spool / "tmp"), case.name)
    if case.make is not None:
        case.make(Path(os.fsdecode(tmp)))
    else:
        assert case.content is not None
        with open(tmp, "wb") as f:
            f.write(case.content)


def deliver(daemon: Daemon, case: Bad) -> None:
    os.rename(os.path.join(os.fsencode(daemon.spool / "tmp"), case.name),
              os.path.join(os.fsencode(daemon.spool / "new"), case.name))


def folder_entries(folder: Path) -> set[bytes]:
    return set(os.listdir(os.fsencode(folder)))


def result_path(daemon: Daemon, name: bytes) -> Path | None:
    for folder in ("done", "failed"):
        path = os.path.join(os.fsencode(daemon.spool / folder), name)
        if os.path.lexists(path):
            return Path(os.fsdecode(path))
    return None


def wait_result(daemon: Daemon, name: bytes, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = result_path(daemon, name)
        if path is not None:
            return orjson.loads(path.read_bytes())
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon died on {name!r}: {daemon.stderr()[-4000:]}")
        time.sleep(0.01)
    raise AssertionError(f"no result for {name!r} in {timeout} s: {daemon.stderr()[-3000:]}")


def raw_entries(daemon: Daemon, case: Bad) -> list[bytes]:
    """The `.raw` entries kept for this case (a name at the limit gets a shortened one)."""
    failed = os.fsencode(daemon.spool / "failed")
    stem = case.answer[:200]
    return [n for n in os.listdir(failed) if n.startswith(stem) and n.endswith(b".raw")]


def check(daemon: Daemon, case: Bad, result: dict[str, Any]) -> None:
    where = f"{case.name!r}: {result}"[:2000]
    assert result["status"] == "error", where
    assert result["error"]["code"] == case.code, where
    assert case.mentions in result["error"]["message"], where
    assert result_path(daemon, case.answer).parent.name == "failed", where
    if case.code == "bad_name":
        assert result["id"] is None, where
    else:
        assert result["id"] == case.answer.decode().removesuffix(".json").split(".dup-")[0], where
    assert isinstance(result["received_at"], str) and isinstance(result["finished_at"], str)
    raws = raw_entries(daemon, case)
    if case.make is make_dir and not raws:
        # A directory cannot be linked into failed/ before its result is written, as a
        # file is: it moves there just after (spool/protocol.py, publish), so it is waited for.
        deadline = time.monotonic() + 30
        while not raws and time.monotonic() < deadline:
            time.sleep(0.01)
            raws = raw_entries(daemon, case)
    if case.kept == "request":
        assert not raws, where
        if case.content is not None:
            assert result["request"] == orjson.loads(case.content), where
    else:
        assert result["request"] is None, where
        assert len(raws) == 1, (where, raws)
        kept = os.path.join(os.fsencode(daemon.spool / "failed"), raws[0])
        if case.content is not None:
            with open(kept, "rb") as f:
                assert f.read() == case.content, where
        elif case.make is not None and case.code == "not_a_file" and "symbolic link" in result["error"]["message"]:
            assert os.path.islink(kept), where  # moved as it is, never followed
    if case.code == "not_a_file" and "passwd" in case.mentions:
        assert "root:" not in orjson.dumps(result).decode()


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).digest(), st.st_mtime_ns, st.st_mode


def assert_untouched(daemon: Daemon, ctx: Context, passwd_before: tuple[bytes, int, int]) -> None:
    assert fingerprint(PASSWD) == passwd_before
    assert not ctx.marker.exists()
    # No new request made anything: the one live session is all there is.
    assert sorted(os.listdir(daemon.state / "sessions")) == [ctx.session]
    assert sorted(os.listdir(daemon.state / "worktrees")) == [ctx.session]
    assert len(session_worktrees(daemon.state, ctx.repo)) == 2  # the repository's and the session's
    assert git_text(ctx.repo, "for-each-ref", "--format=%(refname)", "refs/heads").split() == ["refs/heads/main"]
    assert os.listdir(daemon.spool / "cur") == []
    assert "Traceback" not in daemon.stderr()
    assert "internal error" not in daemon.stderr()


def assert_one_result_each(daemon: Daemon, cases: list[Bad], extra_done: set[bytes]) -> None:
    failed, done = folder_entries(daemon.spool / "failed"), folder_entries(daemon.spool / "done")
    expected_failed = {b"taken.json"} | {case.answer for case in cases}
    raws = {raw for case in cases for raw in raw_entries(daemon, case)}
    assert failed - raws == expected_failed
    assert done == extra_done
    assert not (failed & done)


def assert_ignored_stay(daemon: Daemon) -> None:
    for name in IGNORED:
        assert os.path.lexists(os.path.join(os.fsencode(daemon.spool / "new"), name))
        assert result_path(daemon, name) is None


def drop_ignored(daemon: Daemon) -> None:
    for name in IGNORED:
        with open(os.path.join(os.fsencode(daemon.spool / "new"), name), "wb") as f:
            f.write(b'{"kind": "cancel", "session": "nosuchsession"}')


def good_request_after(daemon: Daemon, ctx: Context) -> bytes:
    rid = daemon.drop({"kind": "cancel", "session": ctx.session}, request_id="good-after")
    assert daemon.wait(rid)["result"] == {"session": ctx.session, "cancelled": False}
    return b"good-after.json"


def test_the_corpus_is_large_and_covers_every_input_code(running):
    _daemon, ctx = running
    cases = corpus(ctx)
    assert len(cases) >= 40
    assert {case.code for case in cases} >= {
        "bad_json", "bad_request", "bad_name", "too_large", "not_a_file", "duplicate_id", "unknown_session",
        "fork_out_of_range", "repo_not_found", "not_a_git_repo", "bad_ref", "agent_unknown"}


@pytest.mark.slow
def test_a_burst_of_bad_requests(running):
    daemon, ctx = running
    passwd_before = fingerprint(PASSWD)
    done_before = folder_entries(daemon.spool / "done")
    cases = corpus(ctx)
    drop_ignored(daemon)
    for case in cases:
        place(daemon, case)
    for case in cases:  # all at once: one batch of inotify events
        deliver(daemon, case)
    for case in cases:
        check(daemon, case, wait_result(daemon, case.answer))
    good = good_request_after(daemon, ctx)
    daemon.wait_rescans(2)  # two rescans later the dot names are still there, unanswered
    assert_ignored_stay(daemon)
    assert_one_result_each(daemon, cases, done_before | {good})
    assert_untouched(daemon, ctx, passwd_before)


@pytest.mark.slow
def test_bad_requests_one_by_one(running):
    daemon, ctx = running
    passwd_before = fingerprint(PASSWD)
    done_before = folder_entries(daemon.spool / "done")
    cases = corpus(ctx)
    drop_ignored(daemon)
    for case in cases:
        place(daemon, case)
        deliver(daemon, case)
        check(daemon, case, wait_result(daemon, case.answer))
        assert daemon.proc is not None and daemon.proc.poll() is None
    good = good_request_after(daemon, ctx)
    daemon.wait_rescans(2)
    assert_ignored_stay(daemon)
    assert_one_result_each(daemon, cases, done_before | {good})
    assert_untouched(daemon, ctx, passwd_before)


@pytest.mark.slow
def test_bad_requests_left_in_new_while_down_are_answered_at_start(tmp_path: Path):
    """The scan at start meets the same corpus the watch does."""
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    daemon = Daemon(tmp_path / "state").start()
    try:
        session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        daemon.wait(daemon.drop({"kind": "cancel", "session": "nosuchsession"}, request_id="taken"))
        assert daemon.stop() == 0
        ctx = Context(session=session, repo=repo, scratch=scratch, marker=scratch / "pwned", taken="taken")
        cases = corpus(ctx)
        for case in cases:
            place(daemon, case)
            deliver(daemon, case)
        daemon.start()
        for case in cases:
            check(daemon, case, wait_result(daemon, case.answer))
        # A request leaves cur/ just after its result is written (spool/protocol.py, publish).
        eventually(lambda: os.listdir(daemon.spool / "cur") == [])
        assert "Traceback" not in daemon.stderr()
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            assert daemon.stop() == 0

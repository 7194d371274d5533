"""`cairnd demo`: a self-contained tour, with no network and no API key.

It makes a small git repository in a temp dir, starts the real daemon (a subprocess,
on its own state dir, with the built-in reference agent), runs turns that commit some
work and leave some uncommitted, forks at an earlier user message, shows side by side
what the fork holds against its parent, stops the daemon cleanly, and says where
everything is. It drives the daemon only through the spool, as any client would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cairnd.git import run as git
from cairnd.spool.client import submit, wait_for_result
from cairnd.errors import CairnError
from cairnd.sessionlog.file import iter_lines
from cairnd.cli.render import shorten
from cairnd.sessionlog.transcript import session_state

READY_SECONDS = 30.0
REQUEST_SECONDS = 60.0

REPO_FILES = {
    "README.md": "# greeter\nA tiny project for the cairnd demo.\n",
    "greet.py": "print('hello')\n",
}
TURNS = [
    "write notes.md: plan: greet the world\ncommit: add notes",
    "write greet.py: print('hello, world')\nwrite idea.txt: maybe greet in French too",
    "delete idea.txt\nappend notes.md: done: greeted the world\ncommit: finish the plan",
]
FORK_AT = 2
FORK_TURN = "append idea.txt: bonjour le monde"


class DemoError(Exception):
    pass


@dataclass
class Tour:
    """What the tour made, for the closing summary and --json."""

    base: Path
    repo: Path
    state: Path
    config: Path
    daemon_log: Path
    parent: dict[str, Any] = field(default_factory=dict)
    fork: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"dir": str(self.base), "repo": str(self.repo), "state_dir": str(self.state),
                "config": str(self.config), "daemon_log": str(self.daemon_log),
                "parent": self.parent, "fork": self.fork, "seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------- the demo's own repository


def make_repository(path: Path) -> None:
    init_repository(path, REPO_FILES, "initial commit")


def worktree_status(worktree: Path) -> dict[str, str]:
    """path -> 'modified' / 'untracked' / 'staged' / 'deleted' for what differs from HEAD."""
    found: dict[str, str] = {}
    for path, code in status_codes(worktree).items():
        if code == "??":
            found[path] = "untracked"
        elif "D" in code:
            found[path] = "deleted"
        elif code[1] != " ":
            found[path] = "modified, uncommitted"
        else:
            found[path] = "staged"
    return found


def head_line(worktree: Path) -> str:
    return head_summary(worktree)


def files_of(worktree: Path) -> dict[str, str]:
    """Every file outside .git: relative path -> its text."""
    files = {}
    for path in sorted(worktree.rglob("*")):
        rel = path.relative_to(worktree)
        if rel.parts[0] == ".git" or not path.is_file():
            continue
        files[str(rel)] = path.read_text(errors="replace")
    return files


# --------------------------------------------------------------------------- the daemon


class DemoDaemon:
    """`cairnd serve` as a child process, ready when it says READY=1 on a notify socket."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock_dir = Path(tempfile.mkdtemp(prefix="cairnd-demo-notify-"))  # short: socket paths are capped
        self._sock: socket.socket | None = None

    def start(self) -> int:
        sock_path = self._sock_dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
        for name in ("CAIRND_CONFIG", "CAIRND_STATE_DIR", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cairnd", "-c", str(self.config), "serve"],
                                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"the daemon exited with status {self.proc.returncode}; see {self.log}")
            self._sock.settimeout(0.2)
            try:
                data = self._sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            if "READY=1" in data.decode(errors="replace").split("\n"):
                # Nobody listens from here on: gone, the socket refuses the daemon's later
                # STATUS= datagrams at once instead of queueing them until it is full.
                self._close_socket()
                return self.proc.pid
        raise DemoError(f"the daemon was not ready within {READY_SECONDS:g} s; see {self.log}")

    def stop(self) -> int | None:
        """SIGTERM, then wait for it to finish its work and exit; its exit status."""
        try:
            if self.proc is None:
                return None
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        shutil.rmtree(self._sock_dir, ignore_errors=True)


def _request(state: Path, request: dict[str, Any]) -> dict[str, Any]:
    spool = state / "spool"
    request_id = submit(spool, request)
    result = wait_for_result(spool, request_id, REQUEST_SECONDS)
    if result is None:
        raise DemoError(f"no result for {request['kind']} within {REQUEST_SECONDS:g} s")
    if result["status"] != "ok":
        raise DemoError(f"{request['kind']} failed: {result['error']['code']}: {result['error']['message']}")
    return result["result"]


# --------------------------------------------------------------------------- presentation


def _cell(files: dict[str, str], status: dict[str, str], path: str) -> str:
    if path not in files:
        return "(none)"
    lines = files[path].splitlines() or [""]
    more = f" (+{len(lines) - 1} line{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else ""
    return shorten(lines[0], 26) + more + (f" [{status[path]}]" if path in status else "")


def side_by_side(rows: list[tuple[str, str, str]], headers: tuple[str, str, str]) -> list[str]:
    all_rows = [headers, *rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(2)]
    return [f"   {a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}".rstrip() for a, b, c in all_rows]


def _user_messages(log: Path) -> list[str]:
    return [turn.user_text for turn in session_state(iter_lines(log)).conversation]


# --------------------------------------------------------------------------- the tour


def run_demo(directory: Path | None = None, as_json: bool = False) -> int:
    """`cairnd demo`: the tour in `directory` (a new temporary one when None); its exit
    status."""
    started = time.monotonic()
    say = (lambda *lines: None) if as_json else _printer
    if directory is None:
        base = Path(tempfile.mkdtemp(prefix="cairnd-demo-"))
    else:
        base = directory.absolute()
        if base.exists() and any(base.iterdir()):
            print(f"cairnd: demo: {base} is not empty; give a new or empty directory", file=sys.stderr)
            return 2
        base.mkdir(parents=True, exist_ok=True)
    tour = Tour(base=base, repo=base / "project", state=base / "state", config=base / "cairnd.toml",
                daemon_log=base / "daemon.log")
    tour.config.write_text(
        f"state_dir = {orjson.dumps(str(tour.state)).decode()}\n"
        "default_agent = \"reference\"\nstop_timeout_seconds = 10\n"
    )
    daemon = DemoDaemon(tour.config, tour.daemon_log)
    say(f"cairnd demo: a tour in {base}",
        "(no network, no API key: the built-in reference agent does what each prompt line says)", "")
    try:
        make_repository(tour.repo)
        say(f"1. A git repository with one commit: {tour.repo}")
        pid = daemon.start()
        say(f"2. The daemon is running (pid {pid}), on its own state dir: {tour.state}")
        _tour(tour, say)
    except (DemoError, CairnError) as exc:
        daemon.stop()
        print(f"cairnd: demo failed: {exc}", file=sys.stderr)
        print(f"cairnd: its files are in {base}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        daemon.stop()
        print(f"\ncairnd: demo interrupted; its files are in {base}", file=sys.stderr)
        return 130
    status = daemon.stop()
    tour.seconds = time.monotonic() - started
    if status != 0:
        print(f"cairnd: demo: the daemon exited with status {status}; see {tour.daemon_log}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(tour.as_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    else:
        _say_where(tour, say)
    return 0


def _say_where(tour: Tour, say: Callable[..., None]) -> None:
    """The tour's last words: where everything is, and what to try next."""
    base = tour.base
    me = f"{invoked_as()} -c {shlex.quote(str(tour.config))}"
    say("6. The daemon stopped cleanly (SIGTERM, exit 0).", "",
        "Where everything is:",
        f"   repository:       {tour.repo}",
        f"   state dir:        {tour.state}",
        f"   config:           {tour.config}",
        f"   daemon log:       {tour.daemon_log}",
        f"   parent log:       {tour.parent['log']}",
        f"   fork log:         {tour.fork['log']}",
        f"   parent worktree:  {tour.parent['worktree']}",
        f"   fork worktree:    {tour.fork['worktree']}",
        "",
        "Look around (these read the state directly; no daemon needed):",
        f"   {me} tree",
        f"   {me} show {tour.fork['session']}",
        "To go on, start the daemon again and talk to the fork:",
        f"   {me} serve &",
        f"   {me} prompt {tour.fork['session']} 'write hello.txt: hi'",
        f"To clean up: rm -rf {base}",
        f"({tour.seconds:.1f} s)")


def invoked_as(argv0: str | None = None) -> str:
    """How to run this cairnd again from the same directory, as a shell word: `cairnd`
    when that is what PATH finds, else the path it was started by (`.venv/bin/cairnd`
    right after the README's install), else `python -m cairnd`."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if not argv0 or argv0.endswith("__main__.py") or argv0 == "-m":
        return f"{shlex.quote(sys.executable)} -m cairnd"
    found = shutil.which("cairnd")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "cairnd"
    return shlex.quote(argv0)


def _printer(*lines: str) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def _tour(tour: Tour, say: Any) -> None:
    new = _request(tour.state, {"kind": "new", "repo": str(tour.repo), "title": "greeter"})
    session, worktree = new["session"], Path(new["worktree"])
    say(f"3. Session {session} works in a worktree of its own: {worktree}",
        "   Three turns, each ending in a checkpoint of the whole working tree:")
    for number, text in enumerate(TURNS, start=1):  # turn N: the one SESSION@N names
        turn = _request(tour.state, {"kind": "prompt", "session": session, "text": text})
        checkpoint = turn["checkpoint"]
        left = "uncommitted changes left in the tree" if checkpoint["dirty"] else "clean"
        say(f"   turn {number}: {shorten(text, 58)}",
            f"           -> {turn['stopReason']}, HEAD {checkpoint['headSha'][:7]}, {left}")
    tour.parent = {"session": session, "worktree": str(worktree), "log": new["log"]}

    fork = _request(tour.state, {"kind": "fork", "session": session, "user_message_index": FORK_AT})
    fork_tree = Path(fork["worktree"])
    tour.fork = {"session": fork["session"], "worktree": str(fork_tree), "log": fork["log"],
                 "user_message_index": FORK_AT, "headSha": fork["headSha"], "worktreeSha": fork["worktreeSha"]}
    say("", f"4. Fork at user message {FORK_AT} (before turn {FORK_AT + 1}): session {fork['session']}",
        f"   its worktree holds the files as turn {FORK_AT} left them, uncommitted and untracked ones too;",
        f"   the message it was cut at comes back as prefill: {shorten(fork['prefill'], 50)!r}", "")

    parent_files, fork_files = files_of(worktree), files_of(fork_tree)
    parent_status, fork_status = worktree_status(worktree), worktree_status(fork_tree)
    parent_messages, fork_messages = _user_messages(Path(new["log"])), _user_messages(Path(fork["log"]))
    rows = [
        ("conversation", f"{len(parent_messages)} user messages", f"{len(fork_messages)} user messages"),
        ("HEAD", shorten(head_line(worktree), 36), shorten(head_line(fork_tree), 36)),
    ]
    for path in sorted(set(parent_files) | set(fork_files)):
        rows.append((path, _cell(parent_files, parent_status, path), _cell(fork_files, fork_status, path)))
    say(*side_by_side(rows, ("", "parent", "fork")))

    answer = _request(tour.state, {"kind": "prompt", "session": fork["session"], "text": FORK_TURN})
    said = session_state(iter_lines(Path(fork["log"]))).conversation[-1].agent_text
    say("", f"5. A turn in the fork ({FORK_TURN!r}): {answer['stopReason']};",
        f"   its agent was given the {len(fork_messages)} kept user messages (it says {said.strip()!r}),",
        "   and the parent's worktree is untouched: "
        + ("idea.txt is still absent there." if not (worktree / "idea.txt").exists() else "(unexpected: it changed)"))
    tour.fork["turn"] = answer["turn"]


# -- git, as only the demo uses it: a repository of its own -------------------------------


def init_repository(path: Path, files: Mapping[str, str], message: str, branch: str = "main") -> str:
    """A new repository at `path` whose branch `branch` holds `files` (name -> text) in one
    commit, made with plumbing (no hook, no signing, cairnd's identity); the commit's id."""
    path.mkdir(parents=True)
    git.output(path, "init", "-q")
    git.output(path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
    for name, text in files.items():
        (path / name).write_text(text)
    git.output(path, "update-index", "--add", "--", *files)
    tree = git.first_line(git.output(path, "write-tree"))
    commit = git.first_line(git.output(path, "commit-tree", "--no-gpg-sign", tree, "-m", message))
    git.output(path, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def status_codes(worktree: Path) -> dict[str, str]:
    """What differs from HEAD: path -> its two-letter `git status --porcelain` code."""
    out = git.output(worktree, "--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all")
    found: dict[str, str] = {}
    for record in out.decode("utf-8", "replace").split("\0"):
        if len(record) >= 4:
            found[record[3:]] = record[:2]
    return found


def head_summary(worktree: Path) -> str:
    """HEAD's short id and subject, as `git log -1 --format='%h %s'` shows it."""
    return git.first_line(git.output(worktree, "log", "-1", "--format=%h %s"))

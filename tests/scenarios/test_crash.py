"""SPEC 6 under `kill -9`: the daemon is killed at random moments while forks, rewinds,
prompts and new sessions are in flight, then restarted, many times over. After the last
restart has drained the spool:

- every request has exactly one result (done/ or failed/, never both, no duplicate);
- `cur/` and `new/` are empty;
- no session is half-made: `git worktree list`, `sessions/`, `worktrees/`, the
  sessions table of `cairnd.db` and `refs/cairnd/*` all agree;
- every log line parses; every turn that began ended (`turn_complete`, then a
  checkpoint), and a turn the crash cut answered `turn_interrupted`; the registry's turn
  count of every session is its log's;
- no turn ran twice (one `_cairnd/turn_start` per request id, at most; a rewind copies
  the lines it leaves behind into the abandoned session's log, the same turn twice);
- no half-rewound session (SPEC 13): no rewind is left pending; every rewind that
  answered ok is recorded done, its abandoned session ready (or deleted later) under the
  rewound one; a rewind that failed before its commit point left nothing.

The engine (`Torture`, `audit`) is shared with bench/torture.py, which runs the same
for hundreds of iterations.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from cairnd.sessionlog.entries import method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from daemonproc import Daemon
from gitrepos import cairnd_refs, commit_all, git, git_text, make_repo, session_worktrees, vault_of, vault_or_none

TURN_START = "_cairnd/turn_start"
TURN_COMPLETE = "_posthog/turn_complete"
CHECKPOINT = "_posthog/agent_checkpoint"

BASE_SEED = 20261122


# -- restarting the daemon ----------------------------------------------------------------


def restart(daemon: Daemon, timeout: float = 60) -> None:
    """Start again and wait for this start's READY=1 (not an earlier one's)."""
    daemon.notifications.clear()
    try:
        daemon.start(timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nholders of cairnd.lock: {lock_holders(daemon.state)}") from None


def lock_holders(state: Path) -> list[str]:
    """Processes with the state directory's lock file open (when a restart finds it taken)."""
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(state / "cairnd.lock") for fd in fds):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                holders.append(f"{pid}: {cmdline}")
        except OSError:
            continue
    return holders


def wait_all(daemon: Daemon, ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        pending = [rid for rid in pending if daemon.result(f"{rid}.json") is None]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} request(s) without a result after {timeout} s, "
                                 f"e.g. {pending[:5]}: {daemon.stderr()[-3000:]}")
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}: {daemon.stderr()[-3000:]}")
        time.sleep(0.05)


def eventually(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- the workload -------------------------------------------------------------------------


PROMPTS = [
    "append log.txt: {tag}",
    "write {tag}.txt: {tag}\ncommit: add {tag}",
    "write notes.txt: {tag}\nsleep: 0.3\nappend notes.txt: after",
    "delete notes.txt\nappend log.txt: {tag}",
    "delegate: look at {tag}",
    "sleep: 0.5",
    "hello {tag}",
]


@dataclass
class Torture:
    """Random requests, a random delay, kill -9, restart: `iteration()` once per round."""

    daemon: Daemon
    repo: Path
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the request
    sessions: list[str] = field(default_factory=list)                 # known from ok results
    deleted: set[str] = field(default_factory=set)
    unread: list[str] = field(default_factory=list)                   # ids whose result we have not read
    history: list[str] = field(default_factory=list)                  # one line per iteration

    def learn(self) -> None:
        """Read the results that came since last time: sessions made, sessions deleted."""
        still = []
        for rid in self.unread:
            result = self.daemon.result(f"{rid}.json")
            if result is None:
                still.append(rid)
                continue
            if result["status"] == "ok" and result["kind"] in ("new", "fork") and "sessions" in result["result"]:
                self.sessions.extend(attempt["session"] for attempt in result["result"]["sessions"])
            elif result["status"] == "ok" and result["kind"] in ("new", "fork"):
                self.sessions.append(result["result"]["session"])
            if result["status"] == "ok" and result["kind"] == "rewind":
                self.sessions.append(result["result"]["abandoned"])
            if result["status"] == "ok" and result["kind"] == "delete":
                self.deleted.add(result["result"]["session"])
        self.unread = still

    def pick(self, rng: random.Random, tag: str) -> dict[str, Any]:
        live = [s for s in self.sessions if s not in self.deleted]
        if len(live) < 2 or rng.random() < 0.12:
            request: dict[str, Any] = {"kind": "new", "repo": str(self.repo)}
            if rng.random() < 0.5:
                request["prompt"] = rng.choice(PROMPTS).format(tag=tag)
            return request
        session = rng.choice(live)
        roll = rng.random()
        if roll < 0.4:
            return {"kind": "prompt", "session": session, "text": rng.choice(PROMPTS).format(tag=tag)}
        if roll < 0.8:
            kind = "fork" if roll < 0.68 else "rewind"
            request = {"kind": kind, "session": session, "user_message_index": rng.randint(0, 3)}
            if kind == "fork" and rng.random() < 0.3:
                request["count"] = rng.randint(2, 3)  # attempts (SPEC 19): all of them or none
            elif rng.random() < 0.3:
                request["prompt"] = rng.choice(PROMPTS).format(tag=tag)
            return request
        if roll < 0.92 or len(live) < 4:
            return {"kind": "cancel", "session": session}
        return {"kind": "delete", "session": session}

    def drop(self, request: dict[str, Any], request_id: str) -> None:
        self.daemon.drop(request, request_id=request_id)
        self.requests[request_id] = request
        self.unread.append(request_id)

    def iteration(self, number: int, seed: int, *, min_requests: int = 1, max_requests: int = 3) -> None:
        rng = random.Random(seed)
        started = time.time()
        restart(self.daemon)
        self.learn()
        kinds = []
        for j in range(rng.randint(min_requests, max_requests)):
            rid = f"i{number}-{j}"
            request = self.pick(rng, rid)
            self.drop(request, rid)
            kinds.append(request["kind"])
        # Mostly soon (forks and new sessions half-made, agents starting), sometimes
        # later (results being written), sometimes as soon as a turn is under way.
        roll = rng.random()
        if roll < 0.75:
            delay = rng.uniform(0, 0.4) if roll < 0.5 else rng.uniform(0.8, 2.0)
            time.sleep(delay)
            when = f"after {delay:.2f} s"
        else:
            extra = rng.uniform(0, 0.3)
            found = self.wait_for_a_turn(started, timeout=4)
            time.sleep(extra)
            when = f"{extra:.2f} s after a turn began" if found else "after 4 s (no turn began)"
        self.history.append(f"iteration {number} seed {seed}: {' '.join(kinds)}; kill -9 {when}")
        self.daemon.kill9()

    def wait_for_a_turn(self, since: float, timeout: float) -> bool:
        """Until some session's log ends inside a turn (its prompt sent, no checkpoint yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for log in (self.daemon.state / "sessions").glob("*/log.ndjson"):
                try:
                    if log.stat().st_mtime < since:
                        continue
                    with open(log, "rb") as f:
                        f.seek(max(0, log.stat().st_size - 4096))
                        tail = f.read().rsplit(b"\n", 2)
                except OSError:
                    continue
                last = tail[-2] if len(tail) >= 2 else b""
                if b"session/prompt" in last or b"session/update" in last or b'"fs/' in last:
                    return True
            time.sleep(0.02)
        return False

    def finish(self, timeout: float = 180) -> None:
        """The last restart: drain everything, then a clean stop."""
        restart(self.daemon)
        wait_all(self.daemon, list(self.requests), timeout)
        self.learn()
        assert self.daemon.stop() == 0, self.daemon.stderr()[-3000:]


# -- the audit ------------------------------------------------------------------------------


@dataclass
class Audit:
    requests: int = 0
    results: int = 0
    lost: int = 0
    duplicated: int = 0
    turns: int = 0
    interrupted: int = 0
    rewinds: int = 0  # finished
    problems: list[str] = field(default_factory=list)

    def figures(self) -> str:
        return (f"requests: {self.requests}, results: {self.results}, lost: {self.lost}, "
                f"duplicated: {self.duplicated}, turns: {self.turns}, interrupted: {self.interrupted}, "
                f"rewinds: {self.rewinds}")


def audit(state: Path, repo: Path, requests: dict[str, dict[str, Any]] | None) -> Audit:
    """Check every promise of SPEC 6 on a stopped daemon's state. Read with sqlite3, git
    and the file system directly, and the log envelope through cairnd.sessionlog.file. `requests`:
    every request dropped, by id (None: the spool's results are not checked)."""
    strict = requests is not None
    requests = requests or {}
    report = Audit(requests=len(requests))
    spool = state / "spool"
    problem = report.problems.append

    # -- one result per request ---------------------------------------------------------
    done = set(os.listdir(spool / "done"))
    failed = set(os.listdir(spool / "failed"))
    results: dict[str, dict[str, Any]] = {}
    for rid in requests:
        name = f"{rid}.json"
        where = [folder for folder, names in (("done", done), ("failed", failed)) if name in names]
        if not where:
            report.lost += 1
            problem(f"request {rid} has no result")
            continue
        if len(where) > 1:
            report.duplicated += 1
            problem(f"request {rid} has a result in both done/ and failed/")
        results[rid] = orjson.loads((spool / where[0] / name).read_bytes())
        report.results += 1
    expected = {f"{rid}.json" for rid in requests}
    for name in sorted((done | failed) - expected if strict else ()):
        if ".dup-" in name:
            report.duplicated += 1
        problem(f"unexpected result file {name}")
    for sub in ("cur", "new"):
        left = [n for n in os.listdir(spool / sub) if not n.startswith(".")]
        if left:
            problem(f"{sub}/ is not empty: {left[:5]}")
    for rid, result in results.items():
        if result.get("status") == "ok" and result.get("request") != requests[rid]:
            problem(f"result of {rid} does not carry its request")
        if result.get("status") == "error" and result["error"]["code"] == "internal":
            problem(f"request {rid} failed internally: {result['error']['message']}")

    # -- sessions: database, directories, git all agree ---------------------------------
    with sqlite3.connect(state / "cairnd.db") as db:
        rows = {r[0]: (r[1], Path(r[2]), bool(r[3]), r[4])
                for r in db.execute("SELECT id, state, worktree, in_place, parent_id FROM sessions")}
        registry_turns = {r[0]: r[1] for r in db.execute("SELECT id, turns FROM sessions")}
        fork_rows = {r[0] for r in db.execute("SELECT id FROM forks")}
        lineage = {r[0]: r[1] for r in db.execute("SELECT id, parent_id FROM forks")}
        rewinds = {r[0]: (r[1], r[2], r[3]) for r in
                   db.execute("SELECT abandoned_id, session_id, request_id, state FROM rewinds")}
        made_by = {r[0]: r[1] for r in db.execute("SELECT request_id, COUNT(*) FROM sessions WHERE state IN"
                                                  " ('ready', 'deleted') AND request_id IS NOT NULL GROUP BY request_id")}
    ready = {sid for sid, row in rows.items() if row[0] == "ready"}
    deleted = {sid for sid, row in rows.items() if row[0] == "deleted"}
    for sid, row in rows.items():
        if row[0] not in ("ready", "deleted"):
            problem(f"session {sid} is left in state {row[0]}")
    for sid in sorted(ready):
        _state, worktree, in_place, parent = rows[sid]
        if not (state / "sessions" / sid / "log.ndjson").is_file():
            problem(f"ready session {sid} has no log")
        if not worktree.is_dir():
            problem(f"ready session {sid} has no worktree at {worktree}")
        if parent is not None and sid not in fork_rows:
            problem(f"fork {sid} has no lineage row")
        log = state / "sessions" / sid / "log.ndjson"
        if log.is_file():
            # The registry's count is a copy of the log's: a kill between the two must not
            # leave it behind (recovery sets it from the log).
            logged = sum(1 for _offset, line in iter_lines(log)
                         if b"turn_complete" in line and method_of(parse_message(line) or {}) == TURN_COMPLETE)
            if registry_turns[sid] != logged:
                problem(f"session {sid}: the registry counts {registry_turns[sid]} turns, its log {logged}")
    for sid in sorted(fork_rows - ready - deleted):
        problem(f"lineage row for {sid}, which is not a session")
    for sid in sorted(os.listdir(state / "sessions")):
        if sid not in ready | deleted:
            problem(f"sessions/{sid} belongs to no ready or deleted session")
    worktrees_dir = state / "worktrees"
    for sid in sorted(os.listdir(worktrees_dir) if worktrees_dir.exists() else []):
        if sid not in ready:
            problem(f"worktrees/{sid} belongs to no ready session")
    listed = session_worktrees(state, repo)
    linked = {path for path, _prunable in listed if path != repo.resolve()}
    for path, prunable in listed:
        if prunable:
            problem(f"git lists a stale worktree {path}")
    wanted = {rows[sid][1].resolve() for sid in ready if not rows[sid][2]}
    for path in sorted(linked - wanted):
        problem(f"git worktree {path} belongs to no ready session")
    for path in sorted(wanted - linked):
        problem(f"ready session's worktree {path} is not in git worktree list")
    refs = cairnd_refs(state, repo)
    for ref in refs:
        owner = ref.split("/")[2]
        if owner not in ready:
            problem(f"{ref} belongs to no ready session")
    vault = vault_or_none(state, repo)
    lock_files = [p for where in (git_common_dir(repo), vault) if where is not None
                  for p in (where / "refs").rglob("*.lock")]
    if lock_files:
        problem(f"ref lock files left behind: {lock_files[:3]}")

    # -- attempts: all the tries or none ---------------------------------------------------
    for rid, request in requests.items():
        if request["kind"] != "fork" or "count" not in request:
            continue
        made = made_by.get(rid, 0)
        if made not in (0, request["count"]):
            problem(f"attempts {rid} asked for {request['count']} tries and left {made}")
        result = results.get(rid)
        if result is not None and result["status"] == "ok" and made != request["count"]:
            problem(f"attempts {rid} answered ok with {made} of its {request['count']} tries")

    # -- rewinds: none half-done ----------------------------------------------------------
    for abandoned, (session, rid, rewind_state) in sorted(rewinds.items()):
        report.rewinds += rewind_state == "done"
        if rewind_state != "done":
            problem(f"the rewind of {session} (abandoned {abandoned}) is left {rewind_state}")
        if abandoned not in ready | deleted or lineage.get(abandoned) != session:
            problem(f"the rewind of {session} left {abandoned} without its session or lineage row")
    by_request = {rid: abandoned for abandoned, (_s, rid, _st) in rewinds.items() if rid}
    for rid, result in results.items():
        if requests[rid]["kind"] != "rewind":
            continue
        if result["status"] == "ok" and by_request.get(rid) != result["result"]["abandoned"]:
            problem(f"rewind {rid} answered ok, but no finished rewind records it")
        if (result["status"] == "error" and rid in by_request
                and result["error"]["code"] not in ("turn_interrupted", "agent_failed")):
            problem(f"rewind {rid} failed ({result['error']['code']}) after its commit point")

    # -- logs: every line parses, every turn ends, none runs twice ---------------------
    # request id -> (session, turn) -> how often one log holds it: a rewind copies the old
    # log into the abandoned session's, so the same turn in two logs is one turn.
    turn_starts: dict[str, dict[tuple[str, int], int]] = {}
    turn_of: dict[str, tuple[str, int, str | None]] = {}  # request id -> (session, turn, stopReason)
    for sid in sorted(ready | deleted):
        log = state / "sessions" / sid / "log.ndjson"
        if not log.exists():
            continue
        owners = rewound_from(sid, rewinds)
        in_log: dict[str, Counter[tuple[str, int]]] = {}
        for owner in owners:
            for rid, turn, stop in walk_turns(owner, log, problem):
                seen = turn_starts.get(rid or "", {}).get((owner, turn), 0)
                if rid is not None:
                    in_log.setdefault(rid, Counter())[(owner, turn)] += 1
                if rid is not None and in_log[rid][(owner, turn)] <= seen:
                    continue  # counted already from another log
                report.turns += 1
                report.interrupted += stop == "interrupted"
                if rid is not None:
                    turn_of[rid] = (owner, turn, stop)
        for rid, counts in in_log.items():
            merged = turn_starts.setdefault(rid, {})
            for key, count in counts.items():
                merged[key] = max(merged.get(key, 0), count)
    for rid, ran in turn_starts.items():
        if sum(ran.values()) > 1:
            problem(f"the turn of request {rid} ran {sum(ran.values())} times: {sorted(ran)}")
    for rid, result in results.items():
        kind = requests[rid]["kind"]
        runs_turn = kind == "prompt" or (kind in ("new", "fork", "rewind") and "prompt" in requests[rid])
        if not runs_turn:
            continue
        if result["status"] == "ok":
            body = result["result"]
            if rid not in turn_of:
                problem(f"request {rid} answered a turn the log does not hold")
                continue
            sid, turn, stop = turn_of[rid]
            if (body["session"], body["turn"], body["stopReason"]) != (sid, turn, stop):
                problem(f"request {rid}: result says turn {body['turn']} of {body['session']} "
                        f"({body['stopReason']}), the log turn {turn} of {sid} ({stop})")
        elif result["error"]["code"] == "turn_interrupted" and rid in turn_of:
            if turn_of[rid][2] != "interrupted":
                problem(f"request {rid} answered turn_interrupted, its turn ended {turn_of[rid][2]}")
    return report


def rewound_from(session: str, rewinds: dict[str, tuple[str, str | None, str]]) -> list[str]:
    """The sessions whose turns `session`'s log holds as their own: itself, and when it is
    an abandoned session the one rewound, and so on up: a rewind of an abandoned session
    copies a log that already held the first rewound session's turns, which may now be
    in no other log."""
    owners = [session]
    while owners[-1] in rewinds and rewinds[owners[-1]][0] not in owners:
        owners.append(rewinds[owners[-1]][0])
    return owners


def walk_turns(session: str, log: Path, problem) -> list[tuple[str | None, int, str | None]]:
    """The session's own turns in its log: (request id, turn, stopReason or None when it
    never ended). A fork's log begins with its parent's lines; only entries naming this
    session are its own."""
    turns: list[tuple[str | None, int, str | None]] = []
    open_turn: tuple[str | None, int] | None = None
    completed: str | None = None  # stopReason of a turn awaiting its checkpoint
    expected_turn: int | None = None
    for offset, line in iter_lines(log):
        message = parse_message(line)
        if message is None:
            problem(f"{log}: line at byte {offset} does not parse: {line[:120]!r}")
            continue
        method = method_of(message)
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method not in (TURN_START, TURN_COMPLETE, CHECKPOINT) or params.get("sessionId") != session:
            continue
        if method == TURN_START:
            if open_turn is not None:
                problem(f"{log}: turn {params.get('turn')} starts while turn {open_turn[1]} has not ended")
                turns.append((*open_turn, None))
            elif completed is not None:
                problem(f"{log}: turn {params.get('turn')} starts before the last one's checkpoint")
            turn = params.get("turn")
            if expected_turn is not None and turn != expected_turn:
                problem(f"{log}: turn {turn} starts where turn {expected_turn} should")
            open_turn = (params.get("requestId"), turn)
            completed = None
        elif method == TURN_COMPLETE:
            if open_turn is None:
                continue  # a turn the parent left open at the cut, closed by the fork's own record
            completed = params.get("stopReason")
            turns.append((*open_turn, completed))
            expected_turn = open_turn[1] + 1
            open_turn = None
        elif method == CHECKPOINT:
            if completed is not None:
                expected_turn = params.get("turns")
            completed = None
    if open_turn is not None:
        problem(f"{log}: turn {open_turn[1]} (request {open_turn[0]}) never ended")
        turns.append((*open_turn, None))
    elif completed is not None:
        problem(f"{log}: the last turn ended ({completed}) without a checkpoint")
    return turns


def git_common_dir(repo: Path) -> Path:
    return Path(git_text(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))


# -- the tests ---------------------------------------------------------------------------------


def torture_repo(path: Path) -> Path:
    return make_repo(path, {"README.md": "hello\n", "src/app.py": "print('hi')\n", "log.txt": "start\n"})


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path):
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state", {"max_parallel_turns": 4, "stop_timeout_seconds": 20})
    torture = Torture(daemon, repo)
    iterations = 30
    try:
        for i in range(iterations):
            torture.iteration(i, BASE_SEED + i)
        torture.finish()
    except BaseException:
        print("\n".join(torture.history))
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()
        raise
    report = audit(daemon.state, repo, torture.requests)
    print(f"iterations: {iterations}, {report.figures()}")
    assert not report.problems, "\n".join(torture.history + report.problems)
    assert report.lost == 0 and report.duplicated == 0
    assert report.requests >= 30 and report.turns > 0


@pytest.mark.slow
def test_a_crash_after_the_result_of_a_bad_request_keeps_its_bytes(tmp_path: Path):
    """The crash window between writing a result that cannot carry the request and
    moving the entry beside it: on restart the entry moves to <name>.raw."""
    daemon = Daemon(tmp_path / "state")
    spool = daemon.spool
    for sub in ("tmp", "new", "cur", "done", "failed"):
        (spool / sub).mkdir(parents=True)
    (spool / "cur" / "broken.json").write_bytes(b"{not json")
    (spool / "failed" / "broken.json").write_bytes(orjson.dumps({
        "id": "broken", "kind": None, "status": "error", "request": None,
        "error": {"code": "bad_json", "message": "request is not valid JSON"},
        "received_at": "2026-11-22T10:00:00.000Z", "finished_at": "2026-11-22T10:00:00.001Z"}))
    (spool / "cur" / "good.json").write_bytes(b'{"kind": "cancel", "session": "nosuchsession"}')
    (spool / "failed" / "good.json").write_bytes(orjson.dumps({
        "id": "good", "kind": "cancel", "status": "error", "request": {"kind": "cancel", "session": "nosuchsession"},
        "error": {"code": "unknown_session", "message": "session 'nosuchsession' does not exist"},
        "received_at": "2026-11-22T10:00:00.000Z", "finished_at": "2026-11-22T10:00:00.001Z"}))
    daemon.start()
    try:
        assert os.listdir(spool / "cur") == []
        assert (spool / "failed" / "broken.json.raw").read_bytes() == b"{not json"
        assert sorted(os.listdir(spool / "failed")) == ["broken.json", "broken.json.raw", "good.json"]
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_a_request_claimed_but_not_started_is_run_after_a_crash(tmp_path: Path):
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state")
    spool = daemon.spool
    for sub in ("tmp", "new", "cur", "done", "failed"):
        (spool / sub).mkdir(parents=True)
    (spool / "cur" / "claimed.json").write_bytes(orjson.dumps({"kind": "new", "repo": str(repo)}))
    daemon.start()
    try:
        assert daemon.wait("claimed")["status"] == "ok"
        eventually(lambda: os.listdir(spool / "cur") == [])  # it lets go of cur/ right after the result
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_a_half_made_fork_left_by_a_crash_is_removed(tmp_path: Path):
    """What a crash in the middle of a fork leaves (a `creating` row, its worktree, its
    log directory, a pinned ref) is gone after the restart, and the parent is intact."""
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    parent = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: 1"})
    assert daemon.stop() == 0

    half = "halfmadefork0001"
    worktree = daemon.state / "worktrees" / half / repo.name
    worktree.parent.mkdir(parents=True)
    git(repo, "worktree", "add", "--detach", str(worktree), "HEAD")
    (daemon.state / "sessions" / half).mkdir()
    (daemon.state / "sessions" / half / ".log.ndjson.tmp").write_bytes(b'{"type":"notification"')
    git(vault_of(daemon.state, repo), "update-ref", f"refs/cairnd/{half}/0", parent["headSha"])
    with sqlite3.connect(daemon.state / "cairnd.db") as db:
        db.execute(
            "INSERT INTO sessions (id, state, title, repo, worktree, in_place, agent, parent_id, root_id, turns,"
            " request_id, created_at, updated_at) VALUES (?, 'creating', 't', ?, ?, 0, 'reference', ?, ?, 1,"
            " 'gone', 0, 0)", (half, str(repo), str(worktree), parent["session"], parent["session"]))

    restart(daemon)
    try:
        answer = daemon.ok({"kind": "prompt", "session": parent["session"], "text": "append a.txt: 2"})
        assert answer["turn"] == 1
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems
    assert not (daemon.state / "sessions" / half).exists()
    assert not worktree.parent.exists()


@pytest.mark.slow
def test_a_turn_cut_by_kill_9_ends_interrupted_and_is_not_run_again(tmp_path: Path):
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    rid = daemon.drop({"kind": "prompt", "session": session, "text": "append log.txt: once\nsleep: 10"})
    log = daemon.state / "sessions" / session / "log.ndjson"
    deadline = time.monotonic() + 30
    while b"session/prompt" not in log.read_bytes():  # the prompt is on its way to the agent
        assert time.monotonic() < deadline, daemon.stderr()[-2000:]
        time.sleep(0.02)
    daemon.kill9()
    restart(daemon)
    try:
        result = daemon.wait(rid)
        assert result["error"]["code"] == "turn_interrupted", result
        after = daemon.ok({"kind": "prompt", "session": session, "text": "append log.txt: next"})
        assert after["turn"] == 1
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems
    assert report.interrupted == 1
    worktree = Path(daemon.state / "worktrees" / session / repo.name)
    assert (worktree / "log.txt").read_text().count("once") <= 1
    assert "next" in (worktree / "log.txt").read_text()


@pytest.mark.slow
def test_the_audit_sees_what_it_must(tmp_path: Path):
    """The audit is the test's eyes: a lost request, a duplicate, a stray result, a stray
    worktree, a ref of no session, a turn run twice, an open turn and a rewind left
    half-done are all reported."""
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    new = {"kind": "new", "repo": str(repo), "prompt": "hello"}
    session = daemon.wait(daemon.drop(new, request_id="first"))["result"]["session"]
    request = {"kind": "prompt", "session": session, "text": "again"}
    daemon.wait(daemon.drop(request, request_id="twice"))
    assert daemon.stop() == 0
    assert not audit(daemon.state, repo, {"first": new, "twice": request}).problems

    spool, log = daemon.spool, daemon.state / "sessions" / session / "log.ndjson"
    result = (spool / "done" / "twice.json").read_bytes()
    (spool / "failed" / "twice.json").write_bytes(result)
    (spool / "done" / "stray.json").write_bytes(result)
    start = next(line for line in log.read_bytes().splitlines(keepends=True)
                 if b"turn_start" in line and b"twice" in line)
    with open(log, "ab") as f:
        f.write(start)
    git(repo, "update-ref", "refs/cairnd/nobody/0", "HEAD")
    git(repo, "worktree", "add", "--detach", str(tmp_path / "stray"), "HEAD")
    with sqlite3.connect(daemon.state / "cairnd.db") as db:
        db.execute("INSERT INTO rewinds (abandoned_id, session_id, request_id, state, plan, created_at)"
                   " VALUES ('halfway', ?, NULL, 'pending', '{}', 0)", (session,))
    report = audit(daemon.state, repo, {"first": new, "twice": request, "lost": {"kind": "cancel", "session": session}})
    text = "\n".join(report.problems)
    assert report.lost == 1 and report.duplicated == 1
    for needle in ("request lost has no result", "unexpected result file stray.json", "refs/cairnd/nobody/0",
                   "stray belongs to no ready session", "ran 2 times", "never ended",
                   "(abandoned halfway) is left pending", "left halfway without its session"):
        assert needle in text, text


@pytest.mark.slow
def test_a_crash_right_after_turn_start_still_ends_the_turn(tmp_path: Path):
    """The runner writes `_cairnd/turn_start` just before sending the prompt. A crash
    between the two leaves a turn_start with no prompt: the request is answered
    turn_interrupted, and the log must say that turn ended (turn_complete
    `interrupted` and a checkpoint), like any turn a crash cut."""
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "append log.txt: one"})["session"]
    assert daemon.stop() == 0
    log = daemon.state / "sessions" / session / "log.ndjson"
    with open(log, "ab") as f:
        f.write(orjson.dumps({"type": "notification", "timestamp": "2026-11-22T10:00:00.000Z", "notification": {
            "jsonrpc": "2.0", "method": TURN_START,
            "params": {"sessionId": session, "turn": 1, "requestId": "cut"}}}) + b"\n")
    request = {"kind": "prompt", "session": session, "text": "append log.txt: two"}
    (daemon.spool / "cur" / "cut.json").write_bytes(orjson.dumps(request))
    restart(daemon)
    try:
        assert daemon.wait("cut")["error"]["code"] == "turn_interrupted"
        assert daemon.ok({"kind": "prompt", "session": session, "text": "hello"})["turn"] == 2
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems


@pytest.mark.slow
def test_temporary_files_a_crash_left_are_removed_at_start(tmp_path: Path):
    """A kill between writing a result (or status.json) under its temporary name and
    renaming it leaves `.<name>.<pid>.<n>.tmp` behind; the next start removes them."""
    daemon = Daemon(tmp_path / "state")
    spool = daemon.spool
    for sub in ("tmp", "new", "cur", "done", "failed"):
        (spool / sub).mkdir(parents=True)
    litter = [spool / "done" / ".r1.json.4242.0.tmp", spool / "failed" / ".r2.json.4242.3.tmp",
              daemon.state / ".status.json.4242.7.tmp"]
    for path in litter:
        path.write_bytes(b'{"id": "r1", "sta')
    kept = [spool / "failed" / ".notes", spool / "done" / "r3.json"]
    for path in kept:
        path.write_bytes(b"{}")
    daemon.start()
    try:
        assert [p for p in litter if p.exists()] == []
        assert all(p.exists() for p in kept)
    finally:
        assert daemon.stop() == 0


def checkpoint_files(repo: Path, params: dict[str, Any]) -> dict[str, bytes]:
    """The files a checkpoint holds, read back from its worktreeSha in `repo` (the vault)."""
    names = git(repo, "ls-tree", "-r", "-z", "--name-only", params["worktreeSha"]).split(b"\0")
    return {name.decode(): git(repo, "cat-file", "blob", f"{params['worktreeSha']}:{name.decode()}")
            for name in names if name}


def worktree_files(worktree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(worktree)): p.read_bytes() for p in worktree.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(worktree).parts}


@pytest.mark.slow
def test_a_kill_between_a_change_and_its_checkpoint_loses_no_change(tmp_path: Path):
    """With the worktree watched: a turn's change made, then kill -9 before its checkpoint,
    and a change made by hand while cairnd is down (no watch saw either). Recovery's
    checkpoint holds both, and so does every checkpoint after the restart, whether the
    turn's snapshot came from a full scan or from the paths the new watch saw."""
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    worktree = daemon.state / "worktrees" / session / repo.name
    daemon.ok({"kind": "prompt", "session": session, "text": "write a.txt: one"})
    daemon.drop({"kind": "prompt", "session": session, "text": "write b.txt: two\nsleep: 30"})
    eventually(lambda: (worktree / "b.txt").exists())
    daemon.kill9()
    (worktree / "c.txt").write_text("made while cairnd was down\n")
    (worktree / "README.md").write_text("edited while cairnd was down\n")
    restart(daemon)
    try:
        log = daemon.state / "sessions" / session / "log.ndjson"
        entries = [parse_message(line) for _offset, line in iter_lines(log)]
        recovered = [e["params"] for e in entries if method_of(e) == CHECKPOINT][-1]
        assert checkpoint_files(vault_of(daemon.state, repo), recovered) == worktree_files(worktree)
        assert {"a.txt", "b.txt", "c.txt"} <= set(checkpoint_files(vault_of(daemon.state, repo), recovered))
        third = daemon.ok({"kind": "prompt", "session": session, "text": "write d.txt: four"})["checkpoint"]
        assert checkpoint_files(vault_of(daemon.state, repo), third) == worktree_files(worktree)
        (worktree / "e.txt").write_text("by hand, while the watch is on\n")
        os.unlink(worktree / "a.txt")
        fourth = daemon.ok({"kind": "prompt", "session": session, "text": "append d.txt: more"})["checkpoint"]
        assert checkpoint_files(vault_of(daemon.state, repo), fourth) == worktree_files(worktree)
        assert fourth["dirty"] is True and "a.txt" not in checkpoint_files(vault_of(daemon.state, repo), fourth)
        fifth = daemon.ok({"kind": "prompt", "session": session, "text": "nothing to do"})["checkpoint"]
        assert fifth["worktreeSha"] == fourth["worktreeSha"]  # nothing changed: the same snapshot
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems


@pytest.mark.slow
def test_kill_9_during_rewinds_leaves_each_whole_or_undone(tmp_path: Path):
    """Rewinds alone, each cut by kill -9 at a random moment (making the abandoned
    session, at the commit point, resetting the files, replacing the log, running the
    next turn), then a restart: each ends whole or as if never asked, and the session
    goes on; the audit checks every promise."""
    from gitrepos import tree_state
    rng = random.Random(BASE_SEED)
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state", {"stop_timeout_seconds": 20})
    requests: dict[str, dict[str, Any]] = {}

    def ask(rid: str, request: dict[str, Any]) -> dict[str, Any]:
        requests[rid] = request
        return daemon.wait(daemon.drop(request, request_id=rid), timeout=120)

    restart(daemon)
    session = ask("new", {"kind": "new", "repo": str(repo), "prompt": "write a.txt: 0"})["result"]["session"]
    worktree = daemon.state / "worktrees" / session / "project"
    history = []
    try:
        for i in range(12):
            for j in range(2):  # two more user messages each round
                ask(f"p{i}-{j}", {"kind": "prompt", "session": session,
                                  "text": f"write a.txt: {i}.{j}\nwrite f{i}{j}.txt: x" + ("\ncommit: c" if j else "")})
            k = rng.randint(0, 2)
            request: dict[str, Any] = {"kind": "rewind", "session": session, "user_message_index": k}
            if rng.random() < 0.4:
                request["prompt"] = f"append a.txt: after rewind {i}"
            rid = f"r{i}"
            requests[rid] = request
            daemon.drop(request, request_id=rid)
            delay = rng.uniform(0, 0.8)
            time.sleep(delay)
            daemon.kill9()
            restart(daemon)
            result = daemon.wait(rid, timeout=120)
            history.append(f"round {i}: rewind to {k}, kill -9 after {delay:.2f} s: {result['status']} "
                           f"{result.get('error', {}).get('code', '')}")
            if result["status"] == "ok" and "prompt" not in request:
                # Whole: the session's files are the checkpoint's, as a fork at k of the
                # abandoned session (which holds the state before) has them.
                oracle = ask(f"o{i}", {"kind": "fork", "session": result["result"]["abandoned"],
                                       "user_message_index": k})["result"]
                assert tree_state(worktree) == tree_state(Path(oracle["worktree"])), history
        assert daemon.stop() == 0
    except BaseException:
        print("\n".join(history))
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()
        raise
    report = audit(daemon.state, repo, requests)
    print("\n".join(history))
    print(report.figures())
    assert not report.problems, "\n".join(history + report.problems)
    assert report.rewinds >= 1


@pytest.mark.slow
def test_the_audit_follows_a_turn_through_rewinds_of_rewinds(tmp_path: Path):
    """A rewind copies the old log whole into the abandoned session's; a rewind of that
    abandoned session copies it again, into a second abandoned session's. The first
    session's turn past both cuts then lives only in the second abandoned log, under
    the first session's id: the audit must still find it there (and not report a turn
    answered that no log holds)."""
    repo = torture_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state").start()
    requests: dict[str, dict[str, Any]] = {}

    def ask(rid: str, request: dict[str, Any]) -> dict[str, Any]:
        requests[rid] = request
        result = daemon.wait(daemon.drop(request, request_id=rid))
        assert result["status"] == "ok", result
        return result["result"]

    try:
        session = ask("new", {"kind": "new", "repo": str(repo), "prompt": "append log.txt: one"})["session"]
        ask("second", {"kind": "prompt", "session": session, "text": "append log.txt: two"})
        first = ask("rewind", {"kind": "rewind", "session": session, "user_message_index": 1})["abandoned"]
        second = ask("again", {"kind": "rewind", "session": first, "user_message_index": 1})["abandoned"]
    finally:
        assert daemon.stop() == 0

    def holds_the_turn(sid: str) -> bool:
        return b'"requestId":"second"' in (daemon.state / "sessions" / sid / "log.ndjson").read_bytes()

    # Both cuts came before it: only the second abandoned log holds it, under `session`'s id.
    assert [holds_the_turn(sid) for sid in (session, first, second)] == [False, False, True]
    report = audit(daemon.state, repo, requests)
    assert not report.problems, report.problems


def submodule_files(worktree: Path) -> dict[str, bytes]:
    """Every file of the worktree, submodules included (no `.git` of any of them), and the
    HEAD of each submodule."""
    files = worktree_files(worktree)
    for sub in ("lib", "lib/deep"):
        if (worktree / sub / ".git").exists():
            files[f"{sub} HEAD"] = git(worktree / sub, "rev-parse", "HEAD")
    return files


@pytest.mark.slow
def test_kill_9_with_submodules_loses_nothing_inside_them(tmp_path: Path):
    """A session of a superproject with a submodule (which has one of its own), driven by
    the reference agent: files written inside the submodule, a commit there, then kill -9
    mid-turn after a change inside it and a change by hand while cairnd is down. After
    the restart the recovered checkpoint holds them, and a fork at every message has
    the files and the submodules' HEADs of that moment."""
    deep = make_repo(tmp_path / "deep", {"d.txt": "deep\n"})
    lib = make_repo(tmp_path / "lib", {"l.txt": "lib\n"})
    git(lib, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(deep), "deep")
    commit_all(lib, "deep")
    repo = torture_repo(tmp_path / "project")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    commit_all(repo, "lib")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "--recursive", "-q")
    daemon = Daemon(tmp_path / "state").start()
    session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    worktree = daemon.state / "worktrees" / session / repo.name
    states = [submodule_files(worktree)]
    assert states[0]["lib/l.txt"] == b"lib\n" and states[0]["lib/deep/d.txt"] == b"deep\n"
    daemon.ok({"kind": "prompt", "session": session,
               "text": "write lib/a.txt: one\nwrite lib/deep/d.txt: deep one\n"
                       "run: cd lib && git add a.txt && git -c user.name=a -c user.email=a@a commit -qm 'in lib'"})
    states.append(submodule_files(worktree))
    daemon.drop({"kind": "prompt", "session": session, "text": "write lib/b.txt: two\nsleep: 30"})
    eventually(lambda: (worktree / "lib" / "b.txt").exists())
    daemon.kill9()
    (worktree / "lib" / "c.txt").write_text("made while cairnd was down\n")
    restart(daemon)
    try:
        states.append(submodule_files(worktree))
        third = daemon.ok({"kind": "prompt", "session": session, "text": "write lib/deep/e.txt: four"})["checkpoint"]
        states.append(submodule_files(worktree))
        assert [s["path"] for s in third["submodules"]] == ["lib", "lib/deep"] and third["skipped"] == []
        for k, expected in enumerate(states[:-1]):
            fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": k})
            assert submodule_files(Path(fork["worktree"])) == expected, k
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems

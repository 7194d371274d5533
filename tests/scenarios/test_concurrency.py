"""SPEC 5 and 6 under load: several sessions taking turns at once while forks of them
are made. Every turn is checkpointed in order (turns 1..n in each log, each with its
checkpoint), every result names the right turn, and every fork is faithful: its
worktree holds exactly the files of the parent's checkpoint at the cut, and what the
turns before the cut wrote.

The engine (`Load`) is shared with bench/torture.py --concurrency (20 sessions x 20 turns).
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cairnd.sessionlog.entries import method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from daemonproc import Daemon
from gitrepos import env as git_env, vault_of
from gitrepos import make_repo, tree_state
from test_crash import CHECKPOINT, audit, wait_all

pytestmark = pytest.mark.slow

PROMPT_METHOD = "session/prompt"


def turn_text(session_no: int, turn: int) -> str:
    """What turn `turn` of session `session_no` does: one line more in log.txt, one file
    of its own, and (every third turn) a commit, so HEAD moves too."""
    text = f"append log.txt: s{session_no} t{turn}\nwrite t{turn}.txt: {session_no}-{turn}"
    if turn % 3 == 2:
        text += f"\ncommit: turn {turn}"
    return text


def expected_files(session_no: int, turns: int) -> dict[bytes, bytes]:
    """The files `turns` completed turns leave (besides the repository's own)."""
    files = {b"log.txt": b"start\n" + b"".join(f"s{session_no} t{n}\n".encode() for n in range(turns))}
    files.update({f"t{n}.txt".encode(): f"{session_no}-{n}\n".encode() for n in range(turns)})
    return files


def commit_files(repo: Path, sha: str) -> dict[bytes, tuple[str, bytes]]:
    """Every file of a commit's tree: path -> (mode, bytes), read with git itself."""
    listing = subprocess.run(["git", "ls-tree", "-r", "-z", sha], cwd=repo, env=git_env(),
                             capture_output=True, check=True).stdout
    entries = []
    for record in listing.split(b"\0"):
        if record:
            info, _, path = record.partition(b"\t")
            mode, _kind, blob = info.split(b" ")
            entries.append((path, mode.decode(), blob.decode()))
    batch = subprocess.run(["git", "cat-file", "--batch"], cwd=repo, env=git_env(), check=True,
                           input="".join(f"{blob}\n" for _p, _m, blob in entries).encode(),
                           capture_output=True).stdout
    files, pos = {}, 0
    for path, mode, _blob in entries:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split(b" ")[2])
        files[path] = (mode, batch[header_end + 1:header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return files


def checkpoint_before_cut(log: Path, k: int) -> dict[str, Any]:
    """The last agent_checkpoint before the k-th top-level prompt of a session's log
    (no sub-sessions in this workload, so prompts are all the user messages)."""
    seen, last = 0, None
    for _offset, line in iter_lines(log):
        message = parse_message(line)
        assert message is not None
        method = method_of(message)
        if method == PROMPT_METHOD and "id" in message:
            if seen == k:
                break
            seen += 1
        elif method == CHECKPOINT:
            last = message["params"]
    assert last is not None
    return last


@dataclass
class Load:
    """Sessions taking turns at once while forks of them are made."""

    daemon: Daemon
    repo: Path
    sessions: int
    turns: int
    forks_per_session: int = 2
    seed: int = 7
    ids: dict[str, dict[str, Any]] = field(default_factory=dict)   # every request dropped
    session_ids: list[str] = field(default_factory=list)
    prompts: dict[str, list[str]] = field(default_factory=dict)     # session -> prompt request ids in order
    forks: list[tuple[str, int, int, str]] = field(default_factory=list)  # (parent, session_no, k, request id)

    def drop(self, request: dict[str, Any], request_id: str) -> str:
        self.daemon.drop(request, request_id=request_id)
        self.ids[request_id] = request
        return request_id

    def run(self, timeout: float = 300) -> None:
        rng = random.Random(self.seed)
        news = [self.drop({"kind": "new", "repo": str(self.repo), "title": f"s{n}"}, f"new-{n}")
                for n in range(self.sessions)]
        wait_all(self.daemon, news, timeout)
        for n, rid in enumerate(news):
            result = self.daemon.result(f"{rid}.json")
            assert result is not None and result["status"] == "ok", result
            self.session_ids.append(result["result"]["session"])
        # Every session's turns at once; while they run, forks at the message of the
        # turn in flight (in the log once that turn began; out of range until then)
        # or of the turn just answered.
        for t in range(self.turns):
            for n in range(self.sessions):
                session = self.session_ids[n]
                rid = self.drop({"kind": "prompt", "session": session, "text": turn_text(n, t)}, f"s{n}-t{t}")
                self.prompts.setdefault(session, []).append(rid)
        triggers = [(n, f, rng.randint(0, self.turns - 1)) for n in range(self.sessions)
                    for f in range(self.forks_per_session)]
        while triggers:
            waiting = []
            for n, f, m in triggers:
                answered = sum(1 for rid in self.prompts[self.session_ids[n]]
                               if self.daemon.result(f"{rid}.json") is not None)
                if answered >= m:
                    # Every other fork cuts at the last answered turn's message: in the
                    # log for sure, while the session goes on with its next turns.
                    self.fork(n, m if f % 2 == 0 or m == 0 else m - 1, f"mid-s{n}-f{f}")
                else:
                    waiting.append((n, f, m))
            triggers = waiting
            time.sleep(0.02)
        wait_all(self.daemon, list(self.ids), timeout)
        # Then a fork of each at a random cut, now that every message is in the log.
        late = [self.fork(n, rng.randint(0, self.turns - 1), f"late-s{n}") for n in range(self.sessions)]
        wait_all(self.daemon, late, timeout)

    def fork(self, n: int, k: int, rid: str) -> str:
        self.forks.append((self.session_ids[n], n, k, rid))
        return self.drop({"kind": "fork", "session": self.session_ids[n], "user_message_index": k}, rid)

    def check(self) -> list[str]:
        """Everything that is wrong, as sentences (empty: all is well)."""
        problems: list[str] = []
        state = self.daemon.state
        for session, rids in self.prompts.items():
            for turn, rid in enumerate(rids):
                result = self.daemon.result(f"{rid}.json")
                if result is None or result["status"] != "ok":
                    problems.append(f"{rid}: {result}")
                elif (result["result"]["turn"], result["result"]["checkpoint"]["turns"]) != (turn, turn + 1):
                    problems.append(f"{rid} answered turn {result['result']['turn']}, not {turn}")
            starts = [(message["params"]["requestId"], message["params"]["turn"])
                      for _o, line in iter_lines(state / "sessions" / session / "log.ndjson")
                      if (message := parse_message(line)) and method_of(message) == "_cairnd/turn_start"]
            if starts != [(rid, turn) for turn, rid in enumerate(rids)]:
                problems.append(f"session {session} ran its turns as {starts}")
        made = 0
        for parent, n, k, rid in self.forks:
            result = self.daemon.result(f"{rid}.json")
            if result is None:
                problems.append(f"fork {rid} has no result")
                continue
            if result["status"] != "ok":
                if not (rid.startswith("mid-") and result["error"]["code"] == "fork_out_of_range"):
                    problems.append(f"fork {rid} at {k} failed: {result['error']}")
                continue
            made += 1
            problems.extend(self.check_fork(parent, n, k, result["result"]))
        if made == 0:
            problems.append("no fork was made")
        problems.extend(audit(state, self.repo, self.ids).problems)
        return problems

    def check_fork(self, parent: str, n: int, k: int, fork: dict[str, Any]) -> list[str]:
        problems = []
        where = f"fork {fork['session']} of {parent} at {k}"
        checkpoint = checkpoint_before_cut(self.daemon.state / "sessions" / parent / "log.ndjson", k)
        if (fork["headSha"], fork["worktreeSha"], fork["state"]) != (
                checkpoint["headSha"], checkpoint["worktreeSha"], "checkpoint"):
            problems.append(f"{where}: starts from {fork['worktreeSha']}, the cut's checkpoint is "
                            f"{checkpoint['worktreeSha']}")
        on_disk = tree_state(Path(fork["worktree"]))
        in_checkpoint = commit_files(vault_of(self.daemon.state, self.repo), checkpoint["worktreeSha"])
        if on_disk != in_checkpoint:
            differ = sorted(set(on_disk) ^ set(in_checkpoint) | {
                p for p in set(on_disk) & set(in_checkpoint) if on_disk[p] != in_checkpoint[p]})
            problems.append(f"{where}: worktree differs from the checkpoint at {differ[:5]}")
        for path, content in expected_files(n, k).items():
            if on_disk.get(path, ("", None))[1] != content:
                problems.append(f"{where}: {path.decode()} is {on_disk.get(path)}, turns 0..{k - 1} wrote {content!r}")
        extra = {p for p in on_disk if p.startswith(b"t") and p.endswith(b".txt")} - set(expected_files(n, k))
        if extra:
            problems.append(f"{where}: holds files of turns after the cut: {sorted(extra)}")
        return problems


def load_repo(path: Path) -> Path:
    return make_repo(path, {"README.md": "hello\n", "log.txt": "start\n"})


def test_sessions_take_turns_at_once_while_forks_are_made(tmp_path: Path):
    repo = load_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state", {"max_parallel_turns": 4, "max_parallel_forks": 2}).start()
    load = Load(daemon, repo, sessions=6, turns=5)
    try:
        load.run()
    finally:
        assert daemon.stop() == 0
    problems = load.check()
    assert not problems, "\n".join(problems)
    made = [load.daemon.result(f"{rid}.json") for *_rest, rid in load.forks]
    made = [r["result"] for r in made if r["status"] == "ok"]
    assert len(made) >= 6
    # The check has eyes: one byte changed in one fork's worktree is seen.
    (Path(made[-1]["worktree"]) / "log.txt").write_text("tampered\n")
    assert any("worktree differs" in p for p in load.check())


def test_new_sessions_and_forks_of_one_repository_at_once(tmp_path: Path):
    """git's worktree commands read every worktree's records: many at once in one
    repository must not trip over each other's half-written ones."""
    repo = load_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state", {"max_parallel_forks": 4}).start()
    try:
        first = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: 1"})["session"]
        ids = [daemon.drop({"kind": "new", "repo": str(repo)}) for _ in range(8)]
        ids += [daemon.drop({"kind": "fork", "session": first, "user_message_index": 0}) for _ in range(8)]
        ids += [daemon.drop({"kind": "new", "repo": str(repo)}) for _ in range(8)]
        results = [daemon.wait(rid) for rid in ids]
        failures = [r["error"] for r in results if r["status"] != "ok"]
        assert not failures, failures
        deletes = [daemon.drop({"kind": "delete", "session": r["result"]["session"]}) for r in results[:12]]
        more = [daemon.drop({"kind": "new", "repo": str(repo)}) for _ in range(6)]
        for rid in deletes + more:
            assert daemon.wait(rid)["status"] == "ok", daemon.result(f"{rid}.json")
    finally:
        assert daemon.stop() == 0
    report = audit(daemon.state, repo, None)
    assert not report.problems, report.problems

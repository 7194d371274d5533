"""The fleet (SPEC 17) end to end: real daemons (one state directory each, on one
machine), a real nats-server with JetStream, a real S3 gateway (SeaweedFS) and a
bare checkpoint repository. No mocks."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import orjson
import pytest

from cairnd.fleet.bus import Bus
from cairnd.fleet.logstore import LogStore, make_store
from cairnd.config.fleet import parse_fleet
from daemonproc import Daemon, write_config
from fleetservers import NATS_PASSWORD, S3_KEYS, Nats, Store, checkpoint_repo, fleet_table
from gitrepos import commit_all, git, git_text, index_state, make_repo, tree_state

pytestmark = pytest.mark.slow

LEASE = 3.0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("weed")).start()
    yield s
    s.stop()


class Fleet:
    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self.nats = Nats(root / "nats").start()
        self.checkpoints = checkpoint_repo(root / "checkpoints.git")
        self.prefix = f"t-{uuid.uuid4().hex[:10]}"
        self.hosts: dict[str, Daemon] = {}

    def table(self, host: str) -> dict[str, object]:
        return fleet_table(self.nats, self.store, self.checkpoints, host, self.prefix,
                           lease_seconds=LEASE, wait_seconds=30)

    def host(self, name: str, lease: float = LEASE, **settings: object) -> Daemon:
        state = self.root / name
        state.mkdir()
        table = {**self.table(name), "lease_seconds": lease}
        daemon = Daemon(state, {"fleet": table, **settings})  # credentials from the files [fleet] names
        self.hosts[name] = daemon
        return daemon.start()

    def fleet_config(self, host: str = "probe"):
        return parse_fleet(self.table(host))

    def stored_log(self, session: str) -> bytes:
        async def read() -> bytes:
            return await LogStore(make_store(self.fleet_config())).rebuild(session)
        return anyio.run(read)

    def results(self, request_ids: list[str]) -> dict[str, dict]:
        async def read() -> dict[str, dict]:
            bus = await Bus.connect(self.fleet_config(), attempts=3)
            try:
                out = {}
                for rid in request_ids:
                    body = await bus.get_result(rid)
                    if body is not None:
                        out[rid] = orjson.loads(body)
                return out
            finally:
                await bus.close()
        return anyio.run(read)

    def host_of(self, path: str) -> str:
        for name, daemon in self.hosts.items():
            if Path(path).is_relative_to(daemon.state):
                return name
        raise AssertionError(f"{path} is under no host's state directory")

    def close(self) -> None:
        for daemon in self.hosts.values():
            if daemon.proc is not None and daemon.proc.poll() is None:
                try:
                    daemon.stop(timeout=30)
                except Exception:
                    daemon.kill9()
        self.nats.stop()


@pytest.fixture
def fleet(tmp_path, store, monkeypatch):
    for key in S3_KEYS:  # the store's keys come from fleet.store_credentials, nowhere else
        monkeypatch.delenv(key, raising=False)
    f = Fleet(tmp_path, store)
    yield f
    f.close()


def history_of(log: str) -> int:
    return int(re.findall(r"history=(\d+)", Path(log).read_text())[-1])


def test_two_hosts_spread_route_to_the_owner_and_fork_across(fleet, tmp_path):
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    # Leases long enough that the owner's restart below keeps its sessions.
    a = fleet.host("alpha", lease=30)
    b = fleet.host("beta", lease=30)

    # new requests go to any host: made through either door, they spread over both.
    made = []
    for i in range(6):
        door = (a, b)[i % 2]
        made.append(door.ok({"kind": "new", "repo": str(repo), "title": f"s{i}",
                             "prompt": f"write f{i}.txt: from session {i}"}))
    placed = {r["session"]: fleet.host_of(r["worktree"]) for r in made}
    assert set(placed.values()) == {"alpha", "beta"}, placed

    # A prompt dropped at the other host's door runs on the owner, in the owner's worktree.
    first = made[0]
    owner = placed[first["session"]]
    other = b if owner == "alpha" else a
    turn = other.ok({"kind": "prompt", "session": first["session"], "text": "append f0.txt: second turn"})
    assert turn["turn"] == 1
    assert Path(first["worktree"], "f0.txt").read_text() == "from session 0\nsecond turn\n"

    # Every log in the store is its owner's copy, byte for byte.
    for r in made:
        assert fleet.stored_log(r["session"]) == Path(r["log"]).read_bytes()

    # The owner restarted with accept_new = false (drained) keeps its sessions but takes
    # no new work: a fork of its session, dropped at its own door, is made on the other
    # host, with the exact files of the cut and the history before it.
    owner_daemon = a if owner == "alpha" else b
    owner_daemon.stop()
    owner_daemon.settings["fleet"] = {**owner_daemon.settings["fleet"], "accept_new": False}
    write_config(owner_daemon.config, owner_daemon.settings)
    owner_daemon.start()
    fork = owner_daemon.ok({"kind": "fork", "session": first["session"], "user_message_index": 1,
                            "prompt": "write g.txt: in the fork"})
    assert fleet.host_of(fork["worktree"]) != owner
    files = sorted(p.name for p in Path(fork["worktree"]).iterdir() if p.name != ".git")
    assert files == ["README.md", "f0.txt", "g.txt"]
    assert Path(fork["worktree"], "f0.txt").read_text() == "from session 0\n"  # the file at the cut
    assert history_of(fork["log"]) == 1   # its agent was given the kept turn
    parent_log = Path(first["log"]).read_bytes()
    kept = Path(fork["log"]).read_bytes()
    cut = kept.index(b"_posthog/fork_session_meta")
    cut = kept.rindex(b"\n", 0, cut) + 1
    assert parent_log.startswith(kept[:cut])
    assert fleet.stored_log(fork["session"]) == kept

    # `cairnd` with [fleet] puts a request straight on the stream (no spool involved) and
    # reads its result from the bucket; `cairnd status` shows the hosts and their sessions.
    env = {k: v for k, v in __import__("os").environ.items() if k not in S3_KEYS}
    cli = subprocess.run([__import__("sys").executable, "-m", "cairnd", "prompt", "-c", str(b.config), "--json",
                          first["session"], "append f0.txt: from the command line"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout)["result"]["turn"] == 2
    assert Path(first["worktree"], "f0.txt").read_text().endswith("from the command line\n")
    status = subprocess.run([__import__("sys").executable, "-m", "cairnd", "status", "-c", str(a.config), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    view = orjson.loads(status.stdout)["fleet"]
    alive = {h["host"]: h for h in view["hosts"] if h["alive"]}
    assert set(alive) == {"alpha", "beta"}
    assert first["session"] in alive[owner]["sessions"]
    assert view["queue"]["total"] == 0
    text = subprocess.run([__import__("sys").executable, "-m", "cairnd", "status", "-c", str(a.config)],
                          capture_output=True, text=True, env=env, timeout=120).stdout
    assert "alpha" in text and "beta" in text and "queue depth 0" in text

    # A rewind replaces the owner's log whole: the store holds the new log, byte for byte
    # (a new generation), and what the rewind left behind is a session of the fleet too.
    rewound = a.ok({"kind": "rewind", "session": first["session"], "user_message_index": 1})
    assert fleet.stored_log(first["session"]) == Path(first["log"]).read_bytes()
    abandoned = rewound["abandoned"]
    assert fleet.stored_log(abandoned) == (fleet.hosts[owner].state / "sessions" / abandoned / "log.ndjson").read_bytes()
    assert owners(fleet)[abandoned] == (owner, True)

    # Results live in the bucket, once per request, equal to what the spool doors show.
    ids = [p.stem for d in (a, b) for p in (d.spool / "done").glob("*.json")]
    stored = fleet.results(ids)
    assert set(stored) == set(ids)
    for d in (a, b):
        for path in (d.spool / "done").glob("*.json"):
            assert orjson.loads(path.read_bytes()) == stored[path.stem]

    # No credential anywhere: not in a log, a result, a status file or stderr on either
    # host, nor in any object of the store, nor in a result in the bucket (SPEC 17).
    secrets = [NATS_PASSWORD.encode(), S3_KEYS["AWS_SECRET_ACCESS_KEY"].encode()]
    for d in (a, b):
        for path in [*d.state.rglob("*"), d.stderr_path]:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert not any(secret in data for secret in secrets), path
    for body in [*stored.values()]:
        assert not any(secret in orjson.dumps(body) for secret in secrets)
    for session in [r["session"] for r in made] + [fork["session"], abandoned]:
        assert not any(secret in fleet.stored_log(session) for secret in secrets)


def wait_until(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # a server coming back answers errors for a moment
            last, value = exc, None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s (last error: {last!r})")


def owners(fleet: Fleet) -> dict[str, tuple[str, bool]]:
    """session -> (host, lease alive), read from the owners bucket."""
    async def read():
        from cairnd.fleet.leases import Leases
        bus = await Bus.connect(fleet.fleet_config(), attempts=3)
        try:
            leases = await Leases(bus.owners, "probe", LEASE).all()
            now = time.time()
            return {sid: (lease.host, lease.alive(now)) for sid, lease in leases.items()}
        finally:
            await bus.close()
    return anyio.run(read)


def prompts_in(log: bytes) -> int:
    return log.count(b'"method":"session/prompt"')


def test_kill9_of_a_host_mid_turn_its_session_is_taken_over(fleet, tmp_path):
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    hosts = {name: fleet.host(name) for name in ("alpha", "beta", "gamma")}
    door = hosts["alpha"]
    made = door.ok({"kind": "new", "repo": str(repo), "prompt": "write x.txt: one"})
    sid = made["session"]
    owner_name = fleet.host_of(made["worktree"])
    owner = hosts[owner_name]
    door = next(d for name, d in hosts.items() if name != owner_name)

    # A turn that is still running when its host is killed.
    cut = door.drop({"kind": "prompt", "session": sid, "text": "write y.txt: two\nsleep: 60"})
    wait_until(lambda: cut.encode() in fleet.stored_log(sid), 30, "the cut turn's start mirrored", step=0.3)
    # A request queued at the dead host's own door while it is down.
    owner.kill9()
    killed_at = time.monotonic()
    queued = owner.drop({"kind": "prompt", "session": sid, "text": "append x.txt: queued while down"})

    # Another host takes the session over within the lease time (plus one sweep).
    new_owner = wait_until(lambda: (o := owners(fleet).get(sid)) and o[1] and o[0] != owner_name and o[0],
                           6 * LEASE + 30, "takeover", step=0.2)
    took = time.monotonic() - killed_at
    print(f"takeover after {took:.1f} s (lease {LEASE:g} s)")
    cut_result = door.wait(cut, 60)
    assert cut_result["status"] == "error" and cut_result["error"]["code"] == "turn_interrupted", cut_result

    # The next prompt runs on the new owner, with the files of the last checkpoint and the history.
    turn = door.ok({"kind": "prompt", "session": sid, "text": "append x.txt: three"})
    taken = hosts[new_owner]
    worktree = next((taken.state / "worktrees" / sid).iterdir())
    assert (worktree / "x.txt").read_text() == "one\nthree\n"
    assert not (worktree / "y.txt").exists()   # the cut turn's file died with its host
    log = (taken.state / "sessions" / sid / "log.ndjson").read_bytes()
    assert history_of(str(taken.state / "sessions" / sid / "log.ndjson")) == prompts_in(log) - 1
    assert b'"stopReason":"interrupted"' in log
    assert turn["turn"] == 2

    # The dead host comes back: the request queued at its door gets one result, run by the
    # owner; the host itself runs nothing of the session again.
    owner.start()
    queued_result = owner.wait(queued, 60)
    assert queued_result["status"] == "ok", queued_result
    after = door.ok({"kind": "prompt", "session": sid, "text": "append x.txt: four"})
    assert after["turn"] == 4
    assert (worktree / "x.txt").read_text() == "one\nthree\nqueued while down\nfour\n"
    final = (taken.state / "sessions" / sid / "log.ndjson").read_bytes()
    assert final.count(cut.encode()) == 1 or final.count(b'"requestId":"' + cut.encode()) <= 1
    for rid in (cut, queued):
        starts = sum((d.state / "sessions" / sid / "log.ndjson").read_bytes().count(
            b'"requestId":"' + rid.encode() + b'"') for d in hosts.values()
            if (d.state / "sessions" / sid / "log.ndjson").exists())
        assert starts <= 2, (rid, starts)   # its turn_start (and result entry) once, on one host
    assert fleet.stored_log(sid) == final


def submodule_state(worktree: Path) -> tuple:
    """A submodule checkout, exactly: its files, its index, its HEAD (and whether detached)."""
    return (tree_state(worktree), index_state(worktree), git_text(worktree, "rev-parse", "HEAD"),
            git_text(worktree, "rev-parse", "--symbolic-full-name", "HEAD"))


def test_a_session_with_a_submodule_is_taken_over_with_it_exact(fleet, tmp_path):
    lib = make_repo(tmp_path / "lib", {"l.txt": "lib\n"})
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    commit_all(repo, "lib")
    hosts = {name: fleet.host(name) for name in ("alpha", "beta")}
    made = hosts["alpha"].ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: top"})
    sid, owner_name = made["session"], fleet.host_of(made["worktree"])
    owner = hosts[owner_name]
    door = next(d for name, d in hosts.items() if name != owner_name)
    # The agent commits inside the submodule, stages a change, changes it again, leaves a file untracked.
    door.ok({"kind": "prompt", "session": sid, "text": "\n".join([
        "write lib/n.txt: new", "run: git -C lib add n.txt && git -C lib -c user.name=a -c user.email=a@x commit -qm agent",
        "write lib/l.txt: staged", "run: git -C lib add l.txt", "write lib/l.txt: changed",
        "write lib/u.txt: untracked"])})
    before = submodule_state(Path(made["worktree"]) / "lib")
    assert git_text(Path(made["worktree"]) / "lib", "log", "-1", "--format=%s") == "agent"
    owner.kill9()
    new_owner = wait_until(lambda: (o := owners(fleet).get(sid)) and o[1] and o[0] != owner_name and o[0],
                           6 * LEASE + 30, "takeover", step=0.2)
    door.ok({"kind": "prompt", "session": sid, "text": "write b.txt: after"})
    worktree = next((hosts[new_owner].state / "worktrees" / sid).iterdir())
    assert (worktree / "b.txt").read_text() == "after\n"
    assert submodule_state(worktree / "lib") == before
    # Its own checkpoint there captures the submodule as it found it.
    last = [line for line in (hosts[new_owner].state / "sessions" / sid / "log.ndjson").read_bytes().splitlines()
            if b"agent_checkpoint" in line][-1]
    assert before[2].encode() in last


def stored_logs_equal_owners(fleet: Fleet, sessions: list[str]) -> None:
    leases = owners(fleet)
    for sid in sessions:
        host, alive = leases[sid]
        assert alive, (sid, host)
        local = (fleet.hosts[host].state / "sessions" / sid / "log.ndjson").read_bytes()
        assert fleet.stored_log(sid) == local, sid


@pytest.mark.slow
def test_burst_of_300_over_three_hosts_with_one_killed(fleet, tmp_path):
    import random
    rng = random.Random(15)
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    # A longer lease than the other tests: three busy daemons share two cores here.
    hosts = {name: fleet.host(name, idle_agent_seconds=5, max_parallel_turns=4, lease=8.0)
             for name in ("alpha", "beta", "gamma")}
    doors = list(hosts.values())
    seed = [doors[i % 3].ok({"kind": "new", "repo": str(repo), "prompt": f"write s.txt: {i}"})
            for i in range(6)]
    sessions = [r["session"] for r in seed]

    dropped: list[tuple[Daemon, str, str]] = []   # (door, request id, kind)
    victim = hosts["beta"]
    for n in range(300):
        door = doors[n % 3]
        if door is victim and victim.proc.poll() is not None:
            door = doors[(n + 1) % 3]
        roll = rng.random()
        if roll < 0.1:
            request = {"kind": "new", "repo": str(repo)}
        elif roll < 0.25:
            request = {"kind": "fork", "session": rng.choice(sessions), "user_message_index": 0}
        elif roll < 0.3:
            request = {"kind": "prompt", "session": "no-such-session", "text": "x"}
        else:
            sid = rng.choice(sessions)
            request = {"kind": "prompt", "session": sid, "text": f"append log.txt: {n}"}
        dropped.append((door, door.drop(request), request["kind"]))
        if n == 100:
            victim.kill9()
        if n == 160:
            victim.start()
        time.sleep(0.01)

    results = {}
    for door, rid, kind in dropped:
        results[rid] = door.wait(rid, 300)
    # Exactly one result each, in the door's spool, equal to the one in the bucket.
    for door, rid, _ in dropped:
        names = [p.name for folder in ("done", "failed") for pattern in (f"{rid}.json", f"{rid}.dup-*")
                 for p in (door.spool / folder).glob(pattern)]
        assert names == [f"{rid}.json"], names
    stored = fleet.results([rid for _, rid, _ in dropped])
    assert set(stored) == set(results)
    for rid, body in results.items():
        assert stored[rid] == body
    codes = {}
    for door, rid, kind in dropped:
        body = results[rid]
        if body["status"] != "ok":
            codes[body["error"]["code"]] = codes.get(body["error"]["code"], 0) + 1
            assert body["error"]["code"] in ("unknown_session", "turn_interrupted", "fleet_conflict"), body
            if body["error"]["code"] == "unknown_session":
                assert body["request"]["session"] == "no-such-session"
    print("error codes:", codes)

    # No turn ran twice: in the stored logs (each the whole history of its session) every
    # prompt's turn_start appears once, and once exactly for every prompt that succeeded.
    for sid in sessions:
        log = fleet.stored_log(sid)
        for door, rid, kind in dropped:
            if kind != "prompt" or results[rid]["request"]["session"] != sid:
                continue
            starts = log.count(b'"_cairnd/turn_start"') and log.count(b'"requestId":"' + rid.encode() + b'"')
            assert starts <= 1, (rid, starts)
            if results[rid]["status"] == "ok":
                assert starts == 1, rid
    made = sessions + [results[rid]["result"]["session"] for _, rid, kind in dropped
                       if kind in ("new", "fork") and results[rid]["status"] == "ok"]
    # the running logs' mirror catches up within a second or two of the last turn
    wait_until(lambda: stored_logs_equal_owners(fleet, made) or True, 60, "every stored log equals its owner's")


def local_log(daemon: Daemon, sid: str) -> bytes:
    return (daemon.state / "sessions" / sid / "log.ndjson").read_bytes()


def turn_completed(daemon: Daemon, sid: str, rid: str) -> bool:
    log = local_log(daemon, sid)
    at = log.find(b'"requestId":"' + rid.encode() + b'"')
    return at >= 0 and b"_posthog/turn_complete" in log[at:]


def test_nats_restarted_turns_complete_locally_and_results_wait(fleet, tmp_path):
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    a = fleet.host("alpha")
    made = a.ok({"kind": "new", "repo": str(repo), "prompt": "write n.txt: one"})
    sid = made["session"]
    running = a.drop({"kind": "prompt", "session": sid, "text": "sleep: 2\nappend n.txt: during the outage"})
    wait_until(lambda: running.encode() in local_log(a, sid), 30, "the turn started")
    fleet.nats.stop()
    queued = a.drop({"kind": "prompt", "session": sid, "text": "append n.txt: sent while NATS was down"})
    wait_until(lambda: turn_completed(a, sid, running), 30, "the turn completed locally")
    wait_until(lambda: f"cannot write the result of {running}" in a.stderr(), 30, "the result waiting for NATS")
    assert a.result(f"{running}.json") is None and a.result(f"{queued}.json") is None   # results wait
    fleet.nats.start()   # same port, same JetStream directory
    assert a.wait(running, 60)["status"] == "ok"
    assert a.wait(queued, 60)["status"] == "ok"
    assert Path(made["worktree"], "n.txt").read_text() == "one\nduring the outage\nsent while NATS was down\n"
    assert fleet.stored_log(sid) == local_log(a, sid)
    assert fleet.results([running, queued]).keys() == {running, queued}


def test_store_down_the_mirror_catches_up_and_past_the_bound_results_fail(fleet, tmp_path):
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    a = fleet.host("alpha")
    table = fleet.table("beta")
    made = a.ok({"kind": "new", "repo": str(repo), "prompt": "write m.txt: one"})
    sid = made["session"]
    fleet.store.stop()
    try:
        rid = a.drop({"kind": "prompt", "session": sid, "text": "append m.txt: while the store was down"})
        wait_until(lambda: turn_completed(a, sid, rid), 30, "the turn completed locally")
        wait_until(lambda: f"sync of session {sid} failed" in a.stderr(), 30, "the result waiting for the store")
        assert a.result(f"{rid}.json") is None   # the result waits for the mirror
    finally:
        fleet.store.start()
    assert a.wait(rid, 60)["status"] == "ok"
    assert fleet.stored_log(sid) == local_log(a, sid)

    # Past fleet.wait_seconds the result fails with a clear code; the turn is complete here,
    # and the mirror catches up once the store is back.
    a.stop()
    a.settings["fleet"] = {**a.settings["fleet"], "wait_seconds": 3}
    from daemonproc import write_config
    write_config(a.config, a.settings)
    a.start()
    fleet.store.stop()
    try:
        late = a.drop({"kind": "prompt", "session": sid, "text": "append m.txt: past the bound"})
        body = a.wait(late, 60)
        assert body["status"] == "error" and body["error"]["code"] == "store_unavailable", body
        assert "wait_seconds" in body["error"]["message"]
        assert turn_completed(a, sid, late)
    finally:
        fleet.store.start()
    wait_until(lambda: fleet.stored_log(sid) == local_log(a, sid), 30, "the mirror caught up", step=0.5)
    assert table  # (the table of another host is the same fleet)


def test_bad_fleet_configuration_is_refused_at_start_naming_the_key(tmp_path):
    for table, key in (
        ({"nats": "http://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x"}, "fleet.nats"),
        ({"nats": "nats://127.0.0.1:4222", "store": "cairnd/x", "checkpoints": "/x"}, "fleet.store"),
        ({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x"}, "fleet.checkpoints"),
        ({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x", "lease_seconds": 0},
         "fleet.lease_seconds"),
        ({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x", "hots": "a"}, "fleet.hots"),
        ({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x", "host": "a b"}, "fleet.host"),
        # a closed fleet (SPEC 17): an open NATS off loopback, an open store
        ({"nats": "tls://192.0.2.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x"}, "fleet.nats_credentials"),
        ({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x"}, "fleet.store_credentials"),
    ):
        state = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        state.mkdir()
        daemon = Daemon(state, {"fleet": table})
        proc = subprocess.run([__import__("sys").executable, "-m", "cairnd", "serve"],
                              env={**__import__("os").environ, "CAIRND_CONFIG": str(daemon.config)},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert key in proc.stderr, (key, proc.stderr)

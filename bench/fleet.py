"""The fleet (SPEC 17), on real services started here on 127.0.0.1 (nats-server -js,
SeaweedFS's S3 gateway, a bare checkpoint repository), with a 1000-file repository:

1. a fork made on another host than the session's owner (the log rebuilt from the
   store, the checkpoint objects fetched from the checkpoint repository) against a
   fork made on the owner itself; both go through the fleet (door, stream, results
   bucket), so the ratio is what materialising adds. Forks go to any host with room,
   so they are sent until each kind has been timed enough; the first fork on the other
   host fetches the objects, later ones find them there (the median is shown, the
   first too).
2. the per-turn cost of mirroring: one turn's log growth uploaded as a part plus its
   checkpoint ref pushed (create-only), timed by hand with cairnd's own functions,
   against the same turn through a one-host daemon without [fleet]; and a whole fleet
   turn (door, stream, turn, mirror, push, results bucket) against that turn too.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from daemonkit import SpoolClient, running_daemon
from measure import ROOT, Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, repo

import sys

sys.path.insert(0, str(ROOT / "tests"))
from fleetservers import S3_KEYS, Nats, Store, checkpoint_repo, fleet_table  # noqa: E402

from cairnd.fleet import remote  # noqa: E402
from cairnd.fleet.logstore import LogStore, make_store  # noqa: E402
from cairnd.fleet.materialise import refs_of, checkpoints_in  # noqa: E402
from cairnd.config.fleet import parse_fleet  # noqa: E402


def _host_of(path: str, states: dict[str, Path]) -> str:
    for name, state in states.items():
        if Path(path).is_relative_to(state):
            return name
    raise RuntimeError(f"{path} is under no host's state directory")


def _forks(root: Path, source: Path, nats: Nats, store: Store, checkpoints: Path, wanted: int,
           command: str) -> list[Row]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    states = {name: root / name for name in ("alpha", "beta")}
    for state in states.values():
        state.mkdir(parents=True)
    table = {name: fleet_table(nats, store, checkpoints, name, prefix, lease_seconds=10) for name in states}
    with running_daemon(states["alpha"], fleet=table["alpha"]) as alpha, \
            running_daemon(states["beta"], fleet=table["beta"]):
        client = SpoolClient(alpha.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": "fleet bench"}, timeout=600)
        owner = _host_of(made["worktree"], states)
        dirty(Path(made["worktree"]), 1000)
        client.ok({"kind": "prompt", "session": made["session"], "text": "a turn on a dirty tree"}, timeout=600)
        client.ok({"kind": "prompt", "session": made["session"], "text": "a second turn"}, timeout=600)
        local: list[float] = []
        elsewhere: list[float] = []
        first_elsewhere = None
        for _ in range(8 * wanted):
            result, took = client.request({"kind": "fork", "session": made["session"], "user_message_index": 1},
                                          timeout=600)
            if result.get("status") != "ok":
                raise RuntimeError(f"fork failed: {result.get('error')}")
            if _host_of(result["result"]["worktree"], states) == owner:
                local.append(took)
            else:
                if first_elsewhere is None:
                    first_elsewhere = took
                elsewhere.append(took)
            if len(local) > wanted and len(elsewhere) > wanted:
                break
        client.close()
    if len(local) < 2 or len(elsewhere) < 2:
        raise RuntimeError(f"forks did not spread over both hosts ({len(local)} on the owner, {len(elsewhere)} elsewhere)")
    local_time, elsewhere_time = median(local[1:]), median(elsewhere)
    return [Row("fleet: fork made on another host than the owner, 1000 files, dirty",
                f"{ms(elsewhere_time)} median, the first {ms(first_elsewhere or 0)} (it fetches the objects); "
                f"a fork on the owner: {ms(local_time)}; {len(elsewhere)} and {len(local) - 1} forks",
                ratio(elsewhere_time, local_time, "a fork on the owner"),
                target_text("log from the store and objects from the checkpoint repository", None), command)]


def _turn_cost(root: Path, source: Path, nats: Nats, store: Store, checkpoints: Path, repeat: int,
               command: str) -> list[Row]:
    # The turn without the fleet: a one-host daemon.
    plain: list[float] = []
    grown: list[tuple[Path, str, Path]] = []
    for name in ("plain", "fleet-host"):
        (root / name).mkdir(parents=True)
    with running_daemon(root / "plain") as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": "plain"}, timeout=600)
        for i in range(repeat + 1):
            result, took = client.request({"kind": "prompt", "session": made["session"],
                                           "text": f"append notes.txt: turn {i}"}, timeout=600)
            if result.get("status") != "ok":
                raise RuntimeError(f"turn failed: {result.get('error')}")
            if i:
                plain.append(took)
        client.close()
        log = Path(made["log"])
        grown.append((log, made["session"], Path(made["worktree"])))

    # The same work's mirroring by hand: each turn's bytes as one part, its ref pushed.
    fleet = parse_fleet(fleet_table(nats, store, checkpoints, "bench", f"bench-{uuid.uuid4().hex[:8]}"))
    log, session, worktree = grown[0]
    data = log.read_bytes()
    ends = [i + 1 for i, byte in enumerate(data) if byte == 0x0A]
    turn_ends = [end for end in ends if b"_posthog/agent_checkpoint" in data[:end].rsplit(b"\n", 2)[-2]]
    partial = root / "mirror" / "log.ndjson"
    partial.parent.mkdir(parents=True)
    logs = LogStore(make_store(fleet))
    repo_dir = git_toplevel_common(worktree)
    mirror: list[float] = []

    async def one(end: int, previous: int) -> float:
        with open(partial, "ab") as f:
            f.write(data[previous:end])
        refs = refs_of([p for p in checkpoints_in(data[previous:end]) if p.get("sessionId") == session])
        started = time.perf_counter()
        await anyio.to_thread.run_sync(remote.push_refs, repo_dir, str(checkpoints), refs)
        await logs.mirror(session, partial)
        return time.perf_counter() - started

    async def all_turns() -> None:
        previous = 0
        for index, end in enumerate(turn_ends):
            took = await one(end, previous)
            previous = end
            if index >= 2:  # the baseline and the first turn push the repository's history
                mirror.append(took)

    anyio.run(all_turns)

    # A whole turn through the fleet.
    fleet_turns: list[float] = []
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with running_daemon(root / "fleet-host", fleet=fleet_table(nats, store, checkpoints, "solo", prefix)) as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": "fleet"}, timeout=600)
        for i in range(repeat + 1):
            result, took = client.request({"kind": "prompt", "session": made["session"],
                                           "text": f"append notes.txt: turn {i}"}, timeout=600)
            if result.get("status") != "ok":
                raise RuntimeError(f"fleet turn failed: {result.get('error')}")
            if i:
                fleet_turns.append(took)
        client.close()
    plain_time, mirror_time, fleet_time = median(plain), median(mirror), median(fleet_turns)
    return [
        Row("fleet: per-turn cost of mirroring (log part upload + checkpoint ref push), 1000 files",
            f"{ms(mirror_time)} per turn (a turn without the fleet: {ms(plain_time)}; {len(mirror)} turns)",
            ratio(mirror_time, plain_time, "the turn without it"),
            target_text("small next to a turn", None), command),
        Row("fleet: a whole turn through the fleet (door, stream, turn, mirror, push, results bucket)",
            f"{ms(fleet_time)} (without the fleet: {ms(plain_time)}; {len(fleet_turns)} turns)",
            ratio(fleet_time, plain_time, "the turn without the fleet"),
            target_text("what a fleet costs a turn end to end", None), command),
    ]


def git_toplevel_common(worktree: Path) -> Path:
    common = git(worktree, "rev-parse", "--path-format=absolute", "--git-common-dir").decode().strip()
    return Path(common).parent


def run(quick: bool) -> list[Row]:
    command = command_of(__file__, quick)
    for key in S3_KEYS:  # the store's keys come from fleet.store_credentials
        os.environ.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-fleet-") as tmp:
        root = Path(tmp)
        store = Store(root / "weed").start()
        nats = Nats(root / "nats").start()
        try:
            checkpoints = checkpoint_repo(root / "checkpoints.git")
            source = root / "repo"
            git(root, "clone", "-q", "--shared", repo(1000), source)
            rows = _forks(root / "forks", source, nats, store, checkpoints, 2 if quick else 6, command)
            rows += _turn_cost(root / "turns", source, nats, store, checkpoints, 3 if quick else 10, command)
        finally:
            nats.stop()
            store.stop()
    return rows


if __name__ == "__main__":
    main(__file__, run)

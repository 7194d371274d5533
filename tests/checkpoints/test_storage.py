"""SPEC 15, storage over time: checkpoint refs kept packed, checkpoint objects packed off
the turn path, deleted sessions' logs removed after keep_deleted_days (`cairnd gc`),
and the per-repository figures of `cairnd status`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from cairnd.cli import main as cli
from cairnd.git import refs as gitrefs
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.config.settings import parse_config, ConfigError
from cairnd.state.registry import Registry
from cairnd.checkpoints.storage import REFS_HARD_LIMIT, DAY, RefKeeper, collect, count_loose_refs, expired, repository_figures
from cairnd.checkpoints.watch import WatchSet
from gitrepos import commit_exists, git_text, write


pytestmark = pytest.mark.repo(files={"a.txt": "a\n"})


@pytest.mark.slow
def test_checkpoint_refs_never_pile_up_past_the_hard_limit(repo: Path, tmp_path: Path) -> None:
    checkpoints = Checkpointer(WatchSet(), tmp_path / "indexes")
    try:
        highest = 0
        for turn in range(REFS_HARD_LIMIT * 2 + 5):
            write(repo, "a.txt", f"turn {turn}\n")
            checkpoints.take("s", repo, turn, 1 << 30)
            highest = max(highest, count_loose_refs(repo / ".git"))
        assert highest <= REFS_HARD_LIMIT
        assert checkpoints.refs.packs >= 2
        refs = gitrefs.list_refs(repo, "refs/cairnd/s/")
        assert len(refs) == REFS_HARD_LIMIT * 2 + 5  # packed or loose, every one is there
        assert git_text(repo, "rev-parse", "refs/cairnd/s/7") == refs["refs/cairnd/s/7"]
    finally:
        checkpoints.close()


@pytest.mark.slow
def test_background_upkeep_packs_refs_and_objects(repo: Path, tmp_path: Path) -> None:
    checkpoints = Checkpointer(WatchSet(), tmp_path / "indexes")
    try:
        for turn in range(60):
            write(repo, f"f{turn % 7}.txt", f"turn {turn}\n")
            checkpoints.take("s", repo, turn, 1 << 30)
        before = gitrefs.object_sizes(repo)
        assert before["loose"] > 60 and checkpoints.refs.due() == [repo / ".git"]
        for common in checkpoints.refs.due():
            checkpoints.refs.maintain(common)
        after = gitrefs.object_sizes(repo)
        assert after["loose"] == 0, after
        assert count_loose_refs(repo / ".git") == 0
        assert checkpoints.refs.due() == []
        # Every checkpoint is still whole and reachable.
        for sha in gitrefs.list_refs(repo, "refs/cairnd/s/").values():
            assert commit_exists(repo, sha)
        git_text(repo, "fsck", "--no-progress")
    finally:
        checkpoints.close()


def test_ref_keeper_counts_what_is_on_disk_when_it_first_sees_a_repository(repo: Path) -> None:
    for n in range(3):
        gitrefs.pin(repo, f"refs/cairnd/old/{n}", git_text(repo, "rev-parse", "HEAD"))
    keeper = RefKeeper()
    keeper.wrote(repo)
    assert keeper._loose[repo / ".git"] == 3


# --------------------------------------------------------------------------- gc


def _row(registry: Registry, session_id: str, repo: Path, deleted_days_ago: float | None) -> None:
    registry.begin_session(id=session_id, title=session_id, repo=repo, worktree=repo / "wt", in_place=False,
                           agent="reference", parent_id=None, root_id=session_id, turns=0, request_id=None)
    registry.commit_session(session_id, {})
    if deleted_days_ago is not None:
        registry.mark_deleted(session_id)
        import sqlite3
        db = sqlite3.connect(registry.path)
        db.execute("UPDATE sessions SET deleted_at = ? WHERE id = ?", (time.time() - deleted_days_ago * DAY, session_id))
        db.commit()
        db.close()


def test_expired_is_deleted_and_past_the_time_to_keep(repo: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "cairnd.db")
    _row(registry, "live", repo, None)
    _row(registry, "recent", repo, 29.5)
    _row(registry, "old", repo, 30.5)
    rows = registry.sessions(("ready", "deleted"))
    assert [r.id for r in expired(rows, 30, time.time())] == ["old"]
    assert sorted(r.id for r in expired(rows, 0, time.time())) == ["old", "recent"]


def _state(tmp_path: Path, repo: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    registry = Registry(_mkdir(state) / "cairnd.db")
    for session_id, days in (("live", None), ("recent", 2.0), ("old", 40.0)):
        _row(registry, session_id, repo, days)
        log = state / "sessions" / session_id / "log.ndjson"
        log.parent.mkdir(parents=True)
        log.write_bytes(b'{"type":"notification"}\n' * 10)
    gitrefs.pin(repo, "refs/cairnd/old/3", git_text(repo, "rev-parse", "HEAD"))  # left behind somehow
    config = tmp_path / "cairnd.toml"
    config.write_text(f'state_dir = "{state}"\nkeep_deleted_days = 30\n')
    return state, config


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_gc_dry_run_says_what_it_would_remove_and_removes_nothing(repo: Path, tmp_path: Path, capsys) -> None:
    state, config = _state(tmp_path, repo)
    assert cli.main(["gc", "--dry-run", "-c", str(config), "--json"]) == 0
    said = orjson.loads(capsys.readouterr().out)
    assert [item["session"] for item in said["sessions"]] == ["old"] and said["dry_run"] is True
    assert said["sessions"][0]["log_bytes"] > 0
    assert (state / "sessions" / "old" / "log.ndjson").exists()


def test_gc_removes_old_deleted_logs_and_their_refs_only(repo: Path, tmp_path: Path, capsys) -> None:
    state, config = _state(tmp_path, repo)
    assert cli.main(["gc", "-c", str(config)]) == 0
    assert "removed the logs of 1 session(s)" in capsys.readouterr().out
    assert not (state / "sessions" / "old").exists()
    assert (state / "sessions" / "recent" / "log.ndjson").exists()
    assert (state / "sessions" / "live" / "log.ndjson").exists()
    assert gitrefs.list_refs(repo, "refs/cairnd/old/") == {}
    # The lineage row stays, with its title.
    assert Registry(state / "cairnd.db").get("old").title == "old"
    assert collect(Registry(state / "cairnd.db").sessions(("deleted",)), lambda s: state / "sessions" / s,
                   30, dry_run=False) == []


def test_keep_deleted_days_is_checked() -> None:
    assert parse_config({"keep_deleted_days": 7}).keep_deleted_days == 7
    assert parse_config({}).keep_deleted_days == 30
    for bad in (-1, "30", True):
        with pytest.raises(ConfigError, match="keep_deleted_days"):
            parse_config({"keep_deleted_days": bad})


# --------------------------------------------------------------------------- status


def test_status_figures_per_repository(repo: Path, tmp_path: Path, capsys) -> None:
    state, config = _state(tmp_path, repo)
    gitrefs.pin(repo, "refs/cairnd/live/0", git_text(repo, "rev-parse", "HEAD"))
    rows = Registry(state / "cairnd.db").sessions(("ready", "deleted"))
    [figures] = repository_figures(rows, lambda s: os.stat(state / "sessions" / s / "log.ndjson").st_size)
    assert figures["repo"] == str(repo)
    assert (figures["sessions"], figures["deleted_sessions"]) == (1, 2)
    assert figures["checkpoint_refs"] == 2 and figures["loose_checkpoint_refs"] == 2
    assert figures["objects_bytes"] > 0
    assert figures["logs_bytes"] == 3 * 10 * len(b'{"type":"notification"}\n')
    assert cli.main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"repo       {repo}: 1 session(s), 2 checkpoint ref(s) (2 loose), objects" in out


@pytest.mark.slow
def test_the_daemon_collects_at_start_and_packs_refs_in_the_background(repo: Path, tmp_path: Path) -> None:
    """keep_deleted_days = 0: a deleted session's log goes at the daemon's next start
    (its daily collection runs at start); and turns past the pack threshold leave the
    refs packed without any turn waiting for it."""
    from daemonproc import Daemon
    from gitrepos import checkpoint_refs, vault_of

    daemon = Daemon(tmp_path / "state", {"keep_deleted_days": 0}).start()
    try:
        gone = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        daemon.ok({"kind": "delete", "session": gone})
        assert checkpoint_refs(daemon.state, repo, f"refs/cairnd/{gone}/") == {}  # at once
        assert (daemon.state / "sessions" / gone / "log.ndjson").exists()  # until gc
        live = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        for turn in range(55):
            daemon.ok({"kind": "prompt", "session": live, "text": f"write t.txt: {turn}"})
        deadline = time.monotonic() + 60
        while count_loose_refs(vault_of(daemon.state, repo)) >= 50:
            assert time.monotonic() < deadline, "the background never packed the refs"
            time.sleep(0.1)
        assert len(checkpoint_refs(daemon.state, repo, f"refs/cairnd/{live}/")) == 56
    finally:
        assert daemon.stop() == 0
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while (daemon.state / "sessions" / gone).exists():
            assert time.monotonic() < deadline, daemon.stderr()[-2000:]
            time.sleep(0.05)
        assert (daemon.state / "sessions" / live / "log.ndjson").exists()
    finally:
        assert daemon.stop() == 0

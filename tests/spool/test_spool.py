"""SPEC 6: the spool hands requests over by rename; each gets exactly one result and
nothing a writer dropped is lost."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from cairnd.errors import CairnError
from cairnd.state.layout import create_spool
from cairnd.spool.protocol import Claimed, Spool, count_entries, request_id_of, result_body


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    create_spool(tmp_path / "spool")
    return Spool(tmp_path / "spool")


def drop(spool: Spool, name: str, data: bytes) -> None:
    (spool.tmp / name).write_bytes(data)
    os.rename(spool.tmp / name, spool.new / name)


def test_submit_writes_through_tmp_and_claim_moves_to_cur(spool: Spool):
    spool.submit("r1", {"kind": "cancel", "session": "s1"})
    assert spool.pending() == ["r1.json"] and not list(spool.tmp.iterdir())
    claimed = spool.claim("r1.json")
    assert claimed.request_id == "r1" and claimed.problem is None
    assert orjson.loads(claimed.data) == {"kind": "cancel", "session": "s1"}
    assert (spool.cur / "r1.json").exists() and spool.pending() == []


def test_publish_is_the_only_result_and_frees_cur(spool: Spool):
    spool.submit("r1", {"kind": "cancel", "session": "s1"})
    claimed = spool.claim("r1.json")
    spool.publish(claimed, {"id": "r1", "status": "ok"}, keep_raw=False)
    assert spool.result_of("r1") == {"id": "r1", "status": "ok"}
    assert not list(spool.cur.iterdir()) and not (spool.failed / "r1.json").exists()
    assert not [p for p in spool.done.iterdir() if p.name.startswith(".")]


def test_pending_is_in_arrival_order_and_skips_dot_names(spool: Spool):
    for name in ("c.json", "a.json", ".hidden.json", "b.json"):
        drop(spool, name, b"{}")
        os.utime(spool.new / name)
    assert spool.pending() == ["c.json", "a.json", "b.json"]


def test_a_vanished_request_is_not_claimed(spool: Spool):
    assert spool.claim("gone.json") is None


def test_bad_names_are_answered_under_their_own_name(spool: Spool):
    drop(spool, "not json name.txt", b"{}")
    claimed = spool.claim("not json name.txt")
    assert claimed.request_id is None and claimed.problem.code == "bad_name"


def test_duplicates_get_numbered_names(spool: Spool):
    spool.submit("r1", {"kind": "cancel", "session": "s1"})
    first = spool.claim("r1.json")
    spool.submit("r1", {"kind": "cancel", "session": "s2"})
    dup = spool.claim("r1.json")  # the first is still in cur/
    assert dup.name == "r1.dup-1.json" and dup.problem.code == "duplicate_id"
    spool.publish(first, {"status": "ok"}, keep_raw=False)
    spool.publish(dup, {"status": "error"}, keep_raw=False)
    spool.submit("r1", {"kind": "cancel", "session": "s3"})
    assert spool.claim("r1.json").name == "r1.dup-2.json"


def test_symlinks_are_not_followed(spool: Spool, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text('{"kind":"cancel","session":"s1"}')
    os.symlink(secret, spool.new / "r1.json")
    claimed = spool.claim("r1.json")
    assert claimed.problem.code == "not_a_file" and claimed.data is None
    assert str(secret) in claimed.problem.message
    spool.publish(claimed, {"status": "error"}, keep_raw=True)
    assert os.path.islink(spool.failed / "r1.json.raw") and secret.read_text().startswith("{")


def test_fifos_and_directories_are_refused_without_blocking(spool: Spool):
    os.mkfifo(spool.new / "f.json")
    (spool.new / "d.json").mkdir()
    (spool.new / "d.json" / "inside").write_text("kept")
    fifo = spool.claim("f.json")
    directory = spool.claim("d.json")
    assert fifo.problem.code == "not_a_file" and "fifo" in fifo.problem.message
    assert directory.problem.code == "not_a_file" and "directory" in directory.problem.message
    spool.publish(directory, {"status": "error"}, keep_raw=True)
    assert (spool.failed / "d.json.raw" / "inside").read_text() == "kept"


def test_too_large_requests_are_kept_raw(spool: Spool):
    data = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    drop(spool, "big.json", data)
    claimed = spool.claim("big.json")
    assert claimed.problem.code == "too_large" and claimed.data is None
    spool.publish(claimed, {"status": "error"}, keep_raw=True)
    assert (spool.failed / "big.json.raw").read_bytes() == data


def test_reclaim_after_a_crash(spool: Spool):
    spool.submit("r1", {"kind": "cancel", "session": "s1"})
    spool.claim("r1.json")
    assert spool.in_progress() == ["r1.json"]
    again = spool.reclaim("r1.json")
    assert again.request_id == "r1" and again.recovered and again.data


# -- the file protocol's pure rules -------------------------------------------------------


@pytest.mark.parametrize("name", ["a.json", "A-1_b.c.json", "x" * 128 + ".json"])
def test_good_file_names(name: str) -> None:
    assert request_id_of(name) == name[:-5]


@pytest.mark.parametrize("name", ["a.txt", ".json", "-a.json", "x" * 129 + ".json", "a b.json", "a\nb.json", "ü.json"])
def test_bad_file_names(name: str) -> None:
    with pytest.raises(CairnError) as info:
        request_id_of(name)
    assert info.value.code == "bad_name"


def test_a_result_file_carries_the_request_and_one_outcome() -> None:
    claimed = Claimed(name="r1.json", request_id="r1", received_at="T0")
    ok = result_body(claimed, {"kind": "cancel", "session": "s"}, "cancel", finished_at="T1",
                     result={"session": "s", "cancelled": False})
    assert ok == {"id": "r1", "kind": "cancel", "status": "ok", "request": {"kind": "cancel", "session": "s"},
                  "result": {"session": "s", "cancelled": False}, "received_at": "T0", "finished_at": "T1"}
    assert list(ok) == ["id", "kind", "status", "request", "result", "received_at", "finished_at"]
    failed = result_body(claimed, None, None, finished_at="T1", error=CairnError("bad_json", "not JSON"))
    assert failed["status"] == "error" and failed["request"] is None and "result" not in failed
    assert failed["error"] == {"code": "bad_json", "message": "not JSON"}


def test_a_result_that_is_not_json_becomes_one_internal_error() -> None:
    claimed = Claimed(name="r1.json", request_id="r1", received_at="T0")
    body = result_body(claimed, {"kind": "new"}, "new", finished_at="T1", result={"odd": {1, 2}})
    assert body["status"] == "error" and "result" not in body
    assert body["error"]["code"] == "internal" and "could not be written as JSON" in body["error"]["message"]


def test_depths_count_requests_and_results(tmp_path: Path) -> None:
    for sub, names in {"new": ["a.json", ".hidden"], "cur": ["b.json"], "done": ["c.json", "d.json"],
                       "failed": ["e.json", "e.json.raw"]}.items():
        (tmp_path / sub).mkdir()
        for name in names:
            (tmp_path / sub / name).write_text("{}")
    assert count_entries(tmp_path, ("new", "cur", "done", "failed")) == {"new": 1, "cur": 1, "done": 2, "failed": 1}
    assert count_entries(tmp_path / "missing", ("new", "cur", "done", "failed")) == {"new": 0, "cur": 0, "done": 0, "failed": 0}
    assert count_entries(tmp_path) == {"new": 1, "cur": 1}

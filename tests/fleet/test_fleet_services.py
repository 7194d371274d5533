"""The fleet's services layer against real servers: the log mirror on S3 (SeaweedFS),
the create-only checkpoint repository, the results bucket and leases on JetStream."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import orjson
import pytest

from cairnd.errors import CairnError
from cairnd.fleet import remote
from cairnd.fleet.bus import Bus, request_id_of_key, request_key
from cairnd.fleet.leases import Lease, Leases, decide
from cairnd.fleet.logstore import LogStore, StoreConflict, make_store, tile, whole_lines
from cairnd.config.fleet import parse_fleet
from fleetservers import S3_KEYS, Nats, Store, checkpoint_repo, fleet_table
from gitrepos import git, git_text, make_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("weed")).start()
    yield s
    s.stop()


@pytest.fixture
def nats(tmp_path):
    n = Nats(tmp_path / "nats").start()
    yield n
    n.stop()


@pytest.fixture(autouse=True)
def s3_credentials(monkeypatch):
    for key in S3_KEYS:  # the store's keys come from fleet.store_credentials, nowhere else
        monkeypatch.delenv(key, raising=False)


def fleet_for(nats, store, tmp_path, host="h1"):
    return parse_fleet(fleet_table(nats, store, tmp_path / "cp.git", host, f"t-{uuid.uuid4().hex[:8]}"))


# -- pure parts ----------------------------------------------------------------------------

def test_whole_lines_keeps_only_complete_lines():
    assert whole_lines(b"a\nb\nc") == b"a\nb\n"
    assert whole_lines(b"abc") == b""
    assert whole_lines(b"a\nbbbbbb\n", limit=4) == b"a\n"
    assert whole_lines(b"aaaaaa\nb\n", limit=3) == b"aaaaaa\n"   # one long line goes whole


def test_tile_refuses_gaps_and_overlaps():
    assert tile([(0, 3), (3, 5)]) == 8
    with pytest.raises(ValueError):
        tile([(0, 3), (4, 1)])
    with pytest.raises(ValueError):
        tile([(0, 3), (2, 1)])


def test_request_keys_round_trip():
    for rid in ("r1", "a.b", "x..y", "end.", "A_b-9"):
        key = request_key(rid)
        assert request_id_of_key(key) == rid
    assert request_key("x..y") != request_key("r.x..y")


def test_lease_decisions():
    now = 100.0
    assert decide(None, "a", now) == "create"
    assert decide(Lease("a", 90), "a", now) == "renew"
    assert decide(Lease("b", 110), "a", now) == "wait"
    assert decide(Lease("b", 99), "a", now) == "take"


# -- the log mirror on a real S3 gateway ----------------------------------------------------

def test_log_mirror_rebuilds_byte_for_byte_and_is_create_only(nats, store, tmp_path):
    fleet = fleet_for(nats, store, tmp_path)
    log = tmp_path / "log.ndjson"

    async def main():
        logs = LogStore(make_store(fleet))
        log.write_bytes(b'{"a":1}\n{"b":2}\n{"torn"')
        assert await logs.mirror("s1", log) == 16
        with open(log, "ab") as f:
            f.write(b':3}\n' + b'{"c":"' + b"x" * 10000 + b'"}\n')
        size = await logs.mirror("s1", log)
        assert size == log.stat().st_size
        assert await logs.rebuild("s1") == log.read_bytes()
        assert [offset for offset, _ in await logs.parts("s1")] == [0, 16]
        # Mirroring again uploads nothing; a second host that starts from what the store holds
        # agrees with it.
        assert await logs.mirror("s1", log) == size
        other = LogStore(make_store(fleet))
        theirs = tmp_path / "theirs.ndjson"
        theirs.write_bytes(log.read_bytes())
        assert await other.mirror("s1", theirs) == size
        # Two hosts that both believe they own the log cannot overwrite each other: the
        # second to write at an offset learns it lost.
        with open(log, "ab") as f:
            f.write(b'{"mine":1}\n')
        with open(theirs, "ab") as f:
            f.write(b'{"theirs":2}\n')
        assert await logs.mirror("s1", log) == size + 11
        with pytest.raises(StoreConflict):
            await other.mirror("s1", theirs)
        assert await other.rebuild("s1") == log.read_bytes()
        forked = log

        # A log replaced whole (a rewind renames a new file into place) starts a new
        # generation: the stored log is the new file, byte for byte.
        replaced = tmp_path / "new.ndjson"
        replaced.write_bytes(b'{"a":1}\n{"rewound":true}\n')
        os.rename(replaced, forked)
        assert await logs.mirror("s1", forked) == forked.stat().st_size
        assert await other.rebuild("s1") == forked.read_bytes()
        with open(forked, "ab") as f:
            f.write(b'{"after":1}\n')
        await logs.mirror("s1", forked)
        assert await LogStore(make_store(fleet)).rebuild("s1") == forked.read_bytes()

    anyio.run(main)


# -- the checkpoint repository ----------------------------------------------------------------

def test_checkpoint_refs_are_create_only_on_both_sides(tmp_path):
    bare = checkpoint_repo(tmp_path / "cp.git")
    repo = make_repo(tmp_path / "repo", {"a.txt": "one\n"})
    first = git_text(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    second = git_text(repo, "rev-parse", "HEAD")
    remote.push_refs(repo, str(bare), {"refs/cairnd/s/0": first})
    remote.push_refs(repo, str(bare), {"refs/cairnd/s/0": first})  # the same again: fine
    with pytest.raises(CairnError) as err:
        remote.push_refs(repo, str(bare), {"refs/cairnd/s/0": second})
    assert err.value.code == "checkpoint_conflict"
    # The hook on the remote refuses a move or a delete whoever pushes and however.
    moved = subprocess.run(["git", "push", "--force", str(bare), f"{second}:refs/cairnd/s/0"],
                           cwd=repo, capture_output=True, text=True)
    assert moved.returncode != 0 and "never move" in moved.stderr
    deleted = subprocess.run(["git", "push", str(bare), ":refs/cairnd/s/0"], cwd=repo, capture_output=True, text=True)
    assert deleted.returncode != 0
    assert git_text(bare, "for-each-ref", "--format=%(refname) %(objectname)", "refs/cairnd/s") == \
        f"refs/cairnd/s/0 {first}"
    # Another host fetches it into a repository of its own, history and all.
    other = remote.ensure_host_repo(tmp_path / "state2", str(repo))
    remote.fetch_refs(other, str(bare), ["refs/cairnd/s/0"])
    assert git_text(other, "rev-parse", "refs/cairnd/s/0") == first
    with pytest.raises(CairnError) as missing:
        remote.fetch_refs(other, str(bare), ["refs/cairnd/s/9"])
    assert missing.value.code == "commit_missing"


def test_new_repo_url_is_cloned_once_per_host(tmp_path):
    origin = make_repo(tmp_path / "origin", {"a.txt": "one\n"})
    url = f"file://{origin}"
    clone = remote.clone_url(tmp_path / "state", url)
    assert remote.resolve_in_clone(clone, "HEAD") == git_text(origin, "rev-parse", "HEAD")
    git(origin, "commit", "-q", "--allow-empty", "-m", "later")
    assert remote.clone_url(tmp_path / "state", url) == clone
    assert remote.resolve_in_clone(clone, "HEAD") == git_text(origin, "rev-parse", "HEAD")
    with pytest.raises(CairnError) as err:
        remote.clone_url(tmp_path / "state", f"file://{tmp_path}/nowhere")
    assert err.value.code == "repo_not_found"


# -- JetStream: results written once, leases by compare-and-set ----------------------------------

def test_results_are_written_once(nats, store, tmp_path):
    fleet = fleet_for(nats, store, tmp_path)

    async def main():
        a = await Bus.connect(fleet, attempts=3)
        b = await Bus.connect(fleet, attempts=3)
        try:
            outcomes = []

            async def write(bus, body):
                outcomes.append((await bus.put_result("r..1", body), body))

            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(write, a if i % 2 else b, orjson.dumps({"n": i}))
            winners = [body for won, body in outcomes if won]
            assert len(winners) == 1
            assert await a.get_result("r..1") == winners[0]
            assert await b.get_result("missing") is None
        finally:
            await a.close()
            await b.close()

    anyio.run(main)


def test_a_lease_has_one_owner_and_lapses(nats, store, tmp_path):
    fleet = fleet_for(nats, store, tmp_path)

    async def main():
        bus = await Bus.connect(fleet, attempts=3)
        try:
            a = Leases(bus.owners, "a", 0.5)
            b = Leases(bus.owners, "b", 0.5)
            owned_a, _ = await a.acquire("s1")
            owned_b, before = await b.acquire("s1")
            assert owned_a and not owned_b and before is not None and before.host == "a"
            assert await a.renew("s1")
            with anyio.fail_after(30):  # a stops renewing: the lease lapses (a bound, not a timing claim)
                while await b.owner("s1") is not None:
                    await anyio.sleep(0.05)
            taken, before = await b.acquire("s1")
            assert taken and before.host == "a"
            assert not await a.renew("s1")   # a learns it lost the session
            assert await a.owner("s1") == "b"
        finally:
            await bus.close()

    anyio.run(main)


def test_the_servers_let_in_only_the_fleets_credentials(nats, store, tmp_path):
    """Attack 7: the fleet is closed. A stranger on the machine (no credentials, or wrong
    ones) can neither join NATS, nor read or write the store; the fleet's own keys can."""
    table = fleet_table(nats, store, tmp_path / "cp.git", "h1", "closed")
    loopback = {k: v for k, v in table.items() if k not in ("nats_user", "nats_password", "store_credentials")}
    for stranger in ({}, {"nats_user": "cairnd-fleet", "nats_password": "guessed"}, {"nats_token": "guessed"}):
        with pytest.raises(CairnError) as err:  # loopback lets the config through; the server does not
            anyio.run(lambda: Bus.connect(parse_fleet({**loopback, **stranger}), attempts=1))
        assert err.value.code == "fleet_unavailable"
    from obstore.store import S3Store
    import obstore
    quick = {"client_options": {"allow_http": True, "timeout": "10s"}, "virtual_hosted_style_request": False,
             "retry_config": {"max_retries": 0, "retry_timeout": __import__("datetime").timedelta(seconds=5)}}
    anonymous = S3Store(store.bucket, endpoint=store.endpoint, region="us-east-1", skip_signature=True, **quick)
    with pytest.raises(Exception):
        obstore.put(anonymous, "closed/intruder", b"x")
    wrong = S3Store(store.bucket, endpoint=store.endpoint, region="us-east-1", access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                    secret_access_key="guessed", **quick)
    with pytest.raises(Exception):
        list(obstore.list(wrong, prefix="closed/"))
    fleet = parse_fleet(table)  # and the fleet's own keys get in
    async def joins() -> None:
        bus = await Bus.connect(fleet, attempts=3)
        await bus.close()
    anyio.run(joins)
    obstore.put(make_store(fleet), "closed/probe", b"ok")
    assert bytes(obstore.get(make_store(fleet), "closed/probe").bytes()) == b"ok"


def test_a_token_is_a_way_in_too(tmp_path, store):
    token = "nats-token-" + uuid.uuid4().hex
    server = Nats(tmp_path / "tok", user=None, password=None, token=token).start()
    try:
        table = fleet_table(server, store, tmp_path / "cp.git", "h1", "tok")
        assert table["nats_token"] == token and "nats_user" not in table
        async def joins() -> None:
            bus = await Bus.connect(parse_fleet(table), attempts=3)
            await bus.close()
        anyio.run(joins)
        with pytest.raises(CairnError):
            anyio.run(lambda: Bus.connect(parse_fleet({**table, "nats_token": "wrong"}), attempts=1))
    finally:
        server.stop()


def test_unreachable_nats_is_a_clear_error(tmp_path, store):
    fleet = parse_fleet({"nats": "nats://127.0.0.1:1", "store": "s3://cairnd/x", "checkpoints": "/x",
                         "store_endpoint": store.endpoint})
    with pytest.raises(CairnError) as err:
        anyio.run(lambda: Bus.connect(fleet, attempts=2))
    assert err.value.code == "fleet_unavailable" and "fleet.nats" in err.value.message


# -- [fleet] validation ------------------------------------------------------------------------

GOOD = {"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/prod", "checkpoints": "/srv/cp.git",
        "store_endpoint": "http://127.0.0.1:8333"}


def test_fleet_table_parses_with_defaults():
    fleet = parse_fleet({**GOOD, "host": "builder-3", "store_endpoint": "http://127.0.0.1:8333"})
    assert fleet.host == "builder-3" and fleet.nats == ("nats://127.0.0.1:4222",)
    assert (fleet.bucket, fleet.prefix) == ("cairnd", "prod/")
    assert fleet.lease_seconds == 15.0 and fleet.wait_seconds == 120.0 and fleet.accept_new is True
    assert parse_fleet({**GOOD, "accept_new": False}).accept_new is False
    assert parse_fleet({**GOOD, "store": "s3://cairnd"}).prefix == ""
    assert parse_fleet(GOOD).host  # the hostname by default
    assert parse_fleet({**GOOD, "checkpoints": "git@host:cairnd.git"}).checkpoints == "git@host:cairnd.git"


@pytest.mark.parametrize("change, key", [
    ({"nats": "http://127.0.0.1:4222"}, "fleet.nats"),
    ({"nats": "nats://127.0.0.1:x"}, "fleet.nats"),
    ({"nats": 4222}, "fleet.nats"),
    ({"store": "cairnd/prod"}, "fleet.store"),
    ({"store": "s3://Bad_Bucket/x"}, "fleet.store"),
    ({"store_endpoint": "127.0.0.1:8333"}, "fleet.store_endpoint"),
    ({"checkpoints": "relative/path.git"}, "fleet.checkpoints"),
    ({"host": "has space"}, "fleet.host"),
    ({"lease_seconds": 0}, "fleet.lease_seconds"),
    ({"wait_seconds": True}, "fleet.wait_seconds"),
    ({"accept_new": "no"}, "fleet.accept_new"),
    ({"natz": "x"}, "fleet.natz"),
])
def test_bad_fleet_values_are_refused_by_key(change, key):
    from cairnd.config.fleet import FleetConfigError
    with pytest.raises(FleetConfigError) as err:
        parse_fleet({**GOOD, **change})
    assert key in str(err.value)


@pytest.mark.parametrize("missing", ["nats", "store", "checkpoints"])
def test_required_fleet_keys(missing):
    from cairnd.config.fleet import FleetConfigError
    with pytest.raises(FleetConfigError) as err:
        parse_fleet({k: v for k, v in GOOD.items() if k != missing})
    assert f"fleet.{missing} is missing" in str(err.value)


def _refused(table, environ=None) -> str:
    from cairnd.config.fleet import FleetConfigError
    with pytest.raises(FleetConfigError) as err:
        parse_fleet(table, environ or {})
    return str(err.value)


def test_an_open_or_plain_text_fleet_off_loopback_is_refused_by_key(tmp_path):
    keys = tmp_path / "s3.env"
    keys.write_text("# the fleet's store\nexport AWS_ACCESS_KEY_ID=AKIA1\nAWS_SECRET_ACCESS_KEY='very secret'\n")
    keys.chmod(0o600)
    remote = {"nats": "tls://nats.example:4222", "store": "s3://cairnd/prod", "checkpoints": "ssh://git@cp/cairnd.git",
              "store_endpoint": "https://s3.example", "nats_user": "u", "nats_password": "nats-pass",
              "store_credentials": str(keys)}
    fleet = parse_fleet(remote, {})  # closed: credentials, TLS
    assert (fleet.store_keys.access_key_id, fleet.store_keys.secret_access_key) == ("AKIA1", "very secret")
    assert "very secret" not in repr(fleet) and "nats-pass" not in repr(fleet)  # no secret in a traceback
    no_nats_auth = {k: v for k, v in remote.items() if k not in ("nats_user", "nats_password")}
    assert "fleet.nats_credentials" in _refused(no_nats_auth) and "fleet.nats_token" in _refused(no_nats_auth)
    assert "fleet.nats" in _refused({**remote, "nats": "nats://nats.example:4222"})
    assert "tls://nats.example:4222" in _refused({**remote, "nats": "nats://nats.example:4222"})
    assert "fleet.store_endpoint" in _refused({**remote, "store_endpoint": "http://s3.example"})
    assert "fleet.store_credentials" in _refused({k: v for k, v in remote.items() if k != "store_credentials"})
    assert "fleet.store_credentials" in _refused({k: v for k, v in remote.items() if k != "store_endpoint"
                                                  and k != "store_credentials"})  # AWS itself
    assert "fleet.checkpoints" in _refused({**remote, "checkpoints": "http://cp.example/cairnd.git"})
    assert "fleet.nats" in _refused({**remote, "nats": "tls://u:p@nats.example:4222"})  # no secret in a URL
    assert "fleet.nats" in _refused({**remote, "nats": "tls://TOKEN@nats.example:4222"})
    assert "fleet.nats_password" in _refused({**remote, "nats_password": None} | {"nats_password": None}
                                             if False else {k: v for k, v in remote.items() if k != "nats_password"})
    assert "fleet.nats_token" in _refused({**remote, "nats_token": "t"})  # one way in, not two
    assert "fleet.insecure" in _refused({**remote, "insecure": "yes"})
    # the usual AWS_* variables are credentials too; insecure = true is the operator's choice
    env_keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert parse_fleet({k: v for k, v in remote.items() if k != "store_credentials"}, env_keys).store_keys is None
    assert parse_fleet({**no_nats_auth, "nats": "nats://nats.example:4222", "insecure": True}, {}).insecure
    # on loopback, nothing is asked
    assert parse_fleet({"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x",
                        "store_endpoint": "http://localhost:8333"}, {}).nats_auth.given is False


def test_a_credentials_file_is_checked_by_key(tmp_path):
    base = {"nats": "nats://127.0.0.1:4222", "store": "s3://cairnd/x", "checkpoints": "/x",
            "store_endpoint": "http://127.0.0.1:8333"}
    keys = tmp_path / "s3.env"
    keys.write_text("AWS_ACCESS_KEY_ID=AKIA1\n")
    keys.chmod(0o600)
    said = _refused({**base, "store_credentials": str(keys)})
    assert "fleet.store_credentials" in said and "AWS_SECRET_ACCESS_KEY" in said
    keys.write_text("AWS_ACCESS_KEY_ID=AKIA1\nAWS_SECRET_ACCESS_KEY=leak-me\n")
    keys.chmod(0o644)
    said = _refused({**base, "store_credentials": str(keys)})
    assert "readable by every user" in said and "leak-me" not in said
    assert "fleet.store_credentials" in _refused({**base, "store_credentials": str(tmp_path / "none")})
    assert "fleet.nats_tls_ca" in _refused({**base, "nats_tls_ca": str(tmp_path / "none.pem")})
    assert "fleet.nats_credentials" in _refused({**base, "nats_credentials": str(tmp_path / "none.creds")})


def test_config_without_fleet_is_one_host():
    from cairnd.config.settings import parse_config
    assert parse_config({}).fleet is None
    assert parse_config({"fleet": GOOD}).fleet.bucket == "cairnd"


def test_git_urls_are_accepted_as_repo():
    from cairnd.spool.requests import is_git_url, validate_request
    for url in ("https://example.org/x/app.git", "ssh://git@host/app.git", "git@host:app.git", "file:///srv/app"):
        assert is_git_url(url)
        assert validate_request({"kind": "new", "repo": url}).repo == url
    assert not is_git_url("relative/path")
    assert remote.repo_name("https://example.org/x/app.git") == "app"
    assert remote.repo_name("/srv/app/") == "app"

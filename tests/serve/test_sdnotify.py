"""SPEC 11, Type=notify: sd_notify(3) spoken over a real datagram socket.

The module on its own (path and abstract sockets, no socket at all, the watchdog
interval), then the daemon: READY=1 only once the spool is scanned and watched,
STATUS= with the queue, WATCHDOG=1 at the configured interval, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from cairnd.serve.sdnotify import Notifier, watchdog_interval
from daemonproc import Daemon
from gitrepos import make_repo

STATUS_LINE = re.compile(r"^STATUS=queue: \d+ new, \d+ in progress; \d+ turn\(s\) running$")


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


# -- the module --------------------------------------------------------------------------


def test_a_path_socket_gets_one_datagram_per_call(tmp_path: Path):
    path = str(tmp_path / "notify.sock")
    with receiver(path) as sock:
        notifier = Notifier(path)
        assert notifier.enabled
        assert notifier.notify(READY=1, STATUS="serving") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert notifier.notify(WATCHDOG=1) is True
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
        assert notifier.notify(WATCHDOG=1) is False


def test_an_abstract_socket_is_named_with_a_leading_at():
    name = f"cairnd-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver("\0" + name) as sock:
        assert Notifier("@" + name).notify(STOPPING=1) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_the_socket_comes_from_NOTIFY_SOCKET(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = str(tmp_path / "env.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with receiver(path) as sock:
        assert Notifier().notify(READY=1) is True
        assert sock.recv(4096) == b"READY=1"


def test_without_a_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.notify(READY=1) is False
    assert Notifier("").notify(READY=1) is False
    notifier.close()


def test_a_socket_nobody_listens_on_never_fails_the_caller(tmp_path: Path):
    assert Notifier(str(tmp_path / "nobody.sock")).notify(READY=1) is False
    assert Notifier("@cairnd-nobody-listens-here").notify(READY=1) is False


@pytest.mark.parametrize("environ, interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.25),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": ""}, None),
])
def test_the_watchdog_interval_is_half_of_WATCHDOG_USEC(environ: dict[str, str], interval: float | None):
    assert watchdog_interval(environ) == interval


# -- the daemon ----------------------------------------------------------------------------


def stop(daemon: Daemon) -> None:
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_ready_comes_once_the_spool_is_scanned_and_watched(tmp_path: Path):
    # Requests dropped while it was down are all claimed before READY=1; with the
    # rescan timer out of the way, a request dropped right after READY=1 is answered
    # only because new/ is watched.
    daemon = Daemon(tmp_path / "state", {"rescan_seconds": 3600})
    for sub in ("tmp", "new"):
        (daemon.spool / sub).mkdir(parents=True)
    early = [daemon.drop(b"{broken", request_id=f"early-{n}") for n in range(150)]
    early.append(daemon.drop({"kind": "cancel", "session": "nosuchsession"}, request_id="early-cancel"))
    daemon.start()
    try:
        waiting = [n for n in os.listdir(daemon.spool / "new") if not n.startswith(".")]
        assert waiting == [], f"READY=1 came with {len(waiting)} request(s) not yet claimed"
        late = daemon.drop({"kind": "cancel", "session": "nosuchsession"}, request_id="late")
        assert daemon.wait(late, timeout=20)["error"]["code"] == "unknown_session"
        for rid in early:
            assert daemon.wait(rid)["status"] == "error"
        assert daemon.notifications.count("READY=1") == 1
    finally:
        stop(daemon)


@pytest.mark.slow
def test_ready_carries_a_status_line_with_the_queue(tmp_path: Path):
    daemon = Daemon(tmp_path / "state").start()
    try:
        ready = daemon.notifications.index("READY=1")
        statuses = [n for n in daemon.notifications[ready:] if n.startswith("STATUS=")]
        assert statuses and all(STATUS_LINE.match(s) for s in statuses), daemon.notifications
    finally:
        stop(daemon)


@pytest.mark.slow
def test_status_says_when_a_turn_is_running(tmp_path: Path):
    repo = make_repo(tmp_path / "project")
    daemon = Daemon(tmp_path / "state", {"rescan_seconds": 0.2}).start()
    try:
        session = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
        slow = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 30"})
        deadline = time.monotonic() + 30
        while "STATUS=queue: 0 new, 1 in progress; 1 turn(s) running" not in daemon.notifications:
            assert time.monotonic() < deadline, daemon.notifications[-10:]
            daemon.read_notifications(0.2)
        while not daemon.ok({"kind": "cancel", "session": session})["cancelled"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert daemon.wait(slow)["result"]["stopReason"] == "cancelled"
    finally:
        stop(daemon)


@pytest.mark.slow
def test_watchdog_pings_at_the_configured_interval(tmp_path: Path):
    daemon = Daemon(tmp_path / "state", {"watchdog_seconds": 0.1}).start()
    try:
        daemon.wait_for("WATCHDOG=1", count=3, since=daemon.notifications.index("READY=1"))
    finally:
        stop(daemon)


@pytest.mark.slow
def test_watchdog_follows_WATCHDOG_USEC_from_systemd(tmp_path: Path):
    daemon = Daemon(tmp_path / "state", env={"WATCHDOG_USEC": "200000"}).start()
    try:
        daemon.wait_for("WATCHDOG=1", count=3, since=daemon.notifications.index("READY=1"))
    finally:
        stop(daemon)


@pytest.mark.slow
def test_no_watchdog_pings_unless_asked(tmp_path: Path):
    # The watchdog's first ping would go out right after READY=1; two rescans later
    # (at least a second), pings every 0.1 s would have been many.
    daemon = Daemon(tmp_path / "state", env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).start()
    try:
        daemon.wait_rescans(2)
        assert "WATCHDOG=1" not in daemon.notifications
    finally:
        stop(daemon)


def test_sigterm_says_stopping_then_exits_zero(tmp_path: Path):
    daemon = Daemon(tmp_path / "state").start()
    assert "STOPPING=1" not in daemon.notifications
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for("STOPPING=1", timeout=30)
    assert daemon.notifications.index("STOPPING=1") > daemon.notifications.index("READY=1")
    stopping = daemon.notifications.index("STOPPING=1")
    assert any(n.startswith("STATUS=stopping") for n in daemon.notifications[stopping:])
    assert daemon.proc.wait(30) == 0
    daemon.close_socket()


@pytest.mark.slow
def test_an_abstract_notify_socket_works_for_the_daemon(tmp_path: Path):
    name = f"cairnd-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver("\0" + name) as sock:
        daemon = Daemon(tmp_path / "state", env={"NOTIFY_SOCKET": "@" + name})
        daemon.start(wait_ready=False)
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while "READY=1" not in seen:
                assert time.monotonic() < deadline, daemon.stderr()
                try:
                    seen.extend(sock.recv(4096).decode().split("\n"))
                except TimeoutError:
                    pass
        finally:
            stop(daemon)


def test_without_NOTIFY_SOCKET_the_daemon_serves_all_the_same(tmp_path: Path):
    daemon = Daemon(tmp_path / "state", env={"NOTIFY_SOCKET": ""})
    daemon.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while not (daemon.state / "status.json").exists():  # written once it serves
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.stderr()
            time.sleep(0.02)
        rid = daemon.drop({"kind": "cancel", "session": "nosuchsession"})
        assert daemon.wait(rid, timeout=60)["error"]["code"] == "unknown_session"
        assert daemon.notifications == []
    finally:
        stop(daemon)

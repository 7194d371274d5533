"""The web view over real HTTP (SPEC 14): token always (401), CSRF (403), escaping, the
security headers, and `/api/` in the CLI's `--json` shapes. A real daemon and a real
`cairnd web` server, both subprocesses; requests by urllib."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemonproc import Daemon, write_config
from gitrepos import make_repo
from webkit import WebServer, csrf_of, http, start_pair

SCRIPT = "<script>alert('pwned')</script>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("webhttp")
    repo = make_repo(base / "repo")
    daemon, web = start_pair(base)
    try:
        made = daemon.ok({"kind": "new", "repo": str(repo), "title": "http <b>bold</b>",
                          "prompt": "write a.txt: one"})
        session = made["session"]
        daemon.ok({"kind": "prompt", "session": session, "text": "append a.txt: two\n" + SCRIPT})
        fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": 1})
        yield {"daemon": daemon, "web": web, "session": session, "fork": fork["session"], "repo": repo,
               "base": base}
    finally:
        web.stop()
        daemon.stop()


def cli_json(daemon: Daemon, *args: str) -> Any:
    env = {**os.environ, "CAIRND_CONFIG": str(daemon.config)}
    out = subprocess.run([sys.executable, "-m", "cairnd", *args, "--json"], env=env, capture_output=True, check=True)
    return orjson.loads(out.stdout)


def test_every_response_carries_the_content_security_policy(site: Any) -> None:
    for path in ("/", f"/sessions/{site['session']}", "/api/sessions", "/static/app.js", "/nowhere"):
        status, headers, _body = site["web"].http("GET", path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert status in (200, 404)


def test_log_text_is_escaped_never_markup(site: Any) -> None:
    status, _headers, html = site["web"].http("GET", f"/sessions/{site['session']}")
    assert status == 200
    assert b"&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert b"<script>alert" not in html
    assert b"http &lt;b&gt;bold&lt;/b&gt;" in html  # the title too
    # the only scripts are the view's own file
    assert html.count(b"<script") == 1 and b'<script src="/static/app.js" defer></script>' in html


def test_a_state_changing_request_without_its_csrf_token_is_403(site: Any) -> None:
    spool_new = site["daemon"].spool / "new"
    before = set(os.listdir(spool_new))
    request = {"kind": "cancel", "session": site["session"]}
    status, _h, body = site["web"].http("POST", "/api/requests", request, {"content-type": "application/json"})
    assert status == 403 and b"CSRF" in body
    status, _h, _b = site["web"].http("POST", "/api/requests", request, {"x-csrf-token": "guessed"})
    assert status == 403
    assert set(os.listdir(spool_new)) == before  # nothing reached the spool
    _s, _h, page = site["web"].http("GET", "/")
    status, _h, body = site["web"].http("POST", "/api/requests", request, {"x-csrf-token": csrf_of(page)})
    assert status == 202, body


def test_an_action_is_a_spool_request_and_its_result_file_comes_back(site: Any) -> None:
    _s, _h, page = site["web"].http("GET", "/")
    token = csrf_of(page)
    status, _h, body = site["web"].http("POST", "/api/requests",
                            {"kind": "fork", "session": site["session"], "user_message_index": 9},
                            {"x-csrf-token": token})
    assert status == 202
    queued = orjson.loads(body)
    assert queued["status"] == "queued" and queued["id"].startswith("web-")
    assert queued["path"] == str(site["daemon"].spool / "new" / f"{queued['id']}.json")
    status, _h, body = site["web"].http("GET", f"/api/requests/{queued['id']}?wait=20")
    assert status == 200
    result = orjson.loads(body)
    assert result == site["daemon"].result(f"{queued['id']}.json")  # the result file itself
    assert result["status"] == "error"
    assert result["error"]["code"] == "fork_out_of_range"
    assert "has 2 user messages" in result["error"]["message"]
    # bad JSON and a request that is no object are refused before the spool
    status, _h, body = site["web"].http("POST", "/api/requests", b"{nope", {"x-csrf-token": token})
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_json"
    status, _h, body = site["web"].http("POST", "/api/requests", [1], {"x-csrf-token": token})
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"
    status, _h, body = site["web"].http("GET", "/api/requests/..%2Fetc?wait=0")
    assert status in (400, 404)


@pytest.mark.slow
def test_the_api_mirrors_the_cli_json_shapes(site: Any) -> None:
    daemon = site["daemon"]
    assert orjson.loads(site["web"].http("GET", "/api/sessions")[2]) == cli_json(daemon, "ls")
    assert orjson.loads(site["web"].http("GET", "/api/sessions?all=1")[2]) == cli_json(daemon, "ls", "--all")
    session = site["session"]
    assert orjson.loads(site["web"].http("GET", f"/api/sessions/{session}")[2]) == cli_json(daemon, "show", session)
    assert orjson.loads(site["web"].http("GET", "/api/tree")[2]) == cli_json(daemon, "tree")
    assert orjson.loads(site["web"].http("GET", f"/api/tree?session={site['fork']}")[2]) == cli_json(daemon, "tree", site["fork"])
    assert orjson.loads(site["web"].http("GET", f"/api/diff?a={session}@2&b={session}@1")[2]) == \
        cli_json(daemon, "diff", f"{session}@2", f"{session}@1")
    status = orjson.loads(site["web"].http("GET", "/api/status")[2])
    assert set(status) == set(cli_json(daemon, "status")) and status["running"] is True
    status, _h, body = site["web"].http("GET", "/api/sessions/nosuchsession")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "unknown_session"


def test_the_diff_of_a_turn_lists_its_files_in_the_diff_json_shape(site: Any) -> None:
    shown = cli_json(site["daemon"], "show", site["session"])
    turn = shown["turns"][1]
    before = shown["turns"][0]["worktreeSha"]
    status, _h, body = site["web"].http("GET", f"/api/sessions/{site['session']}/diff?from={before}&to={turn['worktreeSha']}")
    assert status == 200
    assert orjson.loads(body) == [{"path": "a.txt", "status": "M", "added": 1, "removed": 0, "binary": False,
                                   "old_path": None, "old_mode": "100644", "new_mode": "100644"}]
    # the same reader as `cairnd diff --json` and /api/diff: one shape for all
    assert orjson.loads(body) == cli_json(site["daemon"], "diff", f"{site['session']}@1", f"{site['session']}@2")
    status, _h, body = site["web"].http("GET", f"/api/sessions/{site['session']}/diff?from=HEAD&to={before}")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"


def test_a_renamed_file_reads_as_a_rename_on_the_page_as_in_cairnd_diff(site: Any) -> None:
    daemon = site["daemon"]
    session = daemon.ok({"kind": "new", "repo": str(site["repo"]), "title": "renames",
                         "prompt": "write before.txt: kept as it is"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "run: mv before.txt after.txt"})
    listed = cli_json(daemon, "diff", f"{session}@1", f"{session}@2")
    assert [(f["status"], f["old_path"], f["path"]) for f in listed] == [("R", "before.txt", "after.txt")]
    status, _h, html = site["web"].http("GET", f"/sessions/{session}")
    assert status == 200 and b'<span class="file status-R">R before.txt &rarr; after.txt</span>' in html
    shown = cli_json(daemon, "show", session)
    before, after = shown["turns"][0]["worktreeSha"], shown["turns"][1]["worktreeSha"]
    assert shown["turns"][1]["changes"] == [{"status": "R", "path": "after.txt"}]
    status, _h, html = site["web"].http("GET", f"/sessions/{session}/diff?from={before}&to={after}")
    assert status == 200 and b"rename from before.txt" in html and b"similarity index 100%" in html
    assert orjson.loads(site["web"].http("GET", f"/api/sessions/{session}/diff?from={before}&to={after}")[2]) == listed


def test_a_page_cursor_that_is_not_ours_is_a_bad_request(site: Any) -> None:
    more = f"/sessions/{site['session']}/more"
    status, _h, body = site["web"].http("GET", more + "?cursor=garbage")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"
    import base64
    mid_line = base64.urlsafe_b64encode(orjson.dumps({"offset": 5})).decode().rstrip("=")
    status, _h, body = site["web"].http("GET", more + "?cursor=" + mid_line)
    assert status == 400 and "not the start of a line" in orjson.loads(body)["error"]["message"]


def test_a_local_process_without_the_token_reads_nothing_and_runs_nothing(site: Any) -> None:
    """Attack 6: loopback is every local user's. Without the token a process can neither
    read a session, nor fetch the page that holds the CSRF token, nor queue a `new` whose
    agent would run its command as cairnd's user."""
    web, session = site["web"], site["session"]
    for path in ("/", f"/sessions/{session}", f"/sessions/{session}/more", f"/sessions/{session}/events",
                 f"/api/sessions/{session}", "/api/sessions", "/api/status", "/static/app.js", "/nowhere"):
        status, headers, body = http("GET", web.url + path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Bearer") and b"token" in body
        assert b"write a.txt" not in body and b"csrf" not in body.lower()
    spool_new = site["daemon"].spool / "new"
    before = set(os.listdir(spool_new))
    attack = {"kind": "new", "repo": str(site["repo"]), "prompt": "run: id > owned.txt"}
    _s, _h, page = web.http("GET", "/")  # even holding a real CSRF token (it cannot get one)
    for headers in ({"x-csrf-token": csrf_of(page)}, {"x-csrf-token": csrf_of(page), "authorization": "Bearer nope"},
                    {"x-csrf-token": csrf_of(page), "cookie": "cairnd_token=nope"},
                    {"x-csrf-token": csrf_of(page), "host": "localhost"}):
        status, _h, _b = http("POST", web.url + "/api/requests", attack, headers)
        assert status == 401, headers
    # the token in the query is for a person's first GET, never for a change
    status, _h, _b = http("POST", f"{web.url}/api/requests?token={web.token}", attack, {"x-csrf-token": csrf_of(page)})
    assert status == 401
    assert set(os.listdir(spool_new)) == before  # nothing reached the spool


def test_the_token_redirect_stays_on_this_origin(site: Any) -> None:
    web = site["web"]
    for path, lands in (("//evil.example", "/evil.example"), ("///evil.example/x", "/evil.example/x"),
                        ("/%2F%2Fevil.example", "/evil.example"), ("/%5Cevil.example", "/evil.example"),
                        ("/sessions/a%0d%0aSet-Cookie:x=1", "/sessions/a%0D%0ASet-Cookie:x=1")):
        status, headers, _b = http("GET", f"{web.url}{path}?token={web.token}&q=1")
        assert status == 303, path
        assert headers["location"] == lands + "?q=1", (path, headers["location"])
        assert headers["set-cookie"].startswith(f"cairnd_token={web.token}; Path=/; HttpOnly; SameSite=Strict")
        assert "x=1" not in headers["set-cookie"]
    status, headers, _b = http("GET", f"{web.url}/?token={web.token}")
    assert status == 303 and headers["location"] == "/"
    status, headers, _b = http("GET", f"{web.url}/?token=wrong")
    assert status == 401 and "location" not in headers


def test_the_made_token_is_kept_private_and_the_same_across_restarts(site: Any) -> None:
    web, state = site["web"], site["daemon"].state
    kept = state / "web.token"
    assert kept.read_text().strip() == web.token and len(web.token) >= 43  # 32 bytes, URL-safe base64
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert web.token not in web.stderr()  # stderr may go to a log others read
    again = WebServer(site["daemon"].config).start()
    try:
        assert again.token == web.token
        assert again.http("GET", "/api/sessions")[0] == 200
        assert http("GET", again.url + "/api/sessions")[0] == 401
    finally:
        again.stop()


def test_a_token_file_others_can_read_is_refused_by_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "web.token").write_text("readable-by-all\n")
    os.chmod(state / "web.token", 0o644)
    config = write_config(tmp_path / "open.toml", {"state_dir": str(state)})
    env = {**os.environ, "CAIRND_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "cairnd", "web", "--listen", "127.0.0.1:0"], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == b""
    assert f"{state / 'web.token'} has mode 0644".encode() in proc.stderr


def test_a_configured_token_is_the_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "tok.toml", {"state_dir": str(state)})
    config.write_text(config.read_text() + '[web]\ntoken = "s3cret-token"\n')
    web = WebServer(config).start()
    try:
        assert web.token == "s3cret-token" and not (state / "web.token").exists()
        for path in ("/", "/api/sessions", "/static/app.js"):
            status, headers, _b = http("GET", web.url + path)
            assert status == 401, path
        assert http("GET", web.url + "/", headers={"authorization": "Bearer wrong"})[0] == 401
        assert http("GET", web.url + "/", headers={"authorization": "Bearer s3cret-token"})[0] == 200
        status, headers, _b = http("GET", web.url + "/?q=x&token=s3cret-token")
        assert status == 303 and headers["location"] == "/?q=x"
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert http("GET", web.url + "/api/sessions", headers={"cookie": cookie})[0] == 200
        # the token is not a CSRF token: a state-changing request needs both
        status, _h, _b = http("POST", web.url + "/api/requests", {"kind": "cancel", "session": "x"},
                              {"cookie": cookie})
        assert status == 403
    finally:
        web.stop()


@pytest.mark.slow
def test_a_non_loopback_address_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "open.toml", {"state_dir": str(tmp_path / "state")})
    env = {**os.environ, "CAIRND_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "cairnd", "web", "--listen", "0.0.0.0:8765"], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"not a loopback address" in proc.stderr and b"token" in proc.stderr
    config.write_text(config.read_text() + '[web]\nlisten = "0.0.0.0:8765"\n')
    proc = subprocess.run([sys.executable, "-m", "cairnd", "serve"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"not a loopback address" in proc.stderr


def test_serve_with_web_listen_runs_the_web_view_inside_the_daemon(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", {"web": {"listen": "127.0.0.1:0"}}).start()
    try:
        deadline = time.monotonic() + 20
        while "web view on" not in daemon.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = daemon.stderr().split("web view on ", 1)[1].split()[0].rstrip("/")
        token = (tmp_path / "state" / "web.token").read_text().strip()
        assert token not in daemon.stderr()  # the daemon's log names where it is, not what
        assert http("GET", url + "/")[0] == 401
        status, _h, html = http("GET", url + "/", headers={"authorization": f"Bearer {token}"})
        assert status == 200 and b"Sessions" in html
    finally:
        assert daemon.stop() == 0


def test_web_settings_are_checked_by_name(tmp_path: Path) -> None:
    from cairnd.config.settings import ConfigError, parse_config
    assert parse_config({"web": {"listen": "127.0.0.1:9000", "token": "abc-123_x"}}).web.token == "abc-123_x"
    assert parse_config({}).web.listen is None  # then `cairnd serve` runs no web view
    for bad, says in (({"web": {"port": 1}}, "unknown key 'port'"), ({"web": {"listen": 8765}}, "must be a string"),
                      ({"web": {"token": "has space"}}, "may hold only")):
        with pytest.raises(ConfigError, match=says):
            parse_config(bad)


@pytest.mark.slow
def test_the_sessions_list_filters_by_text_and_state(site: Any) -> None:
    web, daemon, session = site["web"], site["daemon"], site["session"]
    _s, _h, html = web.http("GET", "/?q=" + "http")
    assert f'data-session="{session}"'.encode() in html and f'data-session="{site["fork"]}"'.encode() in html
    _s, _h, html = web.http("GET", "/?q=nomatchatall")
    assert b"data-session=" not in html and b"No sessions match" in html
    running = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 5"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _s, _h, html = web.http("GET", "/?state=running")
        if f'data-session="{session}"'.encode() in html:
            break
        time.sleep(0.1)
    assert f'data-session="{session}"'.encode() in html and f'data-session="{site["fork"]}"'.encode() not in html
    assert b'<span class="badge running">running</span>' in html
    daemon.wait(running)
    _s, _h, html = web.http("GET", "/?state=running")
    assert b"data-session=" not in html

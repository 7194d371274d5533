"""The web view over real HTTP (SPEC 14): token (401), CSRF (403), escaping, the
security headers, and `/api/` in the CLI's `--json` shapes. A real daemon and a real
`cairnd web` server, both subprocesses; requests by urllib."""

from __future__ import annotations

import os
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
        status, headers, _body = http("GET", site["web"].url + path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert status in (200, 404)


def test_log_text_is_escaped_never_markup(site: Any) -> None:
    status, _headers, html = http("GET", f"{site['web'].url}/sessions/{site['session']}")
    assert status == 200
    assert b"&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert b"<script>alert" not in html
    assert b"http &lt;b&gt;bold&lt;/b&gt;" in html  # the title too
    # the only scripts are the view's own file
    assert html.count(b"<script") == 1 and b'<script src="/static/app.js" defer></script>' in html


def test_a_state_changing_request_without_its_csrf_token_is_403(site: Any) -> None:
    url = site["web"].url
    spool_new = site["daemon"].spool / "new"
    before = set(os.listdir(spool_new))
    request = {"kind": "cancel", "session": site["session"]}
    status, _h, body = http("POST", url + "/api/requests", request, {"content-type": "application/json"})
    assert status == 403 and b"CSRF" in body
    status, _h, _b = http("POST", url + "/api/requests", request, {"x-csrf-token": "guessed"})
    assert status == 403
    assert set(os.listdir(spool_new)) == before  # nothing reached the spool
    _s, _h, page = http("GET", url + "/")
    status, _h, body = http("POST", url + "/api/requests", request, {"x-csrf-token": csrf_of(page)})
    assert status == 202, body


def test_an_action_is_a_spool_request_and_its_result_file_comes_back(site: Any) -> None:
    url = site["web"].url
    _s, _h, page = http("GET", url + "/")
    token = csrf_of(page)
    status, _h, body = http("POST", url + "/api/requests",
                            {"kind": "fork", "session": site["session"], "user_message_index": 9},
                            {"x-csrf-token": token})
    assert status == 202
    queued = orjson.loads(body)
    assert queued["status"] == "queued" and queued["id"].startswith("web-")
    assert queued["path"] == str(site["daemon"].spool / "new" / f"{queued['id']}.json")
    status, _h, body = http("GET", f"{url}/api/requests/{queued['id']}?wait=20")
    assert status == 200
    result = orjson.loads(body)
    assert result == site["daemon"].result(f"{queued['id']}.json")  # the result file itself
    assert result["status"] == "error"
    assert result["error"]["code"] == "fork_out_of_range"
    assert "has 2 user messages" in result["error"]["message"]
    # bad JSON and a request that is no object are refused before the spool
    status, _h, body = http("POST", url + "/api/requests", b"{nope", {"x-csrf-token": token})
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_json"
    status, _h, body = http("POST", url + "/api/requests", [1], {"x-csrf-token": token})
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"
    status, _h, body = http("GET", f"{url}/api/requests/..%2Fetc?wait=0")
    assert status in (400, 404)


def test_the_api_mirrors_the_cli_json_shapes(site: Any) -> None:
    url, daemon = site["web"].url, site["daemon"]
    assert orjson.loads(http("GET", url + "/api/sessions")[2]) == cli_json(daemon, "ls")
    assert orjson.loads(http("GET", url + "/api/sessions?all=1")[2]) == cli_json(daemon, "ls", "--all")
    session = site["session"]
    assert orjson.loads(http("GET", f"{url}/api/sessions/{session}")[2]) == cli_json(daemon, "show", session)
    assert orjson.loads(http("GET", url + "/api/tree")[2]) == cli_json(daemon, "tree")
    assert orjson.loads(http("GET", f"{url}/api/tree?session={site['fork']}")[2]) == cli_json(daemon, "tree", site["fork"])
    assert orjson.loads(http("GET", f"{url}/api/diff?a={session}@2&b={session}@1")[2]) == \
        cli_json(daemon, "diff", f"{session}@2", f"{session}@1")
    status = orjson.loads(http("GET", url + "/api/status")[2])
    assert set(status) == set(cli_json(daemon, "status")) and status["running"] is True
    status, _h, body = http("GET", f"{url}/api/sessions/nosuchsession")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "unknown_session"


def test_the_diff_of_a_turn_lists_its_files_in_the_diff_json_shape(site: Any) -> None:
    shown = cli_json(site["daemon"], "show", site["session"])
    turn = shown["turns"][1]
    before = shown["turns"][0]["worktreeSha"]
    status, _h, body = http("GET", f"{site['web'].url}/api/sessions/{site['session']}/diff?from={before}&to={turn['worktreeSha']}")
    assert status == 200
    assert orjson.loads(body) == [{"path": "a.txt", "status": "M", "added": 1, "removed": 0, "binary": False,
                                   "old_path": None, "old_mode": "100644", "new_mode": "100644"}]
    # the same reader as `cairnd diff --json` and /api/diff: one shape for all
    assert orjson.loads(body) == cli_json(site["daemon"], "diff", f"{site['session']}@1", f"{site['session']}@2")
    status, _h, body = http("GET", f"{site['web'].url}/api/sessions/{site['session']}/diff?from=HEAD&to={before}")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"


def test_a_renamed_file_reads_as_a_rename_on_the_page_as_in_cairnd_diff(site: Any) -> None:
    daemon, url = site["daemon"], site["web"].url
    session = daemon.ok({"kind": "new", "repo": str(site["repo"]), "title": "renames",
                         "prompt": "write before.txt: kept as it is"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "run: mv before.txt after.txt"})
    listed = cli_json(daemon, "diff", f"{session}@1", f"{session}@2")
    assert [(f["status"], f["old_path"], f["path"]) for f in listed] == [("R", "before.txt", "after.txt")]
    status, _h, html = http("GET", f"{url}/sessions/{session}")
    assert status == 200 and b'<span class="file status-R">R before.txt &rarr; after.txt</span>' in html
    shown = cli_json(daemon, "show", session)
    before, after = shown["turns"][0]["worktreeSha"], shown["turns"][1]["worktreeSha"]
    assert shown["turns"][1]["changes"] == [{"status": "R", "path": "after.txt"}]
    status, _h, html = http("GET", f"{url}/sessions/{session}/diff?from={before}&to={after}")
    assert status == 200 and b"rename from before.txt" in html and b"similarity index 100%" in html
    assert orjson.loads(http("GET", f"{url}/api/sessions/{session}/diff?from={before}&to={after}")[2]) == listed


def test_a_page_cursor_that_is_not_ours_is_a_bad_request(site: Any) -> None:
    url = f"{site['web'].url}/sessions/{site['session']}/more"
    status, _h, body = http("GET", url + "?cursor=garbage")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"
    import base64
    mid_line = base64.urlsafe_b64encode(orjson.dumps({"offset": 5})).decode().rstrip("=")
    status, _h, body = http("GET", url + "?cursor=" + mid_line)
    assert status == 400 and "not the start of a line" in orjson.loads(body)["error"]["message"]


def test_a_foreign_host_name_is_refused_on_loopback(site: Any) -> None:
    status, _h, body = http("GET", site["web"].url + "/", headers={"host": "attacker.example:80"})
    assert status == 403 and b"loopback" in body


def test_with_a_token_every_request_needs_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "tok.toml", {"state_dir": str(state)})
    config.write_text(config.read_text() + '[web]\ntoken = "s3cret-token"\n')
    web = WebServer(config).start()
    try:
        for path in ("/", "/api/sessions", "/static/app.js"):
            status, headers, _b = http("GET", web.url + path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith("Bearer")
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
        status, _h, html = http("GET", url + "/")
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


def test_the_sessions_list_filters_by_text_and_state(site: Any) -> None:
    url, daemon, session = site["web"].url, site["daemon"], site["session"]
    _s, _h, html = http("GET", url + "/?q=" + "http")
    assert f'data-session="{session}"'.encode() in html and f'data-session="{site["fork"]}"'.encode() in html
    _s, _h, html = http("GET", url + "/?q=nomatchatall")
    assert b"data-session=" not in html and b"No sessions match" in html
    running = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 5"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _s, _h, html = http("GET", url + "/?state=running")
        if f'data-session="{session}"'.encode() in html:
            break
        time.sleep(0.1)
    assert f'data-session="{session}"'.encode() in html and f'data-session="{site["fork"]}"'.encode() not in html
    assert b'<span class="badge running">running</span>' in html
    daemon.wait(running)
    _s, _h, html = http("GET", url + "/?state=running")
    assert b"data-session=" not in html

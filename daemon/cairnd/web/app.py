"""The web view's routes: pages for people, `/api/` JSON in the CLI's `--json` shapes.

Reading goes straight to the state directory through `cairnd.views` (as `cairnd ls`,
`show` and `tree` do); every action is a request file in the spool (as `cairnd
prompt --no-wait` writes it), whose result the page waits for through
`/api/requests/{id}`. Blocking reads (SQLite, logs, git objects) run in worker
threads, never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import jinja2
import orjson
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cairnd.spool.client import locate, new_request_id, submit
from cairnd.config.settings import Config
from cairnd.errors import CairnError
from cairnd.ids import is_request_id, is_session_id
from cairnd.web.diffview import split_rows, unified_lines
from cairnd.sessions.views import left_behind_by, busy_sessions, session_listing, daemon_status, find_root, open_registry, read_forest, session_summary, show_session
from cairnd.web import lineage as lineage_view
from cairnd.web.guard import Guard
from cairnd.web.pages import decode_cursor, encode_cursor, follow, read_page
from cairnd.git.run import is_object_id
from cairnd.git.diff import diff_files, diff_files_many, diff_patches

HERE = Path(__file__).parent
MAX_REQUEST_BYTES = 1 << 20
REQUEST_WAIT_MAX = 25.0
STATES = ("all", "ready", "running", "deleted")


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _error(code: str, message: str, status: int) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


_STATUS_OF_CODE = {"unknown_session": 404, "bad_request": 400, "commit_missing": 410, "not_a_git_repo": 404,
                   "repo_not_found": 404}
MAX_SHOWN_PATCH = 1 << 20  # a file's diff longer than this is cut on the diff page


class WebView:
    """Everything a route needs: the configuration, the templates."""

    def __init__(self, config: Config, csrf_token: str) -> None:
        self.config = config
        self.layout = config.layout
        self.csrf_token = csrf_token
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # everything from logs is shown as text, never run
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["short"] = lambda sha: sha[:7] if isinstance(sha, str) else "-"
        self.templates.filters["when"] = _when
        self.items = self.templates.get_template("_items.html")

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(csrf_token=self.csrf_token, **context)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def render_item(self, item: dict[str, Any], session: str) -> Markup:
        """One item as HTML, its text escaped by the template."""
        return self.items.module.item(item, session)  # type: ignore[attr-defined,no-any-return]

    # ------------------------------------------------------------------ reading (threads)

    def attempts(self, request: Request, commits: bool = False) -> dict[str, Any]:
        """compare (SPEC 19) of `?siblings=S` or of every `?session=`."""
        from cairnd.sessions.attempts import compare, compare_siblings
        registry = open_registry(self.layout)
        if registry is None:
            raise CairnError("unknown_session", f"no sessions in {self.layout.root}")
        siblings = request.query_params.get("siblings")
        if siblings:
            return compare_siblings(self.layout, registry, siblings, commits=commits)
        named = request.query_params.getlist("session")
        if not named:
            raise CairnError("bad_request", "name the sessions to compare: ?siblings=S or ?session=A&session=B")
        return compare(self.layout, registry, named, commits=commits)

    def session_row(self, session_id: str) -> Any:
        if not is_session_id(session_id):
            raise CairnError("bad_request", f"{session_id!r} is not a session id")
        registry = open_registry(self.layout)
        row = registry.get(session_id) if registry else None
        if row is None or row.state == "creating":
            raise CairnError("unknown_session", f"session {session_id!r} does not exist in {self.layout.root}")
        return row, registry.fork_of(row.id) if registry else None, registry

    def current_state(self, session_id: str) -> str:
        """The session's state in the registry now ("gone" once its row is)."""
        registry = open_registry(self.layout)
        row = registry.get(session_id) if registry else None
        return row.state if row is not None else "gone"

    def add_changes(self, items: list[dict[str, Any]], repo: Path) -> None:
        """Each checkpoint's changed files (`cairnd diff --json`'s shape), read by one git
        process for all of them, not one per checkpoint."""
        wanted = [item for item in _walk(items) if item["kind"] == "checkpoint" and not item.get("baseline")
                  and is_object_id(item.get("previous")) and is_object_id(item.get("worktreeSha"))]
        if not wanted:
            return
        try:
            found = diff_files_many(repo, [(item["previous"], item["worktreeSha"]) for item in wanted])
        except CairnError as exc:  # the repository itself is gone
            found = [exc] * len(wanted)
        for item, changes in zip(wanted, found):
            if isinstance(changes, CairnError):
                item["changes_error"] = changes.message
            else:
                item["changes"] = [change.as_dict() for change in changes]


def _walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from _walk(item.get("children") or [])


def file_diffs(repo: Path, old: str | None, new: str) -> list[dict[str, Any]]:
    """The diff page's files: each with its own part of git's unified diff, as text."""
    shown = []
    for change, patch in diff_patches(repo, old, new):
        text = patch[:MAX_SHOWN_PATCH].decode("utf-8", "replace")
        if len(patch) > MAX_SHOWN_PATCH:
            text += f"\n... {len(patch) - MAX_SHOWN_PATCH} more bytes of this file's diff not shown\n"
        shown.append({**change.as_dict(), "text": text, "lines": unified_lines(text), "rows": split_rows(text)})
    return shown


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def session_list(view: WebView, text: str, state: str) -> list[dict[str, Any]]:
    registry = open_registry(view.layout)
    rows = registry.sessions(("ready", "deleted")) if registry else []
    titles = {row.id: row.title for row in rows}
    busy = busy_sessions(view.layout.spool)
    shown = []
    needle = text.strip().lower()
    for row in rows:
        summary = session_summary(row)
        summary["running"] = row.id in busy
        summary["parent_title"] = titles.get(row.parent_id or "", None)
        try:
            summary["last_activity"] = view.layout.log_path(row.id).stat().st_mtime
        except OSError:
            summary["last_activity"] = row.updated_at
        if state == "ready" and row.state != "ready" or state == "deleted" and row.state != "deleted":
            continue
        if state == "running" and not summary["running"]:
            continue
        if needle and not any(needle in str(value).lower() for value in
                              (row.id, row.title, row.agent, row.repo, row.parent_id or "")):
            continue
        shown.append(summary)
    shown.sort(key=lambda s: s["last_activity"] or 0, reverse=True)
    return shown


# ---------------------------------------------------------------------- routes


def build_app(config: Config, token: str, csrf_token: str | None = None) -> Guard:
    """The ASGI application for `config`'s state directory, behind its guard (every
    request needs `token`). The routes below find the view in `request.app.state`."""
    routes = [
        Route("/", sessions_page),
        Route("/sessions/{session}", session_page),
        Route("/sessions/{session}/more", session_more),
        Route("/sessions/{session}/events", session_events),
        Route("/sessions/{session}/diff", diff_page),
        Route("/sessions/{session}/lineage", lineage_page),
        Route("/compare", compare_page),
        Route("/api/compare", api_attempts),
        Route("/api/sessions", api_sessions),
        Route("/api/sessions/{session}", api_session),
        Route("/api/sessions/{session}/diff", api_diff),
        Route("/api/tree", api_tree),
        Route("/api/diff", api_compare),
        Route("/api/status", api_status),
        Route("/api/requests", api_submit, methods=["POST"]),
        Route("/api/requests/{request}", api_request),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    starlette = Starlette(routes=routes)
    guard = Guard(starlette, token=token, csrf_token=csrf_token)
    starlette.state.view = WebView(config, guard.csrf_token)
    return guard


def _view(request: Request) -> WebView:
    return request.app.state.view


# -- the pages -------------------------------------------------------------------------------


async def sessions_page(request: Request) -> Response:
    view = _view(request)
    text = request.query_params.get("q", "")
    state = request.query_params.get("state", "all")
    if state not in STATES:
        state = "all"
    shown = await anyio.to_thread.run_sync(session_list, view, text, state)
    return view.page("sessions.html", sessions=shown, q=text, state=state, states=STATES)


async def session_page(request: Request) -> Response:
    view = _view(request)
    session_id = request.path_params["session"]
    try:
        row, fork, _registry = await anyio.to_thread.run_sync(view.session_row, session_id)
    except CairnError as exc:
        return view.page("error.html", status=_STATUS_OF_CODE.get(exc.code, 400), error=exc)
    parent = None
    if fork is not None:
        parent_row = await anyio.to_thread.run_sync(lambda: _registry.get(fork.parent_id) if _registry else None)
        rewind = await anyio.to_thread.run_sync(left_behind_by, _registry, row.id)
        parent = {"id": fork.parent_id, "title": fork.parent_title,
                  "exists": parent_row is not None and parent_row.state == "ready",
                  "at": fork.user_message_index,
                  "rewound_at": rewind.plan.get("k") if rewind is not None else None}
    log = view.layout.log_path(row.id)
    page = await anyio.to_thread.run_sync(read_page, log)
    await anyio.to_thread.run_sync(view.add_changes, page.items, row.repo)
    return view.page("session.html", session=session_summary(row), row=row, parent=parent, page=page,
                     cursor=encode_cursor(page.state), render_item=view.render_item)


async def session_more(request: Request) -> Response:
    view = _view(request)
    session_id = request.path_params["session"]
    try:
        row, _fork, _registry = await anyio.to_thread.run_sync(view.session_row, session_id)
        state = decode_cursor(request.query_params.get("cursor", ""))
        page = await anyio.to_thread.run_sync(read_page, view.layout.log_path(row.id), state)
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    await anyio.to_thread.run_sync(view.add_changes, page.items, row.repo)
    return _json({
        "html": "".join(str(view.render_item(item, row.id)) for item in page.items),
        "ops": [_op_for_client(view, op, row.id) for op in page.leftover],
        "cursor": encode_cursor(page.state), "at_end": page.at_end, "inode": page.inode,
        "running": page.state["running"],
    })


async def session_events(request: Request) -> Response:
    view = _view(request)
    session_id = request.path_params["session"]
    try:
        row, _fork, _registry = await anyio.to_thread.run_sync(view.session_row, session_id)
        state = decode_cursor(request.query_params.get("cursor", ""))
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    inode_text = request.query_params.get("inode", "")
    inode = int(inode_text) if inode_text.isdigit() else None

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        shown = request.query_params.get("state")  # the state the page shows
        shown = shown if shown in ("ready", "deleted") else row.state
        async for kind, value in follow(view.layout.log_path(row.id), state, inode,
                                        (shown, lambda: view.current_state(row.id))):
            if kind == "ops":
                items = [op["item"] for op in value if op["op"] == "add"]
                await anyio.to_thread.run_sync(view.add_changes, items, row.repo)
                data = {"ops": [_op_for_client(view, op, row.id) for op in value]}
            else:
                data = {"value": value}
            yield b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            if kind == "replaced":
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


async def diff_page(request: Request) -> Response:
    view = _view(request)
    session_id = request.path_params["session"]
    old = request.query_params.get("from") or None
    new = request.query_params.get("to", "")
    try:
        row, _fork, _registry = await anyio.to_thread.run_sync(view.session_row, session_id)
        files = await anyio.to_thread.run_sync(file_diffs, row.repo, old, new)
    except CairnError as exc:
        return view.page("error.html", status=_STATUS_OF_CODE.get(exc.code, 400), error=exc)
    split = request.query_params.get("view") == "split"
    return view.page("diff.html", session=session_summary(row), files=files, old=old, new=new, split=split)


async def compare_page(request: Request) -> Response:
    """SPEC 19: tries side by side, a diff a click away, Land and Delete per row."""
    view = _view(request)
    try:
        compared = await anyio.to_thread.run_sync(lambda: view.attempts(request, commits=True))
    except CairnError as exc:
        return view.page("error.html", status=_STATUS_OF_CODE.get(exc.code, 400), error=exc)
    return view.page("compare.html", compared=compared)


async def api_attempts(request: Request) -> Response:
    """`cairnd compare --json`: ?siblings=S, or ?session=A&session=B..."""
    view = _view(request)
    try:
        compared = await anyio.to_thread.run_sync(lambda: view.attempts(request))
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    return _json(compared)


async def lineage_page(request: Request) -> Response:
    view = _view(request)
    session_id = request.path_params["session"]
    try:
        await anyio.to_thread.run_sync(view.session_row, session_id)
        tree = await anyio.to_thread.run_sync(lineage_view.drawn_tree, view.layout, session_id)
    except CairnError as exc:
        return view.page("error.html", status=_STATUS_OF_CODE.get(exc.code, 400), error=exc)
    return view.page("lineage.html", tree=tree, marked=session_id)


# -- the API ---------------------------------------------------------------------------------


async def api_sessions(request: Request) -> Response:
    view = _view(request)
    registry = await anyio.to_thread.run_sync(open_registry, view.layout)
    states = ("ready", "deleted") if request.query_params.get("all") in ("1", "true") else ("ready",)
    rows = await anyio.to_thread.run_sync(lambda: registry.sessions(states) if registry else [])
    return _json(await anyio.to_thread.run_sync(session_listing, view.layout, rows))


async def api_session(request: Request) -> Response:
    view = _view(request)
    try:
        shown = await anyio.to_thread.run_sync(show_session, view.layout, request.path_params["session"])
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    return _json(shown)


async def api_tree(request: Request) -> Response:
    view = _view(request)
    forest = await anyio.to_thread.run_sync(read_forest, view.layout)
    marked = request.query_params.get("session")
    if marked:
        root = find_root(forest, marked)
        if root is None:
            return _error("unknown_session", f"session {marked!r} does not exist in {view.layout.root}", 404)
        forest = [root]
    elif request.query_params.get("all") not in ("1", "true"):
        forest = [root for root in forest if root.alive()]
    return _json([root.as_dict() for root in forest])


async def api_status(request: Request) -> Response:
    view = _view(request)
    return _json(await anyio.to_thread.run_sync(daemon_status, view.config))


async def api_diff(request: Request) -> Response:
    view = _view(request)
    try:
        row, _fork, _registry = await anyio.to_thread.run_sync(view.session_row, request.path_params["session"])
        files = await anyio.to_thread.run_sync(diff_files, row.repo, request.query_params.get("from") or None,
                                               request.query_params.get("to", ""))
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    return _json([change.as_dict() for change in files])


async def api_compare(request: Request) -> Response:
    """`cairnd diff A [B] --json`: checkpoints by name (SESSION or SESSION@N)."""
    view = _view(request)
    from cairnd.sessions.diffs import compare
    try:
        found = await anyio.to_thread.run_sync(compare, view.layout, request.query_params.get("a", ""),
                                               request.query_params.get("b") or None)
    except CairnError as exc:
        return _error(exc.code, exc.message, _STATUS_OF_CODE.get(exc.code, 400))
    return _json(found["files"])


async def api_submit(request: Request) -> Response:
    view = _view(request)
    body = await request.body()
    if len(body) > MAX_REQUEST_BYTES:
        return _error("too_large", f"the request has {len(body)} bytes, over the 1 MiB limit", 413)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error("bad_json", f"the request is not JSON: {exc}", 400)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("kind"), str):
        return _error("bad_request", "a request is a JSON object with a \"kind\"", 400)
    request_id = new_request_id("web")
    await anyio.to_thread.run_sync(submit, view.layout.spool, parsed, request_id)
    return _json({"id": request_id, "status": "queued",
                  "path": str(view.layout.spool / "new" / f"{request_id}.json")}, 202)


async def api_request(request: Request) -> Response:
    view = _view(request)
    request_id = request.path_params["request"]
    if not is_request_id(request_id):
        return _error("bad_request", f"{request_id!r} is not a request id", 400)
    try:
        wait = min(REQUEST_WAIT_MAX, max(0.0, float(request.query_params.get("wait", "0"))))
    except ValueError:
        return _error("bad_request", "wait must be a number of seconds", 400)
    deadline = time.monotonic() + wait
    while True:
        where = await anyio.to_thread.run_sync(locate, view.layout.spool, request_id)
        if where.result is not None:
            return _json(where.result)
        if time.monotonic() >= deadline or await request.is_disconnected():
            status = {"new": "queued", "cur": "working"}.get(where.place, where.place)
            return _json({"id": request_id, "status": status}, 202)
        await anyio.sleep(0.05)


def _op_for_client(view: WebView, op: dict[str, Any], session: str) -> dict[str, Any]:
    """An op as the page's script applies it: new elements as HTML rendered (and
    escaped) here, text as text."""
    if op["op"] == "add":
        item = op["item"]
        return {"op": "add", "key": item["key"], "parent": item["parent"], "html": str(view.render_item(item, session))}
    return op

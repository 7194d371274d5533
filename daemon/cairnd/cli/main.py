"""The command line (SPEC section 8): what each command does (`cliparser` holds their grammar).

Request commands (`new`, `prompt`, `fork`, `cancel`, `rm`) are spool clients: they
write a request file and wait for its result like any other writer, so they work with
the daemon stopped (`--no-wait`). Read commands (`ls`, `show`, `tree`, `status`) read
the state directory directly. Exit status: 0 ok, 1 the request failed (its code on
stderr), 2 usage, 3 no result in time.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from cairnd.state import privacy
from cairnd.cli import render
from cairnd.spool.requests import is_git_url
from cairnd.spool.client import (
    DaemonWatch,
    LogActivity,
    Progress,
    locate,
    new_request_id,
    result_json,
    submit,
    wait_for_result,
)
from cairnd.cli.parser import REQUEST_COMMANDS, UsageError, build_parser, command_after
from cairnd.config.settings import Config, ConfigError, load_config
from cairnd.errors import CairnError
from cairnd.sessionlog.entries import iso_timestamp
from cairnd.cli.render import describe_request, format_show, format_status, format_tree, phase, shorten, summarize
from cairnd.state.statelock import daemon_pid
from cairnd.sessions.views import (
    agent_answer,
    busy_sessions,
    daemon_status,
    find_root,
    read_forest,
    resolve_session,
    session_rows,
    session_listing,
    show_session,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
EXIT_CHECK_TIMED_OUT = 124  # as timeout(1) says it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, command = command_after(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if command is not None:
        if args.command not in ("fork", "check"):
            parser.error(f"`-- {' '.join(command)}`: only fork --check and check take a command after --")
        args.check_command = command
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"cairnd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"cairnd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CairnError as exc:
        print(f"cairnd: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code == "bad_request" else EXIT_FAILED
    except BrokenPipeError:
        # `cairnd ls | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (OSError, sqlite3.Error) as exc:
        # An unreadable state directory or registry: the set-up needs fixing (wrong
        # user, wrong state_dir), not the request.
        print(f"cairnd: cannot read the state directory: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from cairnd.serve.service import serve as run_serve  # the daemon's imports are heavy
        return run_serve(args.config, verbose=args.verbose)
    if args.command == "completion":
        from cairnd.cli.completion import completion_script
        sys.stdout.write(completion_script(args.shell, build_parser()))
        return EXIT_OK
    if args.command == "demo":
        from cairnd.cli.demo import run_demo
        return run_demo(Path(args.dir) if args.dir else None, as_json=args.json)
    config = load_config(args.config)
    privacy.claim(config.state_dir)  # what this command creates there is private too (SPEC 16)
    if args.command == "acp":
        from cairnd.acp import run_acp  # the ACP SDK's agent side: only here
        return run_acp(config, args.agent)
    if args.command == "web":
        from cairnd.web.server import run_web  # Starlette, uvicorn, Jinja: only here
        return run_web(config, args.listen)
    if args.command in REQUEST_COMMANDS:
        return _request_command(args, config)
    return {"ls": _ls, "show": _show, "tree": _tree, "status": _status, "diff": _diff,
            "gc": _gc, "compare": _compare}[args.command](args, config)


# --------------------------------------------------------------------------- request commands


def _text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def build_request(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    """The request file's object for a request command's arguments."""
    if args.command == "new":
        repo = args.repo if is_git_url(args.repo) else os.path.abspath(os.path.expanduser(args.repo))
        request: dict[str, Any] = {"kind": "new", "repo": repo}
        for key, value in (("ref", args.ref), ("title", args.title), ("agent", args.agent)):
            if value is not None:
                request[key] = value
        if args.in_place:
            request["in_place"] = True
        if args.message is not None:
            request["prompt"] = _text(args.message)
        return request
    session = resolve_session(config.layout, args.session)
    if args.command == "prompt":
        return {"kind": "prompt", "session": session, "text": _text(args.text)}
    if args.command == "fork":
        return fork_request(args, session)
    if args.command == "check":
        if not args.check_command:
            raise UsageError("check needs the command after --, as in: cairnd check S -- pytest -q")
        request = {"kind": "check", "session": session, "command": list(args.check_command)}
        if args.check_timeout:
            request["timeout"] = args.check_timeout
        return request
    if args.command == "rewind":
        request = {"kind": "rewind", "session": session, "user_message_index": args.at}
        if args.message is not None:
            request["prompt"] = _text(args.message)
        return request
    if args.command == "land":
        request = {"kind": "land", "session": session, "branch": args.branch}
        if args.turn is not None:
            request["turn"] = args.turn
        if args.message is not None:
            request["message"] = _text(args.message)
        if args.force:
            request["force"] = True
        return request
    if args.command == "cancel":
        return {"kind": "cancel", "session": session}
    request = {"kind": "delete", "session": session}
    if args.keep_worktree:
        request["keep_worktree"] = True
    return request


def fork_request(args: argparse.Namespace, session: str) -> dict[str, Any]:
    """A fork, or attempts (SPEC 19): `-n` tries, one per `-m`, one per `--agent`, or pairs."""
    request: dict[str, Any] = {"kind": "fork", "session": session, "user_message_index": args.at}
    if args.title is not None:
        request["title"] = args.title
    messages = [_text(text) for text in args.message or []]
    if len(messages) > 1:
        request["prompts"] = messages
    elif messages:
        request["prompt"] = messages[0]
    if args.count is not None:
        request["count"] = args.count
    if args.agent:
        request["agents"] = list(args.agent)
    if args.check_command and not args.check:
        raise UsageError(f"unexpected arguments {' '.join(args.check_command)!r}: a check command follows "
                         "--check --, as in: cairnd fork S --at 1 -n 2 --check -- pytest -q")
    if args.check:
        if not args.check_command:
            raise UsageError("--check needs the command after --, as in: --check -- pytest -q")
        request["check"] = list(args.check_command)
    return request


def _request_command(args: argparse.Namespace, config: Config) -> int:
    request = build_request(args, config)
    layout = config.layout
    if config.fleet is not None:
        return _fleet_request(args, config, request)
    try:
        request_id = submit(layout.spool, request)
    except OSError as exc:
        raise UsageError(f"cannot write the request into {layout.spool}: {exc.strerror or exc}") from None
    if args.no_wait:
        if args.json:
            sys.stdout.buffer.write(result_json({"id": request_id, "status": "queued",
                                                 "path": str(layout.spool / "new" / f"{request_id}.json")}))
        else:
            print(request_id)
        return EXIT_OK
    timeout = args.timeout or None
    progress = Progress(sys.stderr, describe_request(request))
    activity = LogActivity(layout.log_path(request["session"])) if request["kind"] == "prompt" else None
    running = DaemonWatch(layout.root)
    try:
        result = wait_for_result(layout.spool, request_id, timeout,
                                 on_tick=lambda place, elapsed: progress.show(phase(
                                     place, running.pid(),
                                     activity.poll() if activity is not None and place == "cur" else None), elapsed))
    except KeyboardInterrupt:
        progress.clear()
        print(f"cairnd: stopped waiting; request {request_id} stays in the spool and its result will appear in "
              f"{layout.spool}/done/ or failed/ as {request_id}.json", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.clear()
    if result is None:
        return _timed_out(config, request_id, args.timeout)
    return report_result(result, config, as_json=args.json)


def _fleet_request(args: argparse.Namespace, config: Config, request: dict[str, Any]) -> int:
    """SPEC 17: with [fleet], straight onto the fleet's stream; the result from its bucket."""
    from cairnd.errors import CairnError
    from cairnd.fleet.client import submit_sync  # NATS loads only with [fleet]
    assert config.fleet is not None
    request_id = new_request_id()
    try:
        result = submit_sync(config.fleet, request, request_id, timeout=args.timeout or None,
                             wait=not args.no_wait)
    except CairnError as exc:
        print(f"cairnd: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.no_wait:
        if args.json:
            sys.stdout.buffer.write(result_json({"id": request_id, "status": "queued", "fleet": config.fleet.host}))
        else:
            print(request_id)
        return EXIT_OK
    if result is None:
        print(f"cairnd: no result for {request_id} within {args.timeout:g} s; it stays queued in the fleet",
              file=sys.stderr)
        return EXIT_TIMEOUT
    return report_result(result, config, as_json=args.json)


def _timed_out(config: Config, request_id: str, timeout: float) -> int:
    layout = config.layout
    where = locate(layout.spool, request_id).place
    pid = daemon_pid(layout.root)
    if pid is None:
        daemon = f"the daemon is not running on {layout.root} (start it: cairnd serve)"
    else:
        daemon = f"the daemon is running (pid {pid})" if pid > 0 else "the daemon is running"
    place = {"new": "still queued in new/", "cur": "being worked on (in cur/)"}.get(where, f"in {where}")
    print(f"cairnd: no result for request {request_id} within {timeout:g} s; {daemon}; the request is {place}; "
          f"its result will appear in {layout.spool}/done/ or failed/ as {request_id}.json", file=sys.stderr)
    return EXIT_TIMEOUT


def command_line_wording(message: str) -> str:
    """A daemon's message as the command line's user reads it: the spool's field `force`
    is the flag `--force` here."""
    return message.replace("(use force ", "(use --force ")


def report_result(result: dict[str, Any], config: Config, *, as_json: bool) -> int:
    """Print a result file: whole as JSON (with the agent's answer of a turn it names, as
    the summary prints it), or a short summary; the exit status."""
    body = result.get("result")
    if as_json and result.get("status") == "ok" and isinstance(body, dict) and "turn" in body \
            and isinstance(body.get("session"), str):
        result = {**result, "result": {**body, "answer": agent_answer(config.layout, body["session"], body["turn"])}}
    if as_json:
        sys.stdout.buffer.write(result_json(result))
        sys.stdout.flush()
    if result.get("status") != "ok":
        error = result.get("error") or {}
        print(f"cairnd: {error.get('code', 'internal')}: {command_line_wording(error.get('message', ''))}",
              file=sys.stderr)
        return EXIT_FAILED
    if not as_json:
        sys.stdout.write(summarize(result.get("kind") or "", result.get("result") or {},
                                   lambda session, turn: agent_answer(config.layout, session, turn)))
    if result.get("kind") == "check":  # `cairnd check` exits with the command's status
        checked = result.get("result") or {}
        return EXIT_CHECK_TIMED_OUT if checked.get("timed_out") else int(checked.get("exit") or 0) & 0xFF
    return EXIT_OK


# --------------------------------------------------------------------------- read commands


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))


def _ls(args: argparse.Namespace, config: Config) -> int:
    rows = session_rows(config.layout, all_states=args.all)
    busy = busy_sessions(config.layout.spool)  # a turn running shows as it does in the web view
    if args.json:
        _print_json(session_listing(config.layout, rows))
    elif args.quiet:
        sys.stdout.write("".join(f"{row.id}\n" for row in rows))
    elif not rows:
        print(f"no sessions in {config.layout.root}", file=sys.stderr)
    else:
        table = [["ID", "TITLE", "TURNS", "STATE", "PARENT"]]
        table += [[row.id, shorten(row.title, 40), str(row.turns),
                   "running" if row.state == "ready" and row.id in busy else row.state, row.parent_id or "-"] for row in rows]
        sys.stdout.write(render.table(table))
    return EXIT_OK


def _show(args: argparse.Namespace, config: Config) -> int:
    shown = show_session(config.layout, resolve_session(config.layout, args.session))
    if args.json:
        _print_json(shown)
        return EXIT_OK
    sys.stdout.write(format_show(shown))
    return EXIT_OK


def _diff(args: argparse.Namespace, config: Config) -> int:
    from cairnd.sessions.diffs import compare, compare_text

    def named(text: str) -> str:
        session, at, turn = text.partition("@")
        return resolve_session(config.layout, session) + at + turn

    a, b = named(args.a), (named(args.b) if args.b else None)
    if args.json:
        _print_json(compare(config.layout, a, b)["files"])
        return EXIT_OK
    width = max(40, min(200, os.get_terminal_size(sys.stdout.fileno()).columns)) if sys.stdout.isatty() else 80
    old, new, text = compare_text(config.layout, a, b, stat=args.stat, width=width)
    if not text:
        print(f"no difference between {old.label} and {new.label}", file=sys.stderr)
        return EXIT_OK
    if sys.stdout.isatty():
        print(f"# {old.label} -> {new.label}", file=sys.stderr)
    sys.stdout.flush()
    sys.stdout.buffer.write(text)
    return EXIT_OK


def _compare(args: argparse.Namespace, config: Config) -> int:
    from cairnd.sessions.attempts import compare, compare_siblings
    from cairnd.state.registry import Registry

    layout = config.layout
    if args.siblings and args.sessions:
        raise UsageError("give sessions to compare, or --siblings SESSION, not both")
    if not args.siblings and not args.sessions:
        raise UsageError("name the sessions to compare, or --siblings SESSION (it and its sibling tries)")
    if not layout.db.exists():
        raise CairnError("unknown_session", f"no sessions in {layout.root}")
    registry = Registry(layout.db)
    if args.siblings:
        compared = compare_siblings(layout, registry, resolve_session(layout, args.siblings))
    else:
        compared = compare(layout, registry, [resolve_session(layout, text) for text in args.sessions])
    if args.json:
        _print_json(compared)
    else:
        sys.stdout.write(render.format_compare(compared))
    return EXIT_OK


def _tree(args: argparse.Namespace, config: Config) -> int:
    forest = read_forest(config.layout)
    marked = None
    if args.session:
        marked = resolve_session(config.layout, args.session)
        root = find_root(forest, marked)
        if root is None:
            raise CairnError("unknown_session", f"session {args.session!r} does not exist in {config.layout.root}")
        forest = [root]
    elif not args.all:
        forest = [root for root in forest if root.alive()]
    if args.json:
        _print_json([root.as_dict() for root in forest])
    elif not forest:
        print(f"no sessions in {config.layout.root}", file=sys.stderr)
    else:
        sys.stdout.write(format_tree(forest, marked))
    return EXIT_OK


def _status(args: argparse.Namespace, config: Config) -> int:
    status = daemon_status(config)
    if config.fleet is not None:
        from cairnd.fleet.client import status_sync
        status["fleet"] = status_sync(config.fleet)
    if args.json:
        _print_json(status)
        return EXIT_OK
    sys.stdout.write(format_status(status))
    return EXIT_OK


def _gc(args: argparse.Namespace, config: Config) -> int:
    from cairnd.state.registry import Registry
    from cairnd.checkpoints.storage import collect

    layout = config.layout
    rows = Registry(layout.db).sessions(("deleted",)) if layout.db.exists() else []
    done = collect(rows, layout.session_dir, config.keep_deleted_days, dry_run=args.dry_run)
    gone = {item.session for item in done}
    # Deleted sessions whose logs are still inside their keep_deleted_days.
    waiting = [row for row in rows if row.id not in gone and layout.session_dir(row.id).exists()]
    days = config.keep_deleted_days
    days_shown: int | float = int(days) if float(days).is_integer() else days
    if args.json:
        _print_json({"dry_run": args.dry_run, "keep_deleted_days": days_shown,
                     "sessions": [{"session": item.session, "deleted_at": iso_timestamp(item.deleted_at),
                                   "log_bytes": item.log_bytes} for item in done],
                     "waiting": [{"session": row.id, "deleted_at": iso_timestamp(row.deleted_at or 0.0),
                                  "removable_at": iso_timestamp((row.deleted_at or 0.0) + days * 86400)}
                                 for row in waiting]})
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for item in done:
        sys.stdout.write(f"{verb} {item.session}: {render.size(item.log_bytes)}\n")
    sys.stdout.write(f"{verb} the logs of {len(done)} session(s) deleted more than "
                     f"{days_shown:g} day(s) ago, {render.size(sum(i.log_bytes for i in done))}\n")
    if waiting:
        first = min(row.deleted_at or 0.0 for row in waiting) + days * 86400
        sys.stdout.write(f"{len(waiting)} deleted session(s) wait out their {days_shown:g} day(s); "
                         f"the first can go from {iso_timestamp(first)}\n")
    return EXIT_OK



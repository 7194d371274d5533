"""The command line's grammar (SPEC section 8): every command, its options, its help
and examples, as one argparse parser. `cli` dispatches what it parses."""

from __future__ import annotations

import argparse
from typing import Any

from cairnd import __version__

DEFAULT_TIMEOUT = 600.0
REQUEST_COMMANDS = ("new", "prompt", "fork", "rewind", "land", "cancel", "rm", "check")
SESSION_HELP = "a session id, or a unique prefix of one"


class UsageError(Exception):
    """Something the user must fix in the command line or the set-up: exit 2."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout cannot be negative")
    return value


def _common(suppress: bool) -> argparse.ArgumentParser:
    # Given both before and after the command; SUPPRESS keeps a subcommand's default
    # from overwriting a value given before it.
    default: Any = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("-c", "--config", metavar="FILE", default=default,
                       help="configuration file (default: $CAIRND_CONFIG, else /etc/cairnd/cairnd.toml if present)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="print machine-readable JSON on stdout")
    return common


def _waiting() -> argparse.ArgumentParser:
    waiting = argparse.ArgumentParser(add_help=False)
    group = waiting.add_argument_group("waiting")
    group.add_argument("--no-wait", action="store_true",
                       help="queue the request, print its id and exit (works with the daemon stopped)")
    group.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"give up waiting after SECONDS, exit 3 (default {DEFAULT_TIMEOUT:g}; 0: wait forever)")
    return waiting


COMMANDS: dict[str, tuple[str, str]] = {
    # name: (one line, examples)
    "serve": ("run the daemon in the foreground (what systemd runs)",
              "cairnd serve\n  cairnd -c ~/.config/cairnd/cairnd.toml serve -v"),
    "demo": ("a self-contained tour on the built-in reference agent: turns, a fork, side by side",
             "cairnd demo\n  cairnd demo --dir /tmp/tour"),
    "new": ("start a session on a git repository, in a new worktree (or in place)",
            "cairnd new . --title 'fix the parser'\n"
            "  cairnd new ~/src/app --ref main -m 'write notes.md: hello'"),
    "prompt": ("run one turn: send TEXT to the session's agent and wait for the answer",
               "cairnd prompt 01jb7 'add a README'\n  echo 'commit: wip' | cairnd prompt 01jb7 -"),
    "fork": ("fork a session at a user message: new worktree with the files of that moment; or many tries",
             "cairnd fork 01jb7 --at 2\n  cairnd fork 01jb7 --at 1 -m 'try it the other way' --json\n"
             "  cairnd fork 01jb7 --at 1 -n 3 -m 'fix the parser' --check -- pytest -q\n"
             "  cairnd fork 01jb7 --at 1 --agent claude --agent codex -m 'fix the parser'\n"
             "  cairnd fork 01jb7 --at 1 -m 'use a regex' -m 'use a tokenizer'"),
    "check": ("run a command in a session's worktree after its turn, confined as its agent; exit with its status",
              "cairnd check 01jb7 -- pytest -q\n  cairnd check 01jb7 --check-timeout 60 -- make test"),
    "compare": ("tries side by side: agent, turns, files changed since the cut, last check; reads state only",
                "cairnd compare --siblings 01jb7\n  cairnd compare 01jb7 01jc2 --json"),
    "rewind": ("take a session back to before user message K, in place; what it was becomes a new session",
               "cairnd rewind 01jb7 --at 2\n  cairnd rewind 01jb7 --at 1 -m 'try it the other way' --json"),
    "diff": ("the files between two checkpoints (SESSION or SESSION@N, N a turn count); reads state only",
             "cairnd diff 01jb7\n  cairnd diff 01jb7@1 01jc2 --stat\n  cairnd diff 01jb7 01jc2 --json"),
    "land": ("turn a session's checkpoint into a commit on a branch (new, or fast-forwarded)",
             "cairnd land 01jb7 --branch try-parser\n  cairnd land 01jb7 --branch main --turn 2 -m 'parser'"),
    "cancel": ("cancel the turn a session is running",
               "cairnd cancel 01jb7"),
    "rm": ("delete a session: its worktree, refs and agent (the log and lineage stay)",
           "cairnd rm 01jb7\n  cairnd rm 01jb7 --keep-worktree"),
    "ls": ("list sessions: id, title, turns, state, parent",
           "cairnd ls\n  cairnd ls --all --json"),
    "show": ("a session's turns with their checkpoints and the files each turn changed",
             "cairnd show 01jb7\n  cairnd show 01jb7 --json | jq '.turns[].changes'"),
    "tree": ("fork lineage as a tree, with the message each fork was cut at",
             "cairnd tree\n  cairnd tree 01jb7"),
    "status": ("the daemon: running?, queue depths, turns in flight",
               "cairnd status\n  cairnd status --json"),
    "acp": ("an ACP agent on stdio for editors (Zed, JetBrains, Neovim, Emacs, Toad, acpx): cairnd sessions "
            "running a profile's agent in place, with /checkpoints /rewind /fork /diff /land",
            "cairnd acp\n  cairnd acp --agent claude"),
    "web": ("serve the web view: sessions, conversations, forks, live turns (loopback by default)",
            "cairnd web\n  cairnd web --listen 127.0.0.1:9000"),
    "gc": ("remove the logs of sessions deleted more than keep_deleted_days ago (and any refs left)",
           "cairnd gc --dry-run\n  cairnd gc --json"),
    "completion": ("print a shell completion script for bash, zsh or fish",
                   "source <(cairnd completion bash)\n  cairnd completion zsh > ~/.zfunc/_cairnd\n"
                   "  cairnd completion fish > ~/.config/fish/completions/cairnd.fish"),
}

MAIN_EPILOG = """\
examples:
  cairnd demo                               the tour: no network, no API key
  cairnd new . -m 'write notes.md: hello'   start a session here, run a turn
  cairnd fork 01jb7 --at 1                  fork before its second user message
  cairnd show 01jb7                         its turns, checkpoints, changed files
  cairnd status                             is the daemon running? what is queued?

SESSION may be any unique prefix of a session id.
exit status: 0 ok, 1 the request failed (its code on stderr), 2 usage, 3 no result in time.
"""


def command_after(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(the arguments argparse reads, the command after `--`) for `fork ... --check --
    CMD...` and `check S -- CMD...`: argparse cannot give a positional list after
    another positional, so the command is split off first (None: no `--` there)."""
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    if not {"fork", "check"} & set(argv[:cut]):
        return argv, None  # another command's own use of `--`
    return argv[:cut], argv[cut + 1:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairnd", parents=[_common(suppress=False)], formatter_class=_Formatter,
        description="cairnd runs ACP coding agents, checkpoints the git state after every turn,\n"
                    "and forks any session at any user message: conversation and files,\n"
                    "uncommitted and untracked ones included.",
        epilog=MAIN_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cairnd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    common = _common(suppress=True)
    waiting = _waiting()

    def command(name: str, *, request: bool = False) -> argparse.ArgumentParser:
        line, examples = COMMANDS[name]
        return sub.add_parser(
            name, help=line, description=line[0].upper() + line[1:] + ".",
            epilog="examples:\n  " + examples, formatter_class=_Formatter,
            parents=[common, waiting] if request else [common],
        )

    serve = command("serve")
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")

    demo = command("demo")
    demo.add_argument("--dir", metavar="DIR", help="where to put the demo's files (default: a new temp dir)")

    new = command("new", request=True)
    new.add_argument("repo", metavar="REPO", help="path to a git repository (relative paths are made absolute)")
    new.add_argument("--ref", metavar="R", help="commit to start from (default HEAD)")
    new.add_argument("--title", metavar="T", help="a title (default: the repository's name)")
    new.add_argument("--agent", metavar="A", help="agent profile (default: the configuration's default_agent)")
    new.add_argument("--in-place", action="store_true", help="work in the repository's own tree, not a new worktree")
    new.add_argument("-m", "--message", metavar="TEXT", help="run TEXT as the first turn ('-': read stdin)")

    prompt = command("prompt", request=True)
    prompt.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    prompt.add_argument("text", metavar="TEXT", help="the prompt ('-': read stdin)")

    fork = command("fork", request=True)
    fork.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    fork.add_argument("--at", type=int, required=True, metavar="K",
                      help="0-based user message to cut at: the fork keeps the K messages before it")
    fork.add_argument("--title", metavar="T", help="a title (default: '<parent title> (fork N)')")
    fork.add_argument("-m", "--message", metavar="TEXT", action="append",
                      help="run TEXT as the fork's first turn ('-': read stdin); repeated: one try per TEXT")
    fork.add_argument("-n", "--count", type=int, metavar="N", help="make N tries at the cut (1-16), titled '(try N)'")
    fork.add_argument("--agent", metavar="A", action="append",
                      help="one try with agent profile A; repeat for more (with repeated -m: pairs)")
    fork.add_argument("--check", action="store_true",
                      help="after each try's first turn run the command given after `--` in its worktree")
    fork.set_defaults(check_command=[])  # what follows `--` (split off by the caller: `command_after`)

    rewind = command("rewind", request=True)
    rewind.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    rewind.add_argument("--at", type=int, required=True, metavar="K",
                        help="0-based user message to go back to: the session keeps the K messages before it")
    rewind.add_argument("-m", "--message", metavar="TEXT", help="run TEXT as the next turn ('-': read stdin)")

    land = command("land", request=True)
    land.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    land.add_argument("--branch", required=True, metavar="B", help="the branch to create or fast-forward")
    land.add_argument("--turn", type=int, metavar="N", help="the checkpoint after turn N (default: the latest)")
    land.add_argument("-m", "--message", metavar="MESSAGE",
                      help="commit message (default: the title, then one line per user message)")
    land.add_argument("--force", action="store_true", help="move the branch even when it is not a fast-forward")

    check = command("check", request=True)
    check.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    check.add_argument("--check-timeout", type=_timeout, metavar="SECONDS",
                       help="stop the command after SECONDS (default 600)")
    check.set_defaults(check_command=[])  # `-- CMD...`: split off by the caller (`command_after`)

    compare = command("compare")
    compare.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to set side by side")
    compare.add_argument("--siblings", metavar="SESSION",
                         help="SESSION and every fork of its parent at the same message")

    diff = command("diff")
    diff.add_argument("a", metavar="A[@N]", help="a session (its latest checkpoint), or SESSION@N (after turn N)")
    diff.add_argument("b", metavar="B[@N]", nargs="?",
                      help="compare A with this (default: where A started: a fork's parent at the cut)")
    diff.add_argument("--stat", action="store_true", help="a summary of changed files instead of the diff")

    cancel = command("cancel", request=True)
    cancel.add_argument("session", metavar="SESSION", help=SESSION_HELP)

    rm = command("rm", request=True)
    rm.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    rm.add_argument("--keep-worktree", action="store_true", help="leave the worktree's files on disk")

    ls = command("ls")
    ls.add_argument("-a", "--all", action="store_true", help="include deleted sessions")
    ls.add_argument("-q", "--quiet", action="store_true", help="print only the ids")

    show = command("show")
    show.add_argument("session", metavar="SESSION", help=SESSION_HELP)

    tree = command("tree")
    tree.add_argument("session", metavar="SESSION", nargs="?", help="show only the tree holding this session")
    tree.add_argument("-a", "--all", action="store_true", help="include trees whose sessions are all deleted")

    command("status")

    acp = command("acp")
    acp.add_argument("--agent", metavar="PROFILE", help="agent profile (default: the configuration's default_agent)")

    web = command("web")
    web.add_argument("--listen", metavar="ADDR",
                     help="HOST:PORT to listen on (default: [web] listen, else 127.0.0.1:8765); "
                          "a non-loopback address needs [web] token")
    gc = command("gc")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")

    completion = command("completion")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    return parser

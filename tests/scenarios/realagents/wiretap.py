"""Run an agent and record the bytes of its stdio, both ways, as they cross.

    python wiretap.py OUTDIR -- COMMAND [ARG...]

A test puts this in front of a real agent's command in a cairnd profile, so it
can compare the session log with what really went over the pipes, byte for
byte, without trusting cairnd's own tap. Writes, per run (PID is the wiretap's):

    OUTDIR/<PID>.in    what the client wrote to the agent's stdin
    OUTDIR/<PID>.out   what the agent wrote to its stdout
    OUTDIR/<PID>.cwd   the working directory (the session worktree)

The agent inherits stderr, the process group and signals: cairnd signals the
group, so a SIGTERM or SIGKILL reaches both. Stdin EOF is passed on; the
wiretap exits with the agent's status once its stdout is drained.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 16


def relay(source_fd: int, sink_fd: int | None, record: BinaryIO, close_sink: BinaryIO | None = None) -> None:
    """Copy source to sink and record, chunk by chunk, until EOF (or the sink is gone)."""
    try:
        while chunk := os.read(source_fd, CHUNK):
            record.write(chunk)  # first: what was recorded was at least attempted
            if sink_fd is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(sink_fd, view):]
    except (BrokenPipeError, OSError):
        pass
    finally:
        if close_sink is not None:
            try:
                close_sink.close()
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(os.path.expanduser(argv[0]))  # "~/wire": in the session's own HOME
    command = argv[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / str(os.getpid())
    stem.with_suffix(".cwd").write_text(os.getcwd())
    agent = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert agent.stdin is not None and agent.stdout is not None
    with open(stem.with_suffix(".in"), "wb", buffering=0) as sent, \
            open(stem.with_suffix(".out"), "wb", buffering=0) as received:
        to_agent = threading.Thread(
            target=relay, args=(sys.stdin.fileno(), agent.stdin.fileno(), sent, agent.stdin), daemon=True)
        to_agent.start()
        relay(agent.stdout.fileno(), sys.stdout.fileno(), received)
        return agent.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

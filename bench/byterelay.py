"""A process that only copies bytes between its stdio and a child's, both ways, as they
come: the least any process in front of an ACP agent can cost (bench/acpfront.py's
floor). Usage: python bench/byterelay.py COMMAND [ARG...]
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys


def main(command: list[str]) -> int:
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert child.stdin is not None and child.stdout is not None
    to = {sys.stdin.fileno(): child.stdin.fileno(), child.stdout.fileno(): sys.stdout.fileno()}
    selector = selectors.DefaultSelector()
    for source in to:
        selector.register(source, selectors.EVENT_READ)
    while to:
        for key, _events in selector.select():
            data = os.read(key.fd, 1 << 16)
            if data:
                view = memoryview(data)
                while view:
                    view = view[os.write(to[key.fd], view):]
                continue
            selector.unregister(key.fd)  # that side closed: pass the end on
            if to.pop(key.fd) == child.stdin.fileno():
                child.stdin.close()
    return child.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

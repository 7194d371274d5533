"""sd_notify(3) spoken directly: one datagram per state change to $NOTIFY_SOCKET.

No libsystemd: the protocol is a newline-separated KEY=VALUE datagram on an AF_UNIX
socket (a leading '@' names an abstract socket). Outside systemd every call is a
no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") -> whether a datagram was sent."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            # Never block the event loop: a listener that stopped reading (its queue
            # is ~10 datagrams) must not stop the daemon.
            self._socket.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError:
            # systemd gone or its queue full: never a reason to fail work.
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; None when the
    watchdog is off or meant for another process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None

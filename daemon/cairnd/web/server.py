"""Running the web view: `cairnd web [--listen ADDR]` in the foreground, or inside
`cairnd serve` when `[web] listen` is set.

The listening socket is bound here, before uvicorn starts, so the address it really
got (`--listen 127.0.0.1:0` picks a free port) is announced, and so a refused address
(a non-loopback one without `[web] token`, a port in use) stops the start with a clear
message. `cairnd web` prints the address with its token (`?token=`) as the first line
of its stdout, for the user who started it; the daemon's log, which others may read,
names only where the token is kept.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Generator
from contextlib import contextmanager

import anyio
import uvicorn
from anyio.abc import TaskStatus

from cairnd.config.settings import DEFAULT_WEB_LISTEN, Config, ConfigError
from cairnd.web.guard import is_loopback, split_listen
from cairnd.web.token import web_token

GRACEFUL_SECONDS = 2.0  # live streams never end by themselves: cut them after this


def check_listen(listen: str, token: str) -> tuple[str, int]:
    """(host, port) of a listen address the configuration allows; ConfigError when it
    is malformed, or not loopback and no token is set."""
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"[web] listen: {exc}") from None
    if not is_loopback(host) and not token:
        raise ConfigError(f"[web] listen = {listen!r} is not a loopback address: set [web] token too "
                          "(every request must then carry it), or reach it through an SSH tunnel")
    return host, port


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"[web] cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def token_place(config: Config) -> str:
    """Where the token is, in words fit for a log."""
    return "[web] token" if config.web.token else str(config.layout.web_token)


def _server(config: Config, token: str, embedded: bool) -> uvicorn.Server:
    from cairnd.web.app import build_app  # Starlette and Jinja load only when serving

    app = build_app(config, token=token)
    settings = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                              timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False,
                              proxy_headers=False)
    return _EmbeddedServer(settings) if embedded else uvicorn.Server(settings)


class _EmbeddedServer(uvicorn.Server):
    """Inside the daemon, signals are the daemon's: it tells the server to exit."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run_web(config: Config, listen: str | None = None) -> int:
    """`cairnd web`: serve until SIGINT or SIGTERM."""
    listen = listen or config.web.listen or DEFAULT_WEB_LISTEN
    host, port = check_listen(listen, config.web.token)
    token = web_token(config)
    sock = bind(host, port)
    server = _server(config, token, embedded=False)
    print(f"{url_of(sock)}?token={token}", flush=True)
    print(f"cairnd web: serving {config.layout.root} on {url_of(sock)} (the token: {token_place(config)}; "
          "the address on stdout carries it)", file=sys.stderr, flush=True)
    try:
        anyio.run(server.serve, [sock])
    finally:
        sock.close()
    return 0


class EmbeddedWeb:
    """The web view as one task of the daemon (`[web] listen` with `cairnd serve`)."""

    def __init__(self, config: Config) -> None:
        assert config.web.listen is not None
        self.host, self.port = check_listen(config.web.listen, config.web.token)
        self.token = web_token(config)
        self.config = config
        self.server: uvicorn.Server | None = None
        self.done = anyio.Event()

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = bind(self.host, self.port)
        try:
            self.server = _server(self.config, self.token, embedded=True)
            task_status.started(url_of(sock))
            await self.server.serve([sock])
        finally:
            sock.close()
            self.done.set()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            with anyio.move_on_after(GRACEFUL_SECONDS + 3):
                await self.done.wait()

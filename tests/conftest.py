"""Fixtures every test folder shares. Being at the top of tests/, this file also puts
tests/ on sys.path (pytest's default import mode), so the helpers beside it
(gitrepos, daemonproc, fleetservers, logsamples, webkit) import by their names.

- `repo`: a real repository with one commit. What the commit holds is the test's to say,
  with `@pytest.mark.repo(files={...}, gitignore="...")` on the test or its module
  (`pytestmark`); without one it holds README.md. `@pytest.mark.repo(empty=True)` asks
  for a repository with no commit yet.
- `start_daemon(settings, env=..., state=...)`: the real daemon as a subprocess on a state
  directory under tmp_path, ready (READY=1 read from its notify socket). Every daemon it
  started that is still running at the end is stopped and must exit 0.
- `daemon`: one daemon with the default settings.
- `shared_daemon`: one daemon with the default settings for all of a module's tests that
  use it, for tests that only add sessions of their own and neither stop the daemon nor
  break its state directory (a daemon's start and stop cost about a second of CPU).
  `start_module_daemon(settings, env=..., state=...)` starts one with other settings for a
  module-scoped fixture of a test module's own; both are stopped after the module's last
  test and must exit 0.
- `anyio_backend`: async tests run on asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon
from gitrepos import git, make_repo

DEFAULT_FILES = {"README.md": "hello\n"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    mark = request.node.get_closest_marker("repo")
    asked: dict[str, Any] = dict(mark.kwargs) if mark else {}
    unknown = asked.keys() - {"files", "gitignore", "empty"}
    assert not unknown, f"pytest.mark.repo takes files, gitignore and empty, not {sorted(unknown)}"
    path = tmp_path / "project"
    if asked.get("empty"):
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        return path
    return make_repo(path, asked.get("files", DEFAULT_FILES), gitignore=asked.get("gitignore"))


def stop_all(daemons: list[Daemon]) -> None:
    """Stop each daemon still running; every one must exit 0 (its stderr's tail if not)."""
    failed = []
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            code = daemon.stop()
            if code != 0:
                failed.append(f"{daemon.state} exited {code}: {daemon.stderr()[-3000:]}")
        daemon.close_socket()
    assert not failed, "\n".join(failed)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(settings: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
              state: str | Path = "state", wait_ready: bool = True) -> Daemon:
        made = Daemon(tmp_path / state, settings, env)
        started.append(made)
        return made.start(wait_ready=wait_ready)

    yield start
    stop_all(started)


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon()


@pytest.fixture(scope="module")
def start_module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []
    base = tmp_path_factory.mktemp("daemons")

    def start(settings: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
              state: str = "state") -> Daemon:
        made = Daemon(base / state, settings, env)
        started.append(made)
        return made.start()

    yield start
    stop_all(started)


@pytest.fixture(scope="module")
def shared_daemon(start_module_daemon: Callable[..., Daemon]) -> Daemon:
    return start_module_daemon(state="shared")

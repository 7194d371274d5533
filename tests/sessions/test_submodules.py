"""SPEC 3, "Repositories inside the worktree": a session's submodules are checked out
(from the source checkout's own submodule repositories, offline), captured at every
checkpoint, and restored exactly by forks and rewinds, recursively; nested
repositories the agent made are kept the same way."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cairnd.agent.history import predict
from cairnd.checkpoints.checkpoint import take_checkpoint
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.errors import CairnError
from cairnd.git import worktree as gitworktree
from cairnd.sessionlog.entries import cairnd_entry, envelope_line
from cairnd.sessionlog.file import iter_lines
from cairnd.sessions import rewind as rewinding
from cairnd.sessions.forker import fork_session
from cairnd.state.layout import StateLayout
from cairnd.state.registry import Registry
from gitrepos import commit_all, git, git_text, make_repo, write
from logsamples import agent_chunk, prompt_request, prompt_response, turn_complete

CAP = 1 << 20


def add_submodule(superproject: Path, source: Path, path: str) -> None:
    git(superproject, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(source), path)


def files(root: Path) -> dict[bytes, tuple[str, bytes]]:
    """Every file under `root`, at any depth, outside every `.git` (a submodule's `.git`
    file names where its git directory is, which differs by design)."""
    found: dict[bytes, tuple[str, bytes]] = {}
    base = os.fsencode(root)
    for directory, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if d != b".git"]
        for name in names:
            if name == b".git":
                continue
            full = os.path.join(directory, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, base)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("120000", os.readlink(full))
            else:
                found[rel] = ("100755" if st.st_mode & stat.S_IXUSR else "100644", open(full, "rb").read())
    return found


def repo_state(worktree: Path) -> tuple[str, str, bytes]:
    """(HEAD, branch or "", the index as `ls-files -s` lists it) of the repository at `worktree`."""
    head = git_text(worktree, "rev-parse", "HEAD")
    branch = git_text(worktree, "symbolic-ref", "-q", "--short", "HEAD") if git(
        worktree, "rev-parse", "--symbolic-full-name", "HEAD").strip() != b"HEAD" else ""
    return head, branch, git(worktree, "ls-files", "-s", "-z")


def state(worktree: Path, inner: tuple[str, ...]) -> tuple:
    return files(worktree), repo_state(worktree), tuple(repo_state(worktree / p) for p in inner)


class Session:
    """A session in a linked worktree cairnd made of a superproject with submodules, its
    log written by hand, its checkpoints real."""

    def __init__(self, tmp_path: Path) -> None:
        self.layout = StateLayout(tmp_path / "state")
        self.layout.create()
        self.registry = Registry(self.layout.db)
        deep = make_repo(tmp_path / "deep", {"d.txt": "deep\n"})
        lib = make_repo(tmp_path / "lib", {"l.txt": "lib\n", "keep.txt": "k\n"})
        add_submodule(lib, deep, "deep")
        commit_all(lib, "deep")
        self.source = make_repo(tmp_path / "super", {"a.txt": "a\n"}, gitignore="*.log\n")
        add_submodule(self.source, lib, "lib")
        commit_all(self.source, "lib")
        git(self.source, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "--recursive", "-q")
        self.id = "sess1"
        self.worktree = self.layout.worktree_parent(self.id) / "super"
        gitworktree.add_worktree(self.source, self.worktree, git_text(self.source, "rev-parse", "HEAD"),
                                 inner_map=self.layout.inner_map(self.id))
        self.registry.begin_session(id=self.id, title="Plan", repo=self.source, worktree=self.worktree,
                                    in_place=False, agent="reference", parent_id=None, root_id=self.id, turns=0,
                                    request_id=None)
        self.registry.commit_session(self.id, {"session": self.id})
        self.log = self.layout.log_path(self.id)
        self.log.parent.mkdir(parents=True)
        self.turns = 0
        self.inner: tuple[str, ...] = ("lib", "lib/deep")
        self.states: list[tuple] = []
        self.params: list[dict] = []
        self.append(cairnd_entry("_posthog/agent_checkpoint", self.checkpoint()))

    @property
    def row(self):
        return self.registry.get(self.id)

    def checkpoint(self) -> dict:
        params = take_checkpoint(self.id, self.worktree, self.turns, CAP, inner_map=self.layout.inner_map(self.id))
        self.states.append(state(self.worktree, self.inner))
        self.params.append(params)
        return params

    def append(self, *entries: dict | bytes) -> None:
        with open(self.log, "ab") as f:
            for entry in entries:
                f.write(entry if isinstance(entry, bytes) else envelope_line(entry))

    def turn(self, text: str, change) -> None:
        rid = 100 + self.turns
        self.append(prompt_request(rid, text))
        change()
        self.append(agent_chunk(f"did {text}"), prompt_response(rid))
        self.turns += 1
        self.append(turn_complete(session=self.id), cairnd_entry("_posthog/agent_checkpoint", self.checkpoint()))

    def fork(self, k: int) -> dict:
        return fork_session(self.layout, self.registry, self.row, k, title=None, request_id=None, max_file_bytes=CAP)


def history(s: Session) -> Session:
    wt = s.worktree
    s.turn("edit in the submodule, and outside", lambda: (write(wt, "lib/l.txt", "lib 1\n"), write(wt, "a.txt", "a1\n")))
    s.turn("stage and leave untracked in the submodule", lambda: (
        git(wt / "lib", "add", "l.txt"), write(wt, "lib/l.txt", "lib 2\n"), write(wt, "lib/new dir/u.txt", "u\n")))
    s.turn("commit in the submodule", lambda: (commit_all(wt / "lib", "agent's commit"),
                                               os.remove(wt / "lib" / "keep.txt")))
    s.turn("edit the submodule's submodule", lambda: (write(wt, "lib/deep/d.txt", "deep 1\n"),
                                                      write(wt, "lib/deep/more.txt", "m\n")))
    return s


@pytest.fixture
def session(tmp_path: Path) -> Session:
    """A session of its own, for the tests that change it or its stores."""
    return history(Session(tmp_path))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """One session for the tests that only read it or fork it (a fork changes nothing
    of its parent's): its four turns of submodule history take a second or two to build."""
    return history(Session(tmp_path_factory.mktemp("submodules")))


def test_a_new_worktree_has_its_submodules_checked_out_recursively(tmp_path: Path):
    s = Session(tmp_path)
    assert (s.worktree / "lib" / "l.txt").read_text() == "lib\n"
    assert (s.worktree / "lib" / "deep" / "d.txt").read_text() == "deep\n"
    assert git(s.worktree, "status", "--porcelain") == b""
    assert git(s.worktree / "lib", "status", "--porcelain") == b""
    # At the commits the superproject records, from the source's own submodule repositories.
    assert git_text(s.worktree / "lib", "rev-parse", "HEAD") == git_text(s.source / "lib", "rev-parse", "HEAD")
    # Objects borrowed, not copied: the session's submodule repository holds no object of its own.
    gitdir = Path(git_text(s.worktree / "lib", "rev-parse", "--absolute-git-dir"))
    assert not any(p.is_file() for p in (gitdir / "objects").rglob("*") if p.parent.name != "info")
    assert s.params[0]["submodules"][0]["path"] == "lib" and s.params[0]["skipped"] == []


def test_checkpoints_record_each_submodule_and_pin_it_in_its_store(shared: Session):
    last = shared.params[-1]
    assert [e["path"] for e in last["submodules"]] == ["lib", "lib/deep"]
    lib = last["submodules"][0]
    assert lib["headSha"] == git_text(shared.worktree / "lib", "rev-parse", "HEAD")
    # The agent's commit and the snapshot are in the source's submodule repository, pinned.
    store = shared.source / ".git" / "modules" / "lib"
    pinned = git_text(store, "rev-parse", f"refs/cairnd/{shared.id}/{shared.turns}/lib")
    assert pinned == lib["worktreeSha"]
    assert git_text(store, "rev-parse", f"{pinned}^") == lib["headSha"]
    # The superproject's snapshot records the submodule's commit.
    assert git_text(shared.source, "rev-parse", f"{last['worktreeSha']}:lib") == lib["headSha"]
    assert last["dirty"] is True and last["skipped"] == []


@pytest.mark.parametrize("k", range(4))
def test_a_fork_at_every_message_is_exact_inside_and_outside_the_submodules(shared: Session, k: int):
    result = shared.fork(k)
    fork = Path(result["worktree"])
    expected = shared.states[k]
    assert state(fork, shared.inner) == expected
    # And the fork's own baseline records the same inner states.
    baseline = [line for _, line in iter_lines(Path(result["log"]))][-1]
    assert b'"submodules"' in baseline
    # ... pinned under the fork's own refs in the submodule's store (the parent may go).
    store = shared.source / ".git" / "modules" / "lib"
    assert git(store, "for-each-ref", f"refs/cairnd/{result['session']}/")


def test_a_fork_past_the_last_message_is_refused_and_makes_nothing(shared: Session):
    before = sorted(p.name for p in shared.layout.worktree_parent(shared.id).parent.iterdir())
    with pytest.raises(CairnError) as refused:
        shared.fork(4)
    assert refused.value.code == "fork_out_of_range"
    assert refused.value.message == f"user_message_index 4: session {shared.id} has 4 user messages"
    assert sorted(p.name for p in shared.layout.worktree_parent(shared.id).parent.iterdir()) == before


def test_a_fork_survives_the_parent_agent_deleting_its_submodule_objects(session: Session):
    gitdir = Path(git_text(session.worktree / "lib", "rev-parse", "--absolute-git-dir"))
    for path in (gitdir / "objects").rglob("*"):
        if path.is_file() and path.parent.name != "info":
            path.unlink()
    fork = Path(session.fork(3)["worktree"])
    assert state(fork, session.inner) == session.states[3]


def test_a_rewind_keeps_everything_in_the_abandoned_session_and_restores_the_submodules(session: Session):
    before = state(session.worktree, session.inner)
    journal = rewinding.abandon(session.layout, session.registry, session.row, 1, request_id=None, max_file_bytes=CAP,
                                history=lambda log, end: predict(iter_lines(log), end, "auto", "reference"))
    result = rewinding.finish(session.layout, session.registry, session.row, journal, max_file_bytes=CAP)
    assert state(session.worktree, session.inner) == session.states[1]
    abandoned = session.registry.get(result["abandoned"])
    assert state(abandoned.worktree, session.inner) == before
    # The abandoned session forks at every message as the session did.
    for k in range(4):
        fork = fork_session(session.layout, session.registry, abandoned, k, title=None, request_id=None,
                            max_file_bytes=CAP)
        assert state(Path(fork["worktree"]), session.inner) == session.states[k]


def test_a_nested_repository_the_agent_made_is_kept_by_a_fork(tmp_path: Path):
    s = Session(tmp_path)
    wt = s.worktree

    def clone_like() -> None:
        nested = wt / "vendor" / "x"
        nested.mkdir(parents=True)
        git(nested, "init", "-q", "-b", "trunk")
        write(nested, "v.txt", "v\n")
        commit_all(nested, "v")
        write(nested, "v.txt", "v changed\n")
        write(nested, "untracked.txt", "u\n")
        git(nested, "add", "untracked.txt")
        write(wt, "lib/in-lib/n.txt", "n\n")
        git(wt / "lib" / "in-lib", "init", "-q")
        git(wt / "lib" / "in-lib", "add", "n.txt")
        commit_all(wt / "lib" / "in-lib", "n")

    s.inner = ("lib", "lib/deep", "vendor/x", "lib/in-lib")
    s.turn("clone a library", clone_like)
    s.turn("more", lambda: write(wt, "a.txt", "later\n"))
    assert [n["path"] for n in s.params[1]["nested"]] == ["lib/in-lib", "vendor/x"]
    assert s.params[1]["skipped"] == []
    fork = Path(s.fork(1)["worktree"])
    assert state(fork, s.inner) == s.states[1]
    assert git_text(fork / "vendor" / "x", "log", "--format=%s") == "v"


def test_a_turn_that_touched_no_submodule_costs_no_git_process_for_it(tmp_path: Path, monkeypatch):
    from cairnd.git import inner

    s = Session(tmp_path)
    cache = __import__("cairnd.checkpoints.innercheckpoint", fromlist=["InnerCache"]).InnerCache()
    take_checkpoint(s.id, s.worktree, 1, CAP, inner_map=s.layout.inner_map(s.id), changed=None, inner_cache=cache)
    calls: list[str] = []
    real = inner.capture
    monkeypatch.setattr(inner, "capture", lambda repo, *a, **k: (calls.append(repo.path), real(repo, *a, **k))[1])
    write(s.worktree, "a.txt", "outside\n")
    params = take_checkpoint(s.id, s.worktree, 2, CAP, inner_map=s.layout.inner_map(s.id), changed={b"a.txt"},
                             inner_cache=cache)
    assert calls == []
    assert [e["path"] for e in params["submodules"]] == ["lib", "lib/deep"]
    write(s.worktree, "lib/deep/d.txt", "inside\n")
    take_checkpoint(s.id, s.worktree, 3, CAP, inner_map=s.layout.inner_map(s.id), changed={b"lib/deep/d.txt"},
                    inner_cache=cache)
    assert calls == ["lib/deep"]  # lib itself: nothing of its own changed


def test_diff_shows_the_files_changed_inside_each_submodule(shared: Session):
    from cairnd.sessions.diffs import compare, compare_text

    result = compare(shared.layout, f"{shared.id}@3", f"{shared.id}@4")
    paths = {f["path"] for f in result["files"]}
    assert {"lib/deep/d.txt", "lib/deep/more.txt"} <= paths
    whole = {f["path"] for f in compare(shared.layout, shared.id)["files"]}
    assert {"a.txt", "lib", "lib/l.txt", "lib/keep.txt", "lib/new dir/u.txt", "lib/deep/d.txt"} <= whole
    _old, _new, text = compare_text(shared.layout, f"{shared.id}@3", f"{shared.id}@4")
    assert b"a/lib/deep/d.txt" in text and b"+deep 1" in text


def test_land_records_the_submodule_commit_and_makes_it_reachable_in_the_users_submodule(session: Session):
    from cairnd.sessions.land import land

    result = land(session.layout, session.row, "feature")
    lib = session.params[-1]["submodules"][0]
    assert git_text(session.source, "rev-parse", "feature:lib") == lib["headSha"]
    assert {"path": "lib", "commit": lib["headSha"], "moved": "created"} in result["submodules"]
    store = session.source / ".git" / "modules" / "lib"
    assert git_text(store, "rev-parse", "refs/heads/feature") == lib["headSha"]
    assert git_text(store, "log", "-1", "--format=%s", "feature") == "agent's commit"


def test_deleting_a_session_removes_its_pins_from_the_submodule_stores(session: Session):
    from cairnd.git import inner

    store = session.source / ".git" / "modules" / "lib"
    assert git(store, "for-each-ref", f"refs/cairnd/{session.id}/")
    inner.forget_session(session.layout.inner_map(session.id), session.source, session.id)
    assert git(store, "for-each-ref", f"refs/cairnd/{session.id}/") == b""


def test_an_in_place_session_captures_its_submodules_and_a_fork_restores_them(tmp_path):
    lib = make_repo(tmp_path / "lib", {"l.txt": "lib\n"})
    source = make_repo(tmp_path / "super", {"a.txt": "a\n"})
    add_submodule(source, lib, "lib")
    commit_all(source, "lib")
    sub = source / "lib"  # the user's own checkout: its git directory is .git/modules/lib
    write(sub, "n.txt", "new\n")
    git(sub, "add", "n.txt")
    git(sub, "commit", "-qm", "agent")
    write(sub, "l.txt", "staged\n")
    git(sub, "add", "l.txt")
    write(sub, "l.txt", "changed\n")
    write(sub, "u.txt", "untracked\n")
    params = take_checkpoint("inplace1", source, 1, CAP, in_place=True)
    assert [(s["path"], s["headSha"]) for s in params["submodules"]] == [("lib", git_text(sub, "rev-parse", "HEAD"))]
    assert b"lib/n.txt" not in git(source, "ls-tree", "-r", "--name-only", params["worktreeSha"])
    layout = StateLayout(tmp_path / "state")
    layout.create()
    fork = layout.worktree_parent("fork1") / "super"
    gitworktree.add_worktree(source, fork, params["headSha"], params["worktreeSha"], params.get("indexTree"),
                             inner_map=layout.inner_map("fork1"), checkpoint=params)
    assert files(fork) == files(source)
    assert repo_state(fork / "lib") == repo_state(sub)
    # The daemon's checkpointer finds them the same way (no map beside an in-place checkout).
    write(sub, "later.txt", "later\n")
    later = Checkpointer(None, tmp_path / "indexes", layout).take("inplace1", source, 2, CAP)
    assert [s["path"] for s in later["submodules"]] == ["lib"]
    assert later["submodules"][0]["worktreeSha"] != params["submodules"][0]["worktreeSha"]
    assert b"lib/later.txt" not in git(source, "ls-tree", "-r", "--name-only", later["worktreeSha"])

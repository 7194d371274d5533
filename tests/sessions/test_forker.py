"""SPEC 5: the fork pipeline: exact files, the kept bytes as they were, lineage,
titles, and all or nothing."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cairnd.git import places

from cairnd.git import run as cgit
from cairnd.git import refs as gitrefs
from cairnd.git import snapshot as gitsnapshot
from cairnd.checkpoints.checkpoint import take_checkpoint
from cairnd.state.layout import StateLayout
from cairnd.errors import CairnError
from cairnd.sessions.creation import roll_back
from cairnd.sessions.forker import fork_session, fork_title
from cairnd.sessionlog.forkpoint import find_fork_point
from cairnd.sessionlog.entries import cairnd_entry, envelope_line, method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import Registry
from gitrepos import commit_all, git, git_text, index_state, list_worktrees, make_repo, tree_state, write
from logsamples import agent_chunk, checkpoint, prompt_request, prompt_response, turn_complete, user_chunk

CAP = 1 << 20


class Parent:
    """A session built by hand: a repo used in place, and a log whose checkpoints are
    real snapshots taken as the test changes files."""

    def __init__(self, tmp_path: Path, linked: bool = False) -> None:
        """`linked`: the session works in a linked worktree of the repository (as a session
        made by `new` does), on branch main; `repo` is that worktree."""
        self.layout = StateLayout(tmp_path / "state")
        self.layout.create()
        self.registry = Registry(self.layout.db)
        self.repo = make_repo(tmp_path / "repo", {"a.txt": "a0\n", "keep.txt": "k\n"}, gitignore="*.log\n")
        self.source = self.repo
        self.id = "parent1"
        if linked:
            cgit.output(self.source, "checkout", "-q", "--detach")
            self.repo = self.layout.worktree_parent(self.id) / "repo"
            cgit.output(self.source, "worktree", "add", "-q", str(self.repo), "main")
        self.registry.begin_session(id=self.id, title="Plan", repo=self.source, worktree=self.repo,
                                    in_place=not linked,
                                    agent="reference", parent_id=None, root_id=self.id, turns=0, request_id=None)
        self.registry.commit_session(self.id, {"session": self.id})
        # As the daemon does when it makes a session: where its git state is, recorded
        # before anything runs there (its checkpoints then go to the repository's vault).
        dirs = places.discover(self.repo)
        places.register(self.repo, dirs.git_dir, dirs.common_dir, places.root_of(self.layout.root))
        self.registry.set_git_dirs(self.id, dirs.git_dir, dirs.common_dir)
        self.log = self.layout.log_path(self.id)
        self.log.parent.mkdir(parents=True)
        self.turns = 0
        self.states: list[tuple[dict, list]] = []
        self.checkpoint_params: list[dict] = []
        self.append(cairnd_entry("_posthog/agent_checkpoint", self.checkpoint()))

    @property
    def row(self):
        return self.registry.get(self.id)

    def checkpoint(self) -> dict:
        params = take_checkpoint(self.id, self.repo, self.turns, CAP)
        self.states.append((tree_state(self.repo), index_state(self.repo)))
        self.checkpoint_params.append(params)
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

    def fork(self, k: int, **kwargs) -> dict:
        return fork_session(self.layout, self.registry, self.row, k, title=kwargs.get("title"),
                            request_id=kwargs.get("request_id"), max_file_bytes=CAP)


@pytest.fixture
def parent(tmp_path: Path) -> Parent:
    p = Parent(tmp_path)
    p.turn("edit a", lambda: write(p.repo, "a.txt", "a1\n"))
    p.turn("commit and add untracked", lambda: (commit_all(p.repo, "c1"), write(p.repo, "new dir/ü.bin", b"\0\1\2"),
                                                write(p.repo, "debug.log", "ignored\n")))
    p.turn("stage and delete", lambda: (write(p.repo, "a.txt", "a2\n"), git(p.repo, "add", "a.txt"),
                                        write(p.repo, "a.txt", "a3\n"), os.remove(p.repo / "keep.txt")))
    return p


def visible(state: dict) -> dict:
    return {path: value for path, value in state.items() if not path.endswith(b".log")}


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fork_holds_exactly_the_files_and_index_before_message_k(parent: Parent, k: int):
    result = parent.fork(k)
    worktree = Path(result["worktree"])
    files, index = parent.states[k]
    assert visible(tree_state(worktree)) == visible(files)
    assert index_state(worktree) == index
    assert result["state"] == "checkpoint" and result["user_message_index"] == k
    assert git_text(worktree, "rev-parse", "HEAD") == result["headSha"]


def test_fork_log_is_the_kept_bytes_then_meta_then_baseline(parent: Parent):
    result = parent.fork(1)
    source = parent.log.read_bytes()
    cut = [offset for offset, line in iter_lines(parent.log) if b"session/prompt" in line][1]
    forked = Path(result["log"]).read_bytes()
    assert forked[:cut] == source[:cut]
    tail = [parse_message(line) for line in forked[cut:].splitlines(keepends=True)]
    assert [method_of(m) for m in tail] == ["_posthog/fork_session_meta", "_posthog/agent_checkpoint"]
    meta = tail[0]["params"]
    assert meta == {"sessionId": result["session"], "parentSessionId": parent.id, "userMessageIndex": 1,
                    "headSha": result["headSha"], "worktreeSha": result["worktreeSha"], "sdkSessionId": None}
    baseline = tail[1]["params"]
    assert baseline["sessionId"] == result["session"] and baseline["turns"] == 1
    assert result["prefill"] == "commit and add untracked"


def test_lineage_and_titles(parent: Parent):
    first = parent.fork(1)
    second = parent.fork(2)
    assert (first["title"], second["title"]) == ("Plan (fork 1)", "Plan (fork 2)")
    row = parent.registry.fork_of(first["session"])
    assert (row.parent_id, row.parent_title, row.user_message_index) == (parent.id, "Plan", 1)
    grand = fork_session(parent.layout, parent.registry, parent.registry.get(first["session"]), 0,
                         title=None, request_id=None, max_file_bytes=CAP)
    assert grand["title"] == "Plan (fork 3)"
    parent.registry.mark_deleted(parent.id)
    assert parent.registry.fork_of(first["session"]).parent_title == "Plan"


@pytest.mark.parametrize("parent_title, titles, expected", [
    ("Plan", [], "Plan (fork 1)"),
    ("Plan", ["Plan", "Plan (fork 1)", "Plan (fork 4)"], "Plan (fork 5)"),
    ("Plan (fork 2)", ["Plan", "Plan (fork 2)"], "Plan (fork 3)"),
    ("Plan (fork 2) ", ["Plan (fork 2)"], "Plan (fork 3)"),
    # docker-agent's rows: unrelated siblings are ignored; a mid-title (fork N) is no sibling
    ("Plan", ["Other (fork 7)"], "Plan (fork 1)"),
    ("Plan", ["Plan (fork 1)", "Other (fork 7)", "Plan (fork 3) notes"], "Plan (fork 2)"),
    ("Plan", ["My Plan (fork 9)", "Plan  (fork 2)"], "Plan (fork 3)"),
])
def test_fork_title_rule(parent_title: str, titles: list[str], expected: str):
    assert fork_title(parent_title, titles) == expected


def test_errors_leave_nothing(parent: Parent):
    for k, code in [(3, "fork_out_of_range"), (-1, "fork_out_of_range")]:
        with pytest.raises(CairnError) as info:
            parent.fork(k)
        assert info.value.code == code
    assert_nothing_but_parent(parent)


def assert_nothing_but_parent(parent: Parent) -> None:
    assert [r.id for r in parent.registry.sessions(("creating", "ready", "deleted"))] == [parent.id]
    assert parent.registry.forks() == []
    assert [p.name for p in parent.layout.sessions.iterdir()] == [parent.id]
    assert list(parent.layout.worktrees.iterdir()) == []
    assert list_worktrees(parent.repo) == [parent.repo]
    refs = gitrefs.list_refs(parent.repo, "refs/cairnd/")
    assert all(name.startswith(f"refs/cairnd/{parent.id}/") for name in refs)


def resolve(target: str):
    module_name, _, attribute = target.rpartition(".")
    try:
        return importlib.import_module(module_name), attribute
    except ModuleNotFoundError:
        module, cls = module_name.rsplit(".", 1)
        return getattr(importlib.import_module(module), cls), attribute


STEPS = [
    ("cairnd.git.worktree.add_worktree", "worktree"),
    ("cairnd.git.refs.pin", "baseline checkpoint"),
    ("cairnd.sessions.forker.write_initial_log", "log"),
    ("cairnd.state.registry.Registry.commit_session", "commit"),
]


@pytest.mark.parametrize("target, step", STEPS)
def test_a_failure_at_each_step_leaves_no_trace(parent: Parent, monkeypatch, target: str, step: str):
    owner, attribute = resolve(target)
    real = getattr(owner, attribute)

    def after_the_real_step(*args, **kwargs):
        if step != "commit":  # the commit is the last step: it fails before it commits, or not at all
            real(*args, **kwargs)  # the step's work is done: the failure must undo it
        raise OSError(f"injected failure after {step}")

    monkeypatch.setattr(owner, attribute, after_the_real_step)
    with pytest.raises(OSError, match="injected"):
        parent.fork(1)
    monkeypatch.undo()
    assert_nothing_but_parent(parent)
    assert parent.fork(1)["state"] == "checkpoint"  # and the next fork works


@pytest.mark.parametrize("step", [s for _, s in STEPS])
def test_a_crash_at_each_step_is_rolled_back_on_restart(parent: Parent, step: str):
    """kill -9 between two steps: the process dies with the `creating` row in place;
    recovery (what the daemon runs at start) removes everything of it."""
    target = dict((s, t) for t, s in STEPS)[step]
    script = textwrap.dedent(f"""
        import importlib, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from cairnd.state.layout import StateLayout
        from cairnd.state.registry import Registry
        from cairnd.sessions.forker import fork_session
        module_name, _, attribute = {target!r}.rpartition(".")
        try:
            owner = importlib.import_module(module_name)
        except ModuleNotFoundError:
            module, cls = module_name.rsplit(".", 1)
            owner = getattr(importlib.import_module(module), cls)
        real = getattr(owner, attribute)
        def crash(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(9)
        setattr(owner, attribute, crash)
        layout = StateLayout(Path({str(parent.layout.root)!r}))
        registry = Registry(layout.db)
        fork_session(layout, registry, registry.get({parent.id!r}), 1, title=None, request_id="r1",
                     max_file_bytes={CAP})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    leftovers = parent.registry.sessions(("creating",))
    assert len(leftovers) == (0 if step == "commit" else 1)
    for row in leftovers:
        roll_back(parent.layout, parent.registry, row)
    if step == "commit":
        assert len(parent.registry.forks()) == 1  # it had committed: a whole fork
    else:
        assert_nothing_but_parent(parent)


def test_the_baseline_is_the_cuts_checkpoint_and_what_a_snapshot_of_the_fork_says(parent: Parent) -> None:
    """A fork's baseline is built from the checkpoint at the cut (no snapshot of the new
    worktree): the same state, under the fork's own ref, and exactly what a full
    snapshot of the fork's worktree records."""
    result = parent.fork(1)
    fork_log = Path(result["log"])
    *_, meta, baseline = [parse_message(line) for _offset, line in iter_lines(fork_log)]
    params = baseline["params"]
    cut = find_fork_point(iter_lines(parent.layout.log_path(parent.id)), 1, parent.id).checkpoint
    assert params["worktreeSha"] == cut["worktreeSha"] and params["indexTree"] == cut["indexTree"]
    assert params["ref"] == f"refs/cairnd/{result['session']}/{params['turns']}"
    assert gitrefs.list_refs(parent.repo, f"refs/cairnd/{result['session']}/") == {params["ref"]: params["worktreeSha"]}
    snap = gitsnapshot.snapshot(Path(result["worktree"]), CAP)
    assert (snap.head_sha, snap.branch, snap.index_tree, snap.dirty, list(snap.skipped)) == \
        (params["headSha"], params["branch"], params["indexTree"], params["dirty"], params["skipped"])
    assert snap.worktree_tree == cgit.tree_of(parent.repo, params["worktreeSha"])


def test_posthog_shaped_log_forks(tmp_path: Path):
    """PostHog Code's logs: unmarked echo chunks, `__posthog/` spellings, checkpoints
    with only headSha (restore HEAD), and no turn_complete."""
    p = Parent(tmp_path)
    first_head = git_text(p.repo, "rev-parse", "HEAD")
    write(p.repo, "a.txt", "committed later\n")
    commit_all(p.repo, "later")
    p.append(prompt_request(1, [{"type": "text", "text": "one "}, {"type": "text", "text": "block"}]),
             user_chunk("one block"), agent_chunk("sure"), prompt_response(1),
             checkpoint(head_sha=first_head, quirk=True, only_head=True),
             prompt_request(2, "two"), user_chunk("two"))
    result = p.fork(1)
    assert result["state"] == "checkpoint" and result["headSha"] == first_head
    assert (Path(result["worktree"]) / "a.txt").read_text() == "a0\n"
    assert result["prefill"] == "two"


def test_log_without_checkpoint_falls_back_to_current_head(tmp_path: Path):
    p = Parent(tmp_path)
    p.log.write_bytes(prompt_request(1, "hello") + prompt_response(1) + prompt_request(2, "again"))
    result = p.fork(1)
    assert result["state"] == "current_head"
    assert result["headSha"] == git_text(p.repo, "rev-parse", "HEAD") and result["worktreeSha"] is None


def test_a_checkpoints_staged_index_outlives_gc_and_forks_exactly(parent: Parent) -> None:
    """Staged, unstaged and untracked changes at once: the checkpoint's index tree is
    reachable from neither HEAD nor worktreeSha, so its own ref keeps it (and the staged
    blob) alive through `git gc --prune=now`; a fork at it restores the index exactly."""
    staged = parent.checkpoint_params[3]
    assert staged["indexTree"] not in (cgit.tree_of(parent.repo, staged["headSha"]),
                                       cgit.tree_of(parent.repo, staged["worktreeSha"]))
    # The next turn stages everything, so the live index no longer holds the staged blob.
    parent.turn("stage the rest", lambda: (git(parent.repo, "add", "-A"), write(parent.repo, "b.txt", "b\n")))
    subprocess.run(["git", "gc", "--prune=now", "-q"], cwd=parent.repo, check=True)
    result = parent.fork(3)
    files, index = parent.states[3]
    assert index_state(Path(result["worktree"])) == index
    assert visible(tree_state(Path(result["worktree"]))) == visible(files)
    assert gitrefs.list_refs(parent.repo, f"refs/cairnd/{result['session']}/") == {
        f"refs/cairnd/{result['session']}/3": staged["worktreeSha"],
        f"refs/cairnd/{result['session']}/3-index": staged["indexTree"]}

"""Which objects a repository holds, asked of one long-lived `git cat-file
--batch-check` per repository: it answers exactly as a new git process would, even for
objects and packs written after it started, for a repository made anew at the same
path, and after its process died. Real repositories, real git processes."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairnd.git import objects as gitobjects
from cairnd.errors import CairnError
from gitrepos import commit_all, git, git_text, make_repo, write


@pytest.fixture(autouse=True)
def no_kept_processes() -> Iterator[None]:
    gitobjects.close_all()
    yield
    gitobjects.close_all()


def kept_pid(repo: Path) -> int:
    return gitobjects._kept[repo].proc.pid


def test_each_spec_gets_its_id_and_type_or_none_where_it_is_missing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    head = git_text(repo, "rev-parse", "HEAD")
    tree = git_text(repo, "rev-parse", "HEAD^{tree}")
    absent = "0123456789abcdef0123456789abcdef01234567"
    assert gitobjects.object_types(repo, [head, f"{head}^{{tree}}", f"{tree}^{{commit}}", absent]) == [
        (head, "commit"), (tree, "tree"), None, None]
    assert gitobjects.object_types(repo, []) == []


def test_one_process_answers_every_question_about_a_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git_text(repo, "rev-parse", "HEAD")
    gitobjects.object_types(repo, [head])
    pid = kept_pid(repo)
    for _ in range(5):
        assert gitobjects.object_types(repo, [head]) == [(head, "commit")]
    assert kept_pid(repo) == pid


def test_objects_written_after_the_process_started_are_found_loose_and_packed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git_text(repo, "rev-parse", "HEAD")
    gitobjects.object_types(repo, [head])
    pid = kept_pid(repo)
    blob = git(repo, "hash-object", "-w", "--stdin", input=b"written later\n").decode().strip()
    # Asked of the kept process alone (a "missing" would be asked again of a new one).
    assert gitobjects._ask_kept(repo, [blob]) == [(blob, "blob")]
    write(repo, "b.txt", "b\n")
    commit_all(repo, "second")
    second = git_text(repo, "rev-parse", "HEAD")
    git(repo, "repack", "-a", "-d", "-q")  # every object into one new pack,
    git(repo, "prune-packed")  # and no loose copy left
    assert not (repo / ".git" / "objects" / second[:2] / second[2:]).exists()
    assert gitobjects._ask_kept(repo, [second]) == [(second, "commit")]
    assert kept_pid(repo) == pid


def test_a_repository_made_anew_at_the_same_path_is_asked_afresh(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "first\n"})
    first = git_text(repo, "rev-parse", "HEAD")
    assert gitobjects.object_types(repo, [first]) == [(first, "commit")]
    shutil.rmtree(repo)
    make_repo(repo, {"a.txt": "second\n"})
    second = git_text(repo, "rev-parse", "HEAD")
    assert gitobjects.object_types(repo, [first, second]) == [None, (second, "commit")]


def test_a_process_that_died_is_replaced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git_text(repo, "rev-parse", "HEAD")
    gitobjects.object_types(repo, [head])
    os.kill(kept_pid(repo), signal.SIGKILL)
    gitobjects._kept[repo].proc.wait()
    assert gitobjects.object_types(repo, [head]) == [(head, "commit")]


def test_many_questions_at_once_do_not_fill_the_pipes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git_text(repo, "rev-parse", "HEAD")
    answers = gitobjects.object_types(repo, [head] * 5000)
    assert answers == [(head, "commit")] * 5000


def test_a_directory_that_is_not_a_repository_is_named(tmp_path: Path) -> None:
    with pytest.raises(CairnError) as failed:
        gitobjects.object_types(tmp_path, ["HEAD"])
    assert failed.value.code == "not_a_git_repo"


def test_idle_processes_and_those_beyond_the_limit_are_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repos = [make_repo(tmp_path / f"repo{i}") for i in range(gitobjects.MAX_PROCESSES + 2)]
    for repo in repos:
        gitobjects.object_types(repo, ["HEAD"])
    assert len(gitobjects._kept) == gitobjects.MAX_PROCESSES
    assert repos[0] not in gitobjects._kept and repos[-1] in gitobjects._kept
    monkeypatch.setattr(gitobjects, "IDLE_SECONDS", 0.0)
    gitobjects.object_types(repos[-1], ["HEAD"])
    assert list(gitobjects._kept) == [repos[-1]]

"""What cairnd answers an agent (SPEC 9): the permission policy, fs confined to the
worktree, the read window. The same rules at work on a real agent are in test_runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairnd.agent.acpclient import PathRefused, choose_permission_option, confine, select_lines


def test_permission_policy_picks_its_kind_then_the_closest() -> None:
    every = [("a1", "allow_once"), ("a2", "allow_always"), ("r1", "reject_once"), ("r2", "reject_always")]
    assert choose_permission_option(every, "allow_once") == "a1"
    assert choose_permission_option(every, "reject_once") == "r1"
    assert choose_permission_option([("a2", "allow_always"), ("r2", "reject_always")], "allow_once") == "a2"
    assert choose_permission_option([("a2", "allow_always"), ("r2", "reject_always")], "reject_once") == "r2"
    assert choose_permission_option([("r1", "reject_once")], "allow_once") == "r1"
    assert choose_permission_option([("a1", "allow_once")], "reject_once") is None  # never escalates
    assert choose_permission_option([], "allow_once") is None


def test_confine_keeps_paths_inside_the_worktree(tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    (worktree / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", worktree / "out-link")
    os.symlink(worktree / "sub", worktree / "in-link")
    real = worktree.resolve()
    assert confine(worktree, str(worktree / "a.txt")) == real / "a.txt"
    assert confine(worktree, "sub/../b.txt") == real / "b.txt"
    assert confine(worktree, str(worktree / "in-link" / "c.txt")) == real / "sub" / "c.txt"
    for bad in ("../x", str(worktree / ".." / "x"), str(tmp_path / "outside" / "x"), "/etc/passwd",
                str(worktree / "out-link" / "x"), str(worktree / "out-link"), str(worktree), "a\0b"):
        with pytest.raises(PathRefused):
            confine(worktree, bad)


def test_read_window_is_one_based_lines() -> None:
    text = "one\ntwo\nthree\nfour"
    assert select_lines(text, None, None) == text
    assert select_lines(text, 2, None) == "two\nthree\nfour"
    assert select_lines(text, 2, 2) == "two\nthree\n"
    assert select_lines(text, None, 1) == "one\n"
    assert select_lines(text, 9, 3) == ""

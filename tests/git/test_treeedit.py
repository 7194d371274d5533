"""A checkpoint's tree written by cairnd (cairnd.treeedit): the same objects git writes,
and a refusal (Unsupported) wherever git would store something else.

The oracle is git itself: `git mktree` for tree objects, `gitsnapshot.snapshot` (a
full scan) for whole trees.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import treeedit
from gitrepos import git as run_git, write

NO_CAP = 1 << 40


pytestmark = pytest.mark.repo(files={"a.txt": "a\n", "src/app.py": "print(1)\n", "src/lib/x.py": "x\n"},
                              gitignore="*.log\nbuild/\n")


def edit(repo: Path, reader: treeedit.TreeReader, changed: set[bytes], cap: int = NO_CAP) -> tuple[str, list[bytes]]:
    before = gitsnapshot.snapshot(repo, NO_CAP)
    tree, big = treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, changed, cap)
    return tree or before.worktree_tree, big


def test_tree_objects_are_the_ones_git_writes(repo: Path) -> None:
    tree: treeedit.Tree = {
        b"b": (b"100644", bytes(20)), b"a-b": (b"100755", bytes([1]) * 20),
        b"a": (treeedit.TREE, bytes([2]) * 20), b"a.c": (b"120000", bytes([3]) * 20),
    }
    listing = b"".join(
        mode + b" " + (b"tree" if mode == treeedit.TREE else b"blob") + b" " + sha.hex().encode() + b"\t" + name + b"\0"
        for name, (mode, sha) in tree.items())
    by_git = run_git(repo, "mktree", "-z", "--missing", input=listing).strip().decode()
    dirs = places.discover(repo)
    assert dirs is not None
    assert gitfiles.write_object(dirs, b"tree", treeedit.tree_body(tree)) == by_git
    assert treeedit.parse_tree(treeedit.tree_body(tree)) == tree


def test_changes_give_the_full_scans_tree(repo: Path) -> None:
    before = gitsnapshot.snapshot(repo, NO_CAP)
    reader = treeedit.TreeReader()
    write(repo, "a.txt", "changed\n", executable=True)
    os.unlink(repo / "src" / "lib" / "x.py")  # the directory empties: no tree for it
    write(repo, "new/deep/n.txt", "new\n")
    write(repo, "debug.log", "ignored\n")
    write(repo, "build/out.o", "ignored\n")
    os.symlink("a.txt", repo / "link")
    changed = {b"a.txt", b"src/lib/x.py", b"new", b"debug.log", b"build", b"link"}
    tree, big = treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, changed, NO_CAP)
    assert big == [] and tree == gitsnapshot.snapshot(repo, NO_CAP).worktree_tree


def test_files_over_the_cap_keep_their_last_entry(repo: Path) -> None:
    reader = treeedit.TreeReader()
    before = gitsnapshot.snapshot(repo, NO_CAP)
    write(repo, "a.txt", "x" * 100)
    write(repo, "huge.bin", "y" * 100)
    tree, big = treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree,
                                   {b"a.txt", b"huge.bin"}, 10)
    assert sorted(big) == [b"a.txt", b"huge.bin"] and tree is None  # nothing else changed


def test_trees_read_once_are_kept_by_id(repo: Path) -> None:
    reader = treeedit.TreeReader()
    before = gitsnapshot.snapshot(repo, NO_CAP)
    found = reader.load(repo, bytes.fromhex(before.worktree_tree), {b"src/lib", b"nowhere/at/all"})
    assert set(found) == {b"", b"src", b"src/lib", b"nowhere", b"nowhere/at", b"nowhere/at/all"}
    assert found[b"nowhere/at/all"] is None and b"x.py" in (found[b"src/lib"] or {})
    assert reader.start(repo, bytes.fromhex(before.worktree_tree), {b"src/lib"}).proc is None  # from memory


def test_the_cache_forgets_the_least_recently_used(repo: Path) -> None:
    reader = treeedit.TreeReader(max_entries=3)
    reader.put(b"1" * 20, {b"a": (b"100644", bytes(20)), b"b": (b"100644", bytes(20))})
    reader.put(b"2" * 20, {b"c": (b"100644", bytes(20))})
    assert reader.get(b"1" * 20) is not None
    reader.put(b"3" * 20, {b"d": (b"100644", bytes(20))})
    assert reader.get(b"2" * 20) is None and reader.get(b"1" * 20) is not None


@pytest.mark.parametrize("setting", [("core.autocrlf", "true"), ("core.fileMode", "false"),
                                     ("filter.lfs.clean", "git-lfs clean -- %f"), ("core.sharedRepository", "group")])
def test_settings_that_change_what_git_stores_are_not_plain(repo: Path, setting: tuple[str, str]) -> None:
    dirs = places.discover(repo)
    assert dirs is not None and treeedit.plain_content(dirs, [dirs.index])
    run_git(repo, "config", *setting)
    assert not treeedit.plain_content(dirs, [dirs.index])


def test_an_attributes_file_anywhere_is_not_plain(repo: Path) -> None:
    dirs = places.discover(repo)
    assert dirs is not None
    write(repo, "src/lib/.gitattributes", "*.py text\n")
    run_git(repo, "add", "src/lib/.gitattributes")
    assert not treeedit.plain_content(dirs, [dirs.index])


@pytest.mark.parametrize("make", ["fifo", "nested", "submodule-like"])
def test_what_is_not_plain_is_refused(repo: Path, make: str) -> None:
    reader = treeedit.TreeReader()
    before = gitsnapshot.snapshot(repo, NO_CAP)
    if make == "fifo":
        os.mkfifo(repo / "pipe")
        changed = {b"pipe"}
    elif make == "nested":
        (repo / "other").mkdir()
        subprocess.run(["git", "init", "-q", str(repo / "other")], check=True)
        changed = {b"other"}
    else:
        changed = {b"inside/nested/f"}
        before = gitsnapshot.snapshot(repo, NO_CAP)
        with pytest.raises(treeedit.Unsupported):
            treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, changed, NO_CAP,
                               skipped=[b"inside/nested"])
        return
    with pytest.raises(treeedit.Unsupported):
        treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, changed, NO_CAP)


def test_many_new_objects_go_into_one_pack_git_reads(repo: Path) -> None:
    reader = treeedit.TreeReader()
    before = gitsnapshot.snapshot(repo, NO_CAP)
    packs = repo / ".git" / "objects" / "pack"
    had = set(packs.glob("*.idx")) if packs.exists() else set()
    loose = set((repo / ".git" / "objects").glob("??/*"))
    for i in range(150):
        write(repo, f"many/d{i % 30}/f{i}.txt", f"file {i}\n" * (i + 1))
    write(repo, "big.bin", os.urandom(300_000))  # a size needing several header bytes
    tree, _big = treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, {b"many", b"big.bin"},
                                    NO_CAP)
    [made] = set(packs.glob("*.idx")) - had
    assert set((repo / ".git" / "objects").glob("??/*")) == loose  # nothing loose: all in the pack
    assert tree == gitsnapshot.snapshot(repo, NO_CAP).worktree_tree
    listing = run_git(repo, "verify-pack", "-v", str(made)).decode()
    assert "blob" in listing and "tree" in listing
    run_git(repo, "fsck", "--strict", "--no-dangling")


def test_a_small_tree_is_read_whole_once(repo: Path) -> None:
    reader = treeedit.TreeReader()
    root = bytes.fromhex(gitsnapshot.snapshot(repo, NO_CAP).worktree_tree)
    whole = reader.start(repo, root, {b"src"}, whole=True).finish()
    assert whole == treeedit.TreeReader().load(repo, root, {b"src"})  # the same trees as read one by one
    later = reader.start(repo, root, {b"src/lib"})
    assert later.proc is None and b"x.py" in (later.finish()[b"src/lib"] or {})  # already in memory


def test_a_file_turned_directory_sorts_where_git_puts_it(repo: Path) -> None:
    for name in ("x", "x-y", "x.z", "x0"):
        write(repo, name, f"{name}\n")
    reader = treeedit.TreeReader()
    before = gitsnapshot.snapshot(repo, NO_CAP)
    os.unlink(repo / "x")
    write(repo, "x/inner.txt", "now a directory\n")  # "x/" sorts after "x-y" and "x.z", before "x0"
    tree, _ = treeedit.edit_tree(repo, reader, before.worktree_tree, before.index_tree, {b"x"}, NO_CAP)
    assert tree == gitsnapshot.snapshot(repo, NO_CAP).worktree_tree
    middle = gitsnapshot.snapshot(repo, NO_CAP)
    (repo / "x" / "inner.txt").unlink()
    (repo / "x").rmdir()
    write(repo, "x", "a file again\n")
    tree, _ = treeedit.edit_tree(repo, reader, middle.worktree_tree, middle.index_tree, {b"x"}, NO_CAP)
    assert tree == gitsnapshot.snapshot(repo, NO_CAP).worktree_tree

"""Refs under refs/cairnd/ that keep cairnd's objects alive against `git gc` (pins),
written in ref transactions, and the repository upkeep `cairnd.storage` runs on them
(packing refs, incremental repacks, object counts). Git runs through `cairnd.git`.

They live in the repository's vault (`cairnd.git.vault`), where no agent writes, for
any path of the repository (the user's checkout or a session's worktree). A repository
this process knows no vault of keeps them itself, as cairnd always did; refs an older
cairnd left in a repository that has a vault now are still listed and deleted there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.git import objects as gitobjects
from cairnd.errors import CairnError


def home(repo: Path) -> tuple[Path, dict[str, str] | None]:
    """Where `repo`'s checkpoint refs are: (a directory to run git in, the environment
    naming its git directory), the vault's when there is one."""
    vault = places.vault_for(repo)
    if vault is not None:
        return vault, {"GIT_DIR": str(vault)}
    return Path(repo), None


def home_dir(repo: Path) -> Path | None:
    """The git directory holding `repo`'s checkpoint refs (its vault, else its common
    git directory), or None when `repo` is not a repository."""
    vault = places.vault_for(repo)
    if vault is not None:
        return vault
    dirs = places.dirs_or_none(Path(repo))
    return dirs.common_dir if dirs is not None else None


def _legacy(repo: Path) -> list[tuple[Path, dict[str, str]]]:
    """Where, besides its vault, `repo`'s checkpoint refs may be: the user's repository,
    when it has a vault now and still keeps refs an older cairnd wrote (read from its
    files). [] when nowhere."""
    if places.vault_for(repo) is None:
        return []
    try:
        common = places.source_common(Path(repo))
    except Exception:  # noqa: BLE001  gone, not a repository
        return []
    found = (common / "refs" / "cairnd").is_dir()
    if not found:
        try:
            with open(common / "packed-refs", "rb") as f:
                found = any(b" refs/cairnd/" in line for line in f)
        except OSError:
            pass
    return [(common, {"GIT_DIR": str(common)})] if found else []


def _check_ref_name(name: str) -> None:
    if not name.startswith(git.REF_NAMESPACE) or name.endswith("/") or ".." in name:
        raise CairnError("bad_ref", f"ref {name!r} is not under {git.REF_NAMESPACE}")


def pin(repo: Path, ref_name: str, sha: str, *, written: bool = False) -> None:
    """Point `ref_name` (under refs/cairnd/) at `sha`, keeping it alive against gc.

    `repo` may be any worktree of the repository: refs are shared among them. With
    `written` (the caller has just written `sha`), the ref is written as git's files
    storage does, without a git process where the repository allows it; refs pile up
    loose that way until `cairnd.storage` packs them."""
    _check_ref_name(ref_name)
    if not git.is_object_id(sha) or not sha.strip("0"):
        # The all-zero id would make update-ref delete the ref instead.
        raise CairnError("commit_missing", f"{sha!r} is not an object id")
    where, env = home(repo)
    dirs = (gitfiles.GitDirs(where, where) if env is not None else places.dirs_or_none(repo)) if written else None
    if dirs is not None and gitfiles.write_loose_ref(dirs, ref_name, sha):
        return
    proc = git.run(where, ["update-ref", ref_name, sha], env=env)
    if proc.returncode != 0:
        if b"nonexistent object" in proc.stderr:
            raise CairnError("commit_missing", f"{sha} is not in {repo}")
        raise git.failure(repo, ["update-ref"], proc)


def pin_together(repo: Path, refs: Mapping[str, str]) -> None:
    """Point each ref (under refs/cairnd/) at its object in one ref transaction: all or
    none. Raises commit_missing when an object is not in the repository."""
    for name, sha in refs.items():
        _check_ref_name(name)
        if not git.is_object_id(sha) or not sha.strip("0"):
            raise CairnError("commit_missing", f"{sha!r} is not an object id")
    where, env = home(repo)
    proc = git.run(where, ["update-ref", "--stdin", "-z"], env=env, input=b"".join(
        b"update " + name.encode("utf-8", "surrogateescape") + b"\0" + sha.encode() + b"\0\0"
        for name, sha in refs.items()))
    if proc.returncode != 0:
        if b"nonexistent object" in proc.stderr:
            raise CairnError("commit_missing", f"one of {', '.join(refs.values())} is not in {repo}")
        raise git.failure(repo, ["update-ref", "--stdin"], proc)


def pin_many(repo: Path, refs: Mapping[str, str]) -> dict[str, str]:
    """Pin many objects at once: `ref name -> object id`, each under refs/cairnd/, in one
    ref transaction. Objects no longer in the repository are left out (collected long
    ago); returns what was pinned."""
    for name, sha in refs.items():
        _check_ref_name(name)
        if not git.is_object_id(sha) or not sha.strip("0"):
            raise CairnError("commit_missing", f"{sha!r} is not an object id")
    present = gitobjects.object_types(repo, list(refs.values())) if refs else []
    pinned = {name: sha for (name, sha), found in zip(refs.items(), present) if found is not None}
    if pinned:
        where, env = home(repo)
        git.output(where, "update-ref", "--stdin", "-z", env=env, input=b"".join(
            b"update " + name.encode("utf-8", "surrogateescape") + b"\0" + sha.encode() + b"\0\0"
            for name, sha in pinned.items()))
    return pinned


def list_refs(repo: Path, prefix: str) -> dict[str, str]:
    """Refs under `prefix` (a refs/cairnd/ path), name -> object id."""
    _check_ref_name(prefix.rstrip("/") + "/x")
    refs: dict[str, str] = {}
    where, env = home(repo)
    for cwd, named in [*_legacy(repo), (where, env)]:
        out = git.output(cwd, "for-each-ref", "--format=%(objectname) %(refname)", prefix.rstrip("/"), env=named)
        for line in out.decode("utf-8", "surrogateescape").splitlines():
            sha, _, name = line.partition(" ")
            refs[name] = sha
    return refs


def delete_refs(repo: Path, prefix: str) -> list[str]:
    """Delete every ref under `prefix` (a refs/cairnd/ path); return their names."""
    names = sorted(list_refs(repo, prefix))
    _delete(repo, names)
    return names


def _delete(repo: Path, names: Sequence[str]) -> None:
    if not names:
        return
    where, env = home(repo)
    for cwd, named in [(where, env), *_legacy(repo)]:
        # A ref that is not there is fine to delete ("delete" with no old value).
        git.output(cwd, "update-ref", "--stdin", "-z", env=named,
                   input=b"".join(b"delete " + n.encode("utf-8", "surrogateescape") + b"\0\0" for n in names))


def delete_ref_names(repo: Path, names: Sequence[str]) -> None:
    """Delete the named refs (each under refs/cairnd/) in one transaction."""
    for name in names:
        _check_ref_name(name)
    _delete(repo, names)


def pack_refs(repo: Path) -> None:
    """Pack every loose ref of the repository (as `git gc` does), checkpoint refs with them."""
    where, env = home(repo)
    git.output(where, "pack-refs", "--all", "--prune", env=env)


def repack_incremental(repo: Path) -> None:
    """Loose objects into a pack, and small packs rolled up into bigger ones (a geometric
    progression, so the user's big pack is rewritten only once the others add up to it)."""
    where, env = home(repo)
    if env is not None:  # the vault's own objects only: what it borrows stays where it is
        git.output(where, "-c", "pack.writeBitmaps=false", "repack", "-d", "-q", "-l", "--geometric=2",
                   "--no-write-bitmap-index", env=env)
        return
    with git.worktree_records_lock(repo):  # repack reads every worktree's record
        git.output(repo, "-c", "pack.writeBitmaps=false", "repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index")


def object_sizes(repo: Path) -> dict[str, int]:
    """`git count-objects -v` as numbers: loose objects and their bytes, packs and theirs."""
    fields = {}
    where, env = home(repo)
    for line in git.output(where, "count-objects", "-v", env=env).decode().splitlines():
        key, _, value = line.partition(": ")
        if value.strip().isdigit():
            fields[key] = int(value)
    return {"loose": fields.get("count", 0), "loose_bytes": fields.get("size", 0) * 1024,
            "packs": fields.get("packs", 0), "pack_bytes": fields.get("size-pack", 0) * 1024}

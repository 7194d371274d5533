"""Test helpers: build real git repositories in tmp dirs and read back their exact state.

Independent of cairnd.git on purpose, so tests do not check the code with itself.
Every git call gets a clean environment and a fixed identity.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
}

# (mode as git writes it, file bytes or symlink target)
FileState = tuple[str, bytes]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    clean.update(IDENTITY, LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1",
                 GIT_CONFIG_GLOBAL=os.devnull)
    return clean


def git(cwd: Path, *args: str | bytes, input: bytes | None = None) -> bytes:
    """Run git in cwd; its stdout, or an AssertionError carrying its stderr."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=env(), input=input, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def git_text(cwd: Path, *args: str) -> str:
    return git(cwd, *args).decode().strip()


def make_repo(path: Path, files: dict[str, bytes | str] | None = None, *, branch: str = "main",
              gitignore: str | None = None) -> Path:
    """A new repository at `path` with one commit holding `files` (and .gitignore if given)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "commit.gpgsign", "false")
    contents: dict[str, bytes | str] = dict(files or {"README": "hello\n"})
    if gitignore is not None:
        contents[".gitignore"] = gitignore
    for rel, content in contents.items():
        write(path, rel, content)
    commit_all(path, "initial")
    return path


def make_bare_repo(path: Path) -> Path:
    git(path.parent, "init", "-q", "--bare", str(path))
    return path


def write(worktree: Path, rel: str | bytes, content: bytes | str, *, executable: bool = False) -> Path:
    """Write a file (creating parent directories); the executable bit as asked."""
    target = Path(os.fsdecode(os.path.join(os.fsencode(worktree), os.fsencode(rel))))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    target.chmod(0o755 if executable else 0o644)
    return target


def symlink(worktree: Path, rel: str, target: str) -> Path:
    link = worktree / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
    return link


def stage(worktree: Path, *rels: str) -> None:
    """`git add -A` of exactly these paths (literal, so any name works)."""
    git(worktree, "--literal-pathspecs", "add", "-A", "--", *rels)


def commit_all(worktree: Path, message: str = "commit") -> str:
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "--allow-empty", "--no-verify", "-m", message)
    return head(worktree)


def head(worktree: Path) -> str:
    return git_text(worktree, "rev-parse", "HEAD")


def branch(worktree: Path) -> str | None:
    proc = subprocess.run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd=worktree, env=env(),
                          capture_output=True)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def tree_of(repo: Path, rev: str) -> str:
    return git_text(repo, "rev-parse", f"{rev}^{{tree}}")


def head_and_branch(worktree: Path) -> tuple[str, str | None]:
    """HEAD's commit and its branch (None when detached), in one git call."""
    sha, name = git_text(worktree, "rev-parse", "HEAD", "--symbolic-full-name", "HEAD", "--").split("\n")[:2]
    return sha, name.removeprefix("refs/heads/") if name.startswith("refs/heads/") else None


def git_dir(worktree: Path) -> Path:
    if (worktree / ".git").is_dir():
        return worktree / ".git"
    return Path(git_text(worktree, "rev-parse", "--absolute-git-dir"))


def _walk(root: bytes, rel: bytes = b"") -> list[bytes]:
    found = []
    with os.scandir(os.path.join(root, rel) if rel else root) as entries:
        for entry in entries:
            path = os.path.join(rel, entry.name) if rel else entry.name
            if path == b".git":
                continue
            if entry.is_dir(follow_symlinks=False):
                found.extend(_walk(root, path))
            else:
                found.append(path)
    return found


def all_files(worktree: Path) -> list[bytes]:
    """Every file and symlink under the worktree, ignored or not, outside .git."""
    return _walk(os.fsencode(worktree))


def detached_head(worktree: Path) -> str | None:
    """The commit a linked worktree's HEAD is detached at, read from its HEAD file
    (None when HEAD is a branch)."""
    text = (worktree / ".git").read_text().strip()
    head_file = Path(text.removeprefix("gitdir: ")) / "HEAD"
    content = head_file.read_text().strip()
    return None if content.startswith("ref: ") else content


def ignored(worktree: Path, paths: list[bytes]) -> set[bytes]:
    """Which of these paths git ignores (tracked files never are)."""
    if not paths:
        return set()
    proc = subprocess.run(["git", "check-ignore", "-z", "--stdin"], cwd=worktree, env=env(),
                          input=b"".join(p + b"\0" for p in paths), capture_output=True)
    if proc.returncode not in (0, 1):
        raise AssertionError(proc.stderr.decode(errors="replace"))
    return {p for p in proc.stdout.split(b"\0") if p}


def tree_state(worktree: Path) -> dict[bytes, FileState]:
    """Every non-ignored file under the worktree: path -> (mode, bytes or symlink target).

    Read from the file system itself, not from git's view of it."""
    root = os.fsencode(worktree)
    paths = _walk(root)
    skip = ignored(worktree, paths)
    state: dict[bytes, FileState] = {}
    for rel in paths:
        if rel in skip:
            continue
        full = os.path.join(root, rel)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            state[rel] = ("120000", os.readlink(full))
        else:
            mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
            with open(full, "rb") as f:
                state[rel] = (mode, f.read())
    return state


def index_state(worktree: Path) -> list[tuple[bytes, ...]]:
    """`git ls-files -s`: (mode, object id, stage, path) for every index entry."""
    out = git(worktree, "ls-files", "-s", "-z")
    entries = []
    for record in out.split(b"\0"):
        if record:
            info, _, path = record.partition(b"\t")
            entries.append((*info.split(b" "), path))
    return entries


def index_fingerprint(worktree: Path) -> tuple[bytes, int, bool]:
    """The index file's bytes and mtime, and whether an index.lock exists: proof it was not touched."""
    directory = git_dir(worktree)
    index = directory / "index"
    return index.read_bytes(), index.stat().st_mtime_ns, (directory / "index.lock").exists()


def status(worktree: Path) -> bytes:
    """`git status --porcelain -z`, read-only (it does not refresh the index file)."""
    return git(worktree, "--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all")


def make_files(root: Path, count: int, *, per_dir: int = 100, size: int = 64) -> None:
    """`count` small files spread over directories of `per_dir`, for benchmarks and load tests."""
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes((f"{i}\n" * (size // 4 + 1)).encode()[:size])


def commit_exists(repo: Path, sha: str) -> bool:
    """Whether `sha` (a full object id) is a commit present in `repo`."""
    if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        return False
    proc = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, env=env(), capture_output=True)
    return proc.returncode == 0


def list_worktrees(repo: Path) -> list[Path]:
    """Every working tree of the repository, the main one (if not bare) first."""
    out = git(repo, "worktree", "list", "--porcelain", "-z")
    trees = []
    for block in out.split(b"\0\0"):
        fields = [f for f in block.split(b"\0") if f]
        if not fields or b"bare" in fields:
            continue
        trees.append(Path(os.fsdecode(fields[0][len(b"worktree "):])))
    return trees


def vault_of(state: Path, repo: Path) -> Path:
    """The vault cairnd keeps for `repo` under the state directory `state` (SPEC 16),
    found by the source it names: where its checkpoints' refs and objects are."""
    common = Path(git_text(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    for source in sorted((state / "git" / "vaults").glob("*/cairnd-source")):
        if Path(source.read_text().strip()) == common.resolve():
            return source.parent
    raise AssertionError(f"no vault for {repo} under {state}")


def checkpoint_refs(state: Path, repo: Path, prefix: str = "refs/cairnd/") -> dict[str, str]:
    """Checkpoint refs under `prefix` (name -> object id), read from `repo`'s vault."""
    out = git_text(vault_of(state, repo), "for-each-ref", "--format=%(refname) %(objectname)", prefix.rstrip("/"))
    return dict(line.split(" ") for line in out.splitlines())


def vault_or_none(state: Path, repo: Path) -> Path | None:
    try:
        return vault_of(state, repo)
    except AssertionError:
        return None


def worktree_list(git_dir_or_repo: Path) -> list[tuple[Path, bool]]:
    """(worktree, prunable) of every non-bare worktree `git worktree list` names."""
    out = git_text(git_dir_or_repo, "worktree", "list", "--porcelain")
    trees = []
    for block in out.split("\n\n"):
        lines = block.splitlines()
        if not lines or not lines[0].startswith("worktree ") or "bare" in lines:
            continue
        trees.append((Path(lines[0][len("worktree "):]).resolve(), any(l.startswith("prunable") for l in lines)))
    return trees


def session_worktrees(state: Path, repo: Path) -> list[tuple[Path, bool]]:
    """Every worktree git knows of for `repo`: its own and those of the sessions' stores
    in its vault (each a linked worktree of a store of its own), (path, prunable) each."""
    found = worktree_list(repo)
    vault = vault_or_none(state, repo)
    for store in sorted((vault / "stores").iterdir()) if vault is not None and (vault / "stores").is_dir() else []:
        found += worktree_list(store)
    return found


def cairnd_refs(state: Path, repo: Path, prefix: str = "refs/cairnd/") -> list[str]:
    """Names of checkpoint refs under `prefix`, in `repo`'s vault and (an older cairnd's) in `repo`."""
    names = git_text(repo, "for-each-ref", "--format=%(refname)", prefix).split()
    vault = vault_or_none(state, repo)
    if vault is not None:
        names += git_text(vault, "for-each-ref", "--format=%(refname)", prefix).split()
    return sorted(set(names))

"""The Landlock launcher: confine this process's writes to some directories, then exec.

    python -m cairnd.sandbox --write DIR [--write DIR ...] -- COMMAND [ARGS...]

restricts itself (no_new_privs, then a Landlock domain in which only the named paths,
and what lies beneath them, may be written, created, removed, renamed or truncated),
then `exec`s COMMAND. Reading and executing stay open everywhere. A Landlock domain is
inherited by every process the command starts and cannot be left, so an agent and all
its tools write nowhere else: elsewhere, writes fail with EACCES, as on a read-only
file system. Being its own program, it restricts a fresh single-threaded process;
never a `preexec_fn` in cairnd, whose threads a fork could catch holding locks.

Landlock through ctypes (SPEC 16), per ABI version of the running kernel:
  1  the file-system write rights (WRITE_FILE, REMOVE_*, MAKE_*); a rename or link
     into another directory is always refused (no REFER yet)
  2  + REFER: renames between directories both inside the allowed paths work
  3  + TRUNCATE: truncate(2) and O_TRUNC outside are refused too
  4  network rules: not used (the sandbox does not cover the network)
  5  IOCTL_DEV: not handled, so terminals and devices keep their ioctls
  6  + SCOPE_SIGNAL: no signals to processes outside the domain (cairnd, siblings)
  7  audit-log flags: not used
Standard library only, and nothing of cairnd's: it runs before every agent start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Iterable, Sequence

# Syscall numbers: the same on every architecture but alpha (asm-generic/unistd.h).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
SCOPE_SIGNAL = 1 << 1  # ABI 6

WRITE_ACCESS_V1 = (ACCESS_FS_WRITE_FILE | ACCESS_FS_REMOVE_DIR | ACCESS_FS_REMOVE_FILE | ACCESS_FS_MAKE_CHAR
                   | ACCESS_FS_MAKE_DIR | ACCESS_FS_MAKE_REG | ACCESS_FS_MAKE_SOCK | ACCESS_FS_MAKE_FIFO
                   | ACCESS_FS_MAKE_BLOCK | ACCESS_FS_MAKE_SYM)
# The rights Landlock accepts on a rule for a file that is not a directory.
FILE_ACCESS = ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE

# Test switch: behave as on a kernel without Landlock (cairnd falls back, and says so).
FORCE_UNAVAILABLE_ENV = "CAIRND_SANDBOX_UNAVAILABLE"
EXIT_SANDBOX_FAILED = 126  # as a shell says of a command it could not run
EXIT_NOT_FOUND = 127


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in linux/landlock.h
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
except (OSError, AttributeError):
    _libc = None


class SandboxError(Exception):
    """Landlock could not be set up as asked."""


def abi_version() -> int:
    """The Landlock ABI the kernel offers, 0 where it has none (too old, disabled at
    boot, filtered by seccomp) or where the test switch says so."""
    if os.environ.get(FORCE_UNAVAILABLE_ENV) or _libc is None or not sys.platform.startswith("linux"):
        return 0
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def handled_access(abi: int) -> int:
    """The write rights a ruleset of this ABI handles: refused unless a rule allows them."""
    access = WRITE_ACCESS_V1
    if abi >= 2:
        access |= ACCESS_FS_REFER
    if abi >= 3:
        access |= ACCESS_FS_TRUNCATE
    return access


def scopes(abi: int) -> int:
    return SCOPE_SIGNAL if abi >= 6 else 0


def restrict_writes(paths: Iterable[str], abi: int | None = None) -> list[str]:
    """Confine the calling thread (and all it execs or forks from now on) to writing
    beneath `paths`; the paths skipped because they do not exist. Call it only from a
    single-threaded process: other threads would stay free."""
    abi = abi_version() if abi is None else abi
    if abi < 1 or _libc is None:
        raise SandboxError("this kernel offers no Landlock (Linux 5.13 or later, with landlock in the "
                           "lsm= boot list)")
    handled = handled_access(abi)
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=0, scoped=scopes(abi))
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0),
                       what="landlock_create_ruleset")
    skipped = []
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                skipped.append(path)
                continue
            except OSError as exc:
                raise SandboxError(f"cannot open {path!r} for a rule: {exc.strerror}") from None
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                rule = _PathBeneathAttr(allowed_access=handled if is_dir else handled & FILE_ACCESS, parent_fd=fd)
                _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0), what=f"landlock_add_rule {path!r}")
            finally:
                os.close(fd)
        # Required to restrict oneself without CAP_SYS_ADMIN; a set-uid program could
        # not widen the domain anyway, and now cannot gain privileges either.
        _check(_libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0),
                 what="landlock_restrict_self")
    finally:
        os.close(ruleset)
    return skipped


def _syscall(number: int, *args: object, what: str) -> int:
    assert _libc is not None
    return _check(_libc.syscall(ctypes.c_long(number), *args), what)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what} failed: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})")
    return int(result)


def parse_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--write DIR ... -- COMMAND ARGS` -> (the writable paths, the command)."""
    paths: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if not args:
                break
            return paths, args
        if arg == "--write" and args:
            paths.append(args.pop(0))
        elif arg.startswith("--write="):
            paths.append(arg[len("--write="):])
        else:
            raise SandboxError(f"unexpected argument {arg!r}")
    raise SandboxError("no command given after --")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        paths, command = parse_args(sys.argv[1:] if argv is None else argv)
        restrict_writes(paths)
    except SandboxError as exc:
        print(f"cairnd sandbox: {exc}; usage: python -m cairnd.sandbox --write DIR ... -- COMMAND [ARGS]",
              file=sys.stderr)
        return EXIT_SANDBOX_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cairnd sandbox: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_SANDBOX_FAILED
    return EXIT_SANDBOX_FAILED  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())

"""The Landlock launcher (SPEC 16): `python -m cairnd.agent.sandbox --write DIR -- CMD` runs CMD
able to write beneath DIR and nowhere else, reading everywhere."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cairnd.agent import sandbox

pytestmark = pytest.mark.skipif(sandbox.abi_version() < 1, reason="this kernel offers no Landlock")


def launch(tmp_path: Path, writable: list[Path], script: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cairnd.agent.sandbox"]
    for path in writable:
        argv += ["--write", str(path)]
    return subprocess.run([*argv, "--", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_writes_beneath_the_allowed_paths_work_and_elsewhere_fail_eacces(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "old.txt").write_text("keep\n")
    (inside / "sub").mkdir()
    proc = launch(tmp_path, [inside], f"""
        echo new > {inside}/sub/a.txt && echo wrote-inside
        echo x > {outside}/b.txt || echo refused-create
        echo x >> {outside}/old.txt || echo refused-append
        rm {outside}/old.txt || echo refused-remove
        mkdir {outside}/d || echo refused-mkdir
        ln -s /etc/passwd {outside}/link || echo refused-symlink
        mv {inside}/sub/a.txt {outside}/a.txt || echo refused-move-out
        mv {inside}/sub/a.txt {inside}/a.txt && echo moved-inside
        cat {outside}/old.txt
    """)
    lines = proc.stdout.split()
    assert lines == ["wrote-inside", "refused-create", "refused-append", "refused-remove", "refused-mkdir",
                     "refused-symlink", "refused-move-out", "moved-inside", "keep"], proc.stderr
    assert proc.stderr.count("Permission denied") >= 5, proc.stderr
    assert (inside / "a.txt").read_text() == "new\n"
    assert sorted(p.name for p in outside.iterdir()) == ["old.txt"]
    assert (outside / "old.txt").read_text() == "keep\n"


def test_truncating_a_file_outside_is_refused(tmp_path: Path) -> None:
    if sandbox.abi_version() < 3:
        pytest.skip("TRUNCATE is Landlock ABI 3")
    (tmp_path / "f").write_text("data\n")
    code = f"import os\ntry:\n os.truncate({str(tmp_path / 'f')!r}, 0)\nexcept OSError as e:\n print(e.errno)"
    proc = subprocess.run([sys.executable, "-m", "cairnd.agent.sandbox", "--write", "/dev/null", "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == str(errno.EACCES), proc.stderr
    assert (tmp_path / "f").read_text() == "data\n"


def test_a_file_rule_allows_writing_that_file_only(tmp_path: Path) -> None:
    (tmp_path / "allowed.txt").write_text("")
    proc = launch(tmp_path, [tmp_path / "allowed.txt"],
                  f"echo ok > {tmp_path}/allowed.txt && echo yes; echo no > {tmp_path}/other.txt || echo refused")
    assert proc.stdout.split() == ["yes", "refused"], proc.stderr
    assert (tmp_path / "allowed.txt").read_text() == "ok\n"


def test_children_inherit_the_domain_and_cannot_leave_it(tmp_path: Path) -> None:
    # A nested launcher asking for more cannot widen what its parent was given.
    (tmp_path / "a").mkdir()
    proc = launch(tmp_path, [tmp_path / "a"], f"""
        {sys.executable} -m cairnd.agent.sandbox --write {tmp_path} -- sh -c 'echo x > {tmp_path}/b || echo refused'
    """)
    assert proc.stdout.split() == ["refused"], proc.stderr
    assert not (tmp_path / "b").exists()


def test_signals_to_processes_outside_the_domain_are_refused(tmp_path: Path) -> None:
    if sandbox.abi_version() < 6:
        pytest.skip("signal scoping is Landlock ABI 6")
    outsider = subprocess.Popen(["sleep", "30"])
    try:
        proc = launch(tmp_path, [tmp_path], f"kill {outsider.pid} || echo refused; sleep 5 & kill $! && echo own")
        assert proc.stdout.split() == ["refused", "own"], proc.stderr
        assert outsider.poll() is None
    finally:
        outsider.kill()
        outsider.wait()


def test_missing_paths_are_skipped_and_devices_stay_usable(tmp_path: Path) -> None:
    proc = launch(tmp_path, [tmp_path / "missing", Path("/dev/null")], "echo x > /dev/null && echo ok")
    assert proc.returncode == 0 and proc.stdout.split() == ["ok"], proc.stderr


def test_a_command_that_does_not_exist_exits_127_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cairnd.agent.sandbox", "--write", str(tmp_path), "--",
                           "no-such-command-xyz"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 127 and "no-such-command-xyz" in proc.stderr


def test_bad_usage_exits_126_and_says_how(tmp_path: Path) -> None:
    for argv in (["--write", str(tmp_path)], ["--bogus", "--", "true"], []):
        proc = subprocess.run([sys.executable, "-m", "cairnd.agent.sandbox", *argv], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 126 and "usage:" in proc.stderr, argv


def test_the_test_switch_makes_landlock_unavailable_and_the_launcher_fails_closed(tmp_path: Path) -> None:
    proc = launch(tmp_path, [tmp_path], "echo ran", **{sandbox.FORCE_UNAVAILABLE_ENV: "1"})
    assert proc.returncode == 126 and "no Landlock" in proc.stderr and "ran" not in proc.stdout


def test_handled_rights_follow_the_abi() -> None:
    assert not sandbox.handled_access(1) & sandbox.ACCESS_FS_REFER
    assert sandbox.handled_access(2) & sandbox.ACCESS_FS_REFER
    assert not sandbox.handled_access(2) & sandbox.ACCESS_FS_TRUNCATE
    assert sandbox.handled_access(3) & sandbox.ACCESS_FS_TRUNCATE
    assert sandbox.handled_access(7) == sandbox.handled_access(3)  # later ABIs add nothing we handle
    assert sandbox.scopes(5) == 0 and sandbox.scopes(6) == sandbox.SCOPE_SIGNAL


def test_parse_args() -> None:
    assert sandbox.parse_args(["--write", "/a", "--write=/b", "--", "cmd", "--write", "x"]) == (
        ["/a", "/b"], ["cmd", "--write", "x"])
    with pytest.raises(sandbox.SandboxError):
        sandbox.parse_args(["--write", "/a", "--"])

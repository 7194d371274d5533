"""The sandbox's cost: agent start time confined by Landlock against unconfined (SPEC 16).

One start is what cairnd does before a session's first turn: `agentproc.spawn_agent`
(for the sandboxed start that includes `Confinement.wrap`: asking git where the git
directory is, reading HOME, making the TMPDIR, then the launcher restricting itself
and exec-ing the agent) up to the reference agent's answer to ACP `initialize`, read
raw from its stdout. Starts alternate between the two ways, so load drift hits both;
the figure is the median of each, and the ratio is sandboxed over unconfined in the
same run. A second row is the launcher alone (`--write ... -- true` against `true`), as
a share of an unconfined agent start.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import git, repo

from cairnd.agent import sandbox
from cairnd.agent.process import Launch, spawn_agent
from cairnd.agent.confinement import Confinement

INITIALIZE = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{}}}\n'


async def one_start(launch: Launch) -> float:
    started = time.perf_counter()
    process = await spawn_agent(launch)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(INITIALIZE)
    await process.stdin.drain()
    answer = await process.stdout.readline()
    took = time.perf_counter() - started
    if b'"result"' not in answer:
        raise RuntimeError(f"the agent did not answer initialize: {answer[:300]!r}")
    process.stdin.close()
    await process.wait()
    return took


async def alternate(plain: Launch, confined: Launch, rounds: int) -> tuple[list[float], list[float]]:
    plain_times, confined_times = [], []
    for _ in range(rounds):
        plain_times.append(await one_start(plain))
        confined_times.append(await one_start(confined))
    return plain_times, confined_times


def launcher_alone(writable: list[Path], rounds: int) -> tuple[float, float]:
    true = shutil.which("true") or "/bin/true"
    args = [sys.executable, "-I", "-S", sandbox.__file__]
    for path in writable:
        args += ["--write", str(path)]
    bare, wrapped = [], []
    for _ in range(rounds):
        for argv, into in (([true], bare), ([*args, "--", true], wrapped)):
            started = time.perf_counter()
            subprocess.run(argv, check=True)
            into.append(time.perf_counter() - started)
    return median(bare), median(wrapped)


def run(quick: bool) -> list[Row]:
    if sandbox.abi_version() < 1:
        return [Row("sandbox", "skipped: this kernel offers no Landlock", "-", "-", command_of(__file__, quick))]
    rounds = 5 if quick else 40
    source = repo(200)
    work = Path(tempfile.mkdtemp(prefix="cairnd-bench-sandbox-"))
    try:
        state, home = work / "state", work / "home"
        (home / ".cache").mkdir(parents=True)
        worktree = state / "worktrees" / "s1" / source.name
        git(source, "worktree", "add", "-q", "--detach", str(worktree))
        command = (sys.executable, "-m", "cairnd.agents.reference")
        env = {"HOME": str(home), "CAIRND_REFERENCE_STORE": str(state / "agents" / "reference")}
        plain = Launch("s1", "reference", command, worktree, env, state / "plain.stderr", 5.0)
        confinement = Confinement(worktree=worktree, source=source, state_dir=state, tmpdir=state / "tmp" / "s1",
                                  agent_dir=state / "agents" / "reference")
        confined = Launch("s1", "reference", command, worktree, env, state / "confined.stderr", 5.0, confinement)
        plain_times, confined_times = anyio.run(alternate, plain, confined, rounds)
        bare, wrapped = launcher_alone(confinement.writable_paths(home), rounds)
        git(source, "worktree", "remove", "--force", str(worktree))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command_line = command_of(__file__, quick)
    plain_start, confined_start = median(plain_times), median(confined_times)
    return [
        Row("sandbox: agent start", f"{ms(confined_start)} sandboxed, {ms(plain_start)} unconfined "
            f"(reference agent, spawn to its initialize answer, median of {rounds})",
            ratio(confined_start, plain_start, "unconfined"), target_text("the price of confinement", None),
            command_line),
        Row("sandbox: launcher alone", f"{ms(wrapped)} per exec of `true` through it, {ms(bare)} without",
            ratio(wrapped - bare, plain_start, "an unconfined agent start"),
            target_text("what the launcher and Landlock add", None), command_line),
    ]


if __name__ == "__main__":
    main(__file__, run)

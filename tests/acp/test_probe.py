"""The probe `cairnd acp` starts for a profile's first `initialize` (SPEC 18) is an agent
process like any other (SPEC 16): confined to a scratch directory of its own, removed
after; and the answer it caches is checked as agent-written data before an editor sees it."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from acp import spawn_agent_process
from acp.schema import ClientCapabilities

from acpkit import acp_env, cairnd_acp, repo_at
from cairnd.acp.probe import initialize_answer
from cairnd.agent import sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from realagents.harness import RecordingClient  # noqa: E402

landlock = pytest.mark.skipif(sandbox.abi_version() < 1, reason="this kernel offers no Landlock")

# An agent that, started, tries to plant files in the state directory and says on stderr
# how each try went, then becomes the reference agent.
PLANTER = """\
import os, sys
state = sys.argv[1]
print("cwd", os.getcwd(), file=sys.stderr)
for target in (os.path.join(state, "planted"), os.path.join(state, "acp", "planted"),
               os.path.join(state, "acp", "planter.initialize.json"), os.path.join(os.getcwd(), "mine")):
    try:
        with open(target, "w") as f:
            f.write("planted")
        print("wrote", target, file=sys.stderr)
    except OSError as exc:
        print("refused", target, exc.errno, file=sys.stderr)
sys.stderr.flush()
os.execv(sys.executable, [sys.executable, "-m", "cairnd.agents.reference"])
"""


async def _initialize(tmp_path: Path, profile: str | None, config: Path | None, **extra: str) -> dict:
    repo = repo_at(tmp_path)
    client = RecordingClient(root=repo)
    command = cairnd_acp(profile)
    env = {**acp_env(tmp_path, config), **extra}
    async with spawn_agent_process(client, command[0], *command[1:], env=env, cwd=repo,
                                   observers=[client.observe], use_unstable_protocol=True) as (conn, _proc):
        init = await conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities())
        return init.model_dump(by_alias=True, exclude_none=True)


@landlock
@pytest.mark.anyio
async def test_the_probe_cannot_write_into_the_state_directory(tmp_path: Path) -> None:
    from daemonproc import write_config
    state = tmp_path / "state"
    (tmp_path / "planter.py").write_text(PLANTER)
    config = write_config(tmp_path / "cairnd.toml", {"agents": {"planter": {
        "command": [sys.executable, str(tmp_path / "planter.py"), str(state)]}}})
    init = await _initialize(tmp_path, "planter", config)
    assert init["agentCapabilities"]["promptCapabilities"]["embeddedContext"] is True  # the agent answered

    stderr = (state / "acp" / "planter.stderr").read_text()
    import errno
    for target in (state / "planted", state / "acp" / "planted", state / "acp" / "planter.initialize.json"):
        assert f"refused {target} {errno.EACCES}" in stderr, stderr
        assert not target.exists() or "planted" not in target.read_text()
    cwd = Path(stderr.split("cwd ", 1)[1].split("\n", 1)[0])
    assert cwd.parent.parent == state / "tmp" and cwd.parent.name.startswith("acp-probe-"), cwd
    assert f"wrote {cwd / 'mine'}" in stderr, stderr  # its own scratch is writable ...
    assert not cwd.parent.exists()  # ... and removed after
    cached = orjson.loads((state / "acp" / "planter.initialize.json").read_bytes())  # cairnd's, not the agent's
    assert cached["initialize"]["agentCapabilities"]["promptCapabilities"]["embeddedContext"] is True


@pytest.mark.anyio
async def test_without_landlock_the_probe_still_runs_in_a_scratch_of_its_own(tmp_path: Path) -> None:
    from daemonproc import write_config
    state = tmp_path / "state"
    (tmp_path / "planter.py").write_text(PLANTER)
    config = write_config(tmp_path / "cairnd.toml", {"agents": {"planter": {
        "command": [sys.executable, str(tmp_path / "planter.py"), str(state)]}}})
    await _initialize(tmp_path, "planter", config, CAIRND_SANDBOX_UNAVAILABLE="1")
    stderr = (state / "acp" / "planter.stderr").read_text()
    cwd = Path(stderr.split("cwd ", 1)[1].split("\n", 1)[0])
    assert cwd.parent.parent == state / "tmp" and cwd.parent.name.startswith("acp-probe-"), cwd
    assert not cwd.parent.exists()  # not the state directory, and gone after


@pytest.mark.anyio
async def test_a_hostile_cached_answer_is_checked_before_use(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "acp").mkdir(parents=True)
    hostile = {"protocolVersion": "one", "authMethods": [{"id": 7}, {"id": "x" * 1000, "name": "n"}] * 20,
               "agentCapabilities": {"loadSession": False, "sessionCapabilities": {"close": {}},
                                     "promptCapabilities": {"image": "yes", "audio": True}, "_meta": {"a": 1}},
               "agentInfo": {"title": ["not", "text"], "name": "n" * 5000}}  # under 64 KiB in all
    (state / "acp" / "reference.initialize.json").write_bytes(orjson.dumps(
        {"command": [sys.executable, "-m", "cairnd.agents.reference"], "initialize": hostile}))
    init = await _initialize(tmp_path, None, None)
    caps = init["agentCapabilities"]
    assert caps["loadSession"] is True and set(caps["sessionCapabilities"]) == {"list", "resume", "fork"}
    assert caps["promptCapabilities"] == {"audio": True, "image": False, "embeddedContext": False}
    assert init["protocolVersion"] == 1
    assert init["agentInfo"]["name"] == "cairnd" and len(init["agentInfo"]["title"]) < 300
    assert len(init["authMethods"]) == 8 and all(len(m["id"]) <= 200 for m in init["authMethods"])


def test_initialize_answer_keeps_only_what_is_passed_on() -> None:
    assert initialize_answer("no") == {} and initialize_answer({"protocolVersion": True}) == {}
    kept = initialize_answer({"protocolVersion": 1, "agentCapabilities": {
        "mcpCapabilities": {"http": True, "sse": 1, "acp": True}, "loadSession": True, "auth": {"logout": {}}},
        "authMethods": [{"id": "a", "name": "A", "description": 3, "type": "terminal", "args": ["rm"]}]})
    assert kept == {"protocolVersion": 1, "agentCapabilities": {"mcpCapabilities": {"http": True}},
                    "authMethods": [{"id": "a", "name": "A"}]}

"""Smoke-drive the real claude-agent-acp (Claude Code) offline, with the acp SDK alone.

Not a pytest file: run it by hand to see every raw ACP frame and every model
call:

    cd /work/main && .venv/bin/python tests/scenarios/realagents/smoke_claude.py [--quiet] [--keep] [--dump DIR] [--isolated]

It starts the scripted Anthropic stub, makes a temp HOME and a temp git repo,
spawns node_modules/.bin/claude-agent-acp there and runs, each as its own
turn: a Write, an Edit, a Bash (`mkdir` + `git commit`), a cancel while the
model stalls and the two turns after it, then in fresh agent processes a
`session/load` (what it replays, whether the model sees the earlier turns),
a `session/load` from another worktree, a `session/fork` (whole, and cut at
a message), and a kill of the agent mid-turn. `ok`/`FAIL` lines are checks,
`seen` lines are observations. Findings are written up in NOTES.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realagents.anthropic_stub import (  # noqa: E402
    AnthropicStub,
    bash,
    edit_file,
    prompt_texts,
    stall,
    text,
    tool_results,
    write_file,
)
from realagents.harness import (  # noqa: E402
    claude_agent_bin,
    claude_assistant_entries,
    claude_agent_env,
    copy_claude_transcript,
    ensure_agents_installed,
    git_status,
    make_git_repo,
)
from realagents.smokekit import Smoke, git, reexec_isolated, say  # noqa: E402


async def tools_cancel_and_after(s: Smoke) -> str:
    client = s.client()
    async with s.agent(client, s.repo, "main") as (conn, proc):
        sid = await s.new_session(conn, s.repo)

        s.stub.push(write_file(str(s.repo / "hello.txt"), "hello from claude\n"), text("Wrote hello.txt."))
        await s.prompt(conn, sid, "Create hello.txt saying hello.")
        s.check((s.repo / "hello.txt").read_text() == "hello from claude\n", "Write created hello.txt")
        s.check("File created successfully" in str(tool_results(s.stub.main_requests()[-1])), "the model got the Write's tool_result")

        s.stub.push(edit_file(str(s.repo / "hello.txt"), "hello", "goodbye"), text("Edited."))
        await s.prompt(conn, sid, "Change hello to goodbye in hello.txt.")
        s.check((s.repo / "hello.txt").read_text() == "goodbye from claude\n", "Edit changed hello.txt")

        s.stub.push(
            bash("mkdir -p made/by && touch made/by/bash && git add -A && git commit -q -m 'agent commit'"),
            text("Committed."),
        )
        await s.prompt(conn, sid, "Make a directory and commit everything.")
        s.check((s.repo / "made" / "by" / "bash").exists(), "Bash made a directory")
        s.check(git_status(s.repo) == "", "Bash committed everything")
        say("git log:\n" + git(s.repo, "log", "--oneline", "--stat"))
        s.check(
            prompt_texts(s.stub.main_requests()[-1])
            == ["Create hello.txt saying hello.", "Change hello to goodbye in hello.txt.", "Make a directory and commit everything."],
            "the model sees every earlier user message in `messages`",
        )
        s.seen(f"permission requests: {orjson.dumps(client.permission_requests).decode()[:1500]}")
        s.seen(f"fs/* requests from the agent: {[f.message['method'] for f in client.frames if str(f.message.get('method', '')).startswith('fs/')]}")

        # cancel while the model call hangs
        s.stub.push(stall("Let me think"))
        prompt_task = asyncio.create_task(s.prompt(conn, sid, "Think for a long time."))
        s.check(await asyncio.to_thread(s.stub.wait_stalled, 60), "model call stalled")
        cancel_at = time.monotonic()
        await conn.cancel(session_id=sid)
        response = await prompt_task
        say(f"cancel -> prompt response in {time.monotonic() - cancel_at:.2f}s")
        s.check(response.stop_reason == "cancelled", "cancel ends the turn with stopReason=cancelled")
        stalled = [r for r in s.stub.requests() if r.reply == "stall"][-1]
        s.check(
            await asyncio.to_thread(s.stub.wait_requests, lambda _: stalled.aborted_by_client, 5),
            "the agent aborted the stalled model call",
        )
        s.stub.release()

        # the two turns after a cancel (claude-agent-acp 0.23.1 is off by one here)
        s.stub.push(text("Answer to A."), text("Answer to B."))
        for words in ("Turn A after cancel.", "Turn B after cancel."):
            first_frame = len(client.frames)
            response = await s.prompt(conn, sid, words)
            await asyncio.sleep(1.0)  # let a model call that outlives the response show up
            texts = s.agent_texts_since(client, first_frame)
            s.seen(f"{words!r}: stopReason={response.stop_reason} usage={response.usage} agent text={texts}")
        s.seen(f"model calls after the cancel: {[r.reply for r in s.stub.requests() if r.kind == 'main'][-2:]}")
        s.seen(f"usage_update frames (used=null fails SDK validation): {len(client.updates('usage_update'))}")

        # a way out in the same process: close the session and resume it (a new Claude Code query)
        await conn.close_session(session_id=sid)
        resumed = await conn.resume_session(session_id=sid, cwd=str(s.repo), mcp_servers=[])
        s.seen(f"session/close + session/resume -> {resumed.session_id if hasattr(resumed, 'session_id') else resumed}")
        s.stub.push(text("Answer to C."))
        first_frame = len(client.frames)
        await s.prompt(conn, sid, "Turn C after close+resume.")
        texts = s.agent_texts_since(client, first_frame)
        s.check("Answer to C." in texts, f"after close+resume a turn carries its own answer again ({texts})")
        s.check(proc.returncode is None, "agent still alive after all that")
    return sid


async def load_in_fresh_process(s: Smoke, sid: str) -> None:
    client = s.client()
    async with s.agent(client, s.repo, "load") as (conn, _proc):
        started = time.monotonic()
        await conn.load_session(cwd=str(s.repo), session_id=sid, mcp_servers=[])
        say(f"session/load took {time.monotonic() - started:.2f}s")
        await asyncio.sleep(0.5)  # available_commands_update comes after the response
        s.seen(f"replayed updates: {[p['update']['sessionUpdate'] for p in client.updates()]}")
        replayed = [(p["update"].get("content") or {}).get("text") for p in client.updates("user_message_chunk")]
        s.seen(f"replayed user_message_chunk texts: {replayed}")
        s.check("Create hello.txt saying hello." in replayed, "session/load replays the user messages")
        s.stub.push(text("I remember."))
        before = len(s.stub.main_requests())
        await s.prompt(conn, sid, "What did I ask before?")
        seen = s.model_saw_since(before)
        s.seen(f"model saw after load: {seen}")
        s.check(bool(seen) and seen[0][0] == "Create hello.txt saying hello.", "after session/load the model sees the first prompt")


async def load_from_other_worktree(s: Smoke, sid: str) -> None:
    other = s.work / "other-worktree"
    git(s.repo, "worktree", "add", "-q", "--detach", str(other), "HEAD")
    client = s.client(other)
    async with s.agent(client, other, "load-elsewhere") as (conn, _proc):
        try:
            await conn.load_session(cwd=str(other), session_id=sid, mcp_servers=[])
        except Exception as exc:
            s.seen(f"session/load of {sid} with another cwd failed: {exc!r}")
            return
        replayed = [(p["update"].get("content") or {}).get("text") for p in client.updates("user_message_chunk")]
        s.seen(f"session/load with another cwd replayed {len(replayed)} user chunks")
        s.stub.push(text("Elsewhere."))
        before = len(s.stub.main_requests())
        try:
            await s.prompt(conn, sid, "Prompt from the other worktree.")
        except Exception as exc:
            s.seen(f"prompt after load elsewhere failed: {exc!r}")
            return
        s.seen(f"model saw after load elsewhere: {s.model_saw_since(before)}")


async def fork_natively(s: Smoke, sid: str) -> None:
    fork_dir = s.work / "fork-worktree"
    git(s.repo, "worktree", "add", "-q", "--detach", str(fork_dir), "HEAD")
    client = s.client(fork_dir)
    async with s.agent(client, fork_dir, "fork") as (conn, _proc):
        try:
            forked = await conn.fork_session(session_id=sid, cwd=str(fork_dir), mcp_servers=[])
            s.seen(f"session/fork into another cwd worked: {forked.session_id}")
        except Exception as exc:
            s.seen(f"session/fork into another cwd failed: {exc!r}")
        copied = copy_claude_transcript(s.home, sid, fork_dir)
        s.seen(f"copied the transcript to {copied}")

        forked = await conn.fork_session(session_id=sid, cwd=str(fork_dir), mcp_servers=[])
        s.seen(f"session/fork (whole) -> {forked.session_id}, replayed {len(client.updates('user_message_chunk'))} user chunks")
        s.stub.push(text("Forked."))
        before = len(s.stub.main_requests())
        await s.prompt(conn, forked.session_id, "Hello fork.")
        seen = s.model_saw_since(before)
        s.seen(f"model saw in the whole fork: {seen}")
        s.check(bool(seen) and "Create hello.txt saying hello." in seen[0], "a whole fork (other cwd, transcript copied) carries the history")

        uuids = claude_assistant_entries(s.home, sid)
        s.seen(f"assistant entries in the transcript: {uuids}")
        cut = next((u for u, label in uuids if label == "Wrote hello.txt."), None)
        if cut is None:
            s.seen("no assistant entry for the first turn: cut fork skipped")
            return
        forked = await conn.fork_session(
            session_id=sid,
            cwd=str(fork_dir),
            mcp_servers=[],
            claudeCode={"options": {"resumeSessionAt": cut}},
        )
        s.stub.push(text("Cut fork."))
        before = len(s.stub.main_requests())
        await s.prompt(conn, forked.session_id, "Hello cut fork.")
        seen = s.model_saw_since(before)
        s.seen(f"model saw in the fork cut after turn 1: {seen}")
        s.check(
            bool(seen) and seen[0] == ["Create hello.txt saying hello.", "Hello cut fork."],
            "session/fork with _meta.claudeCode.options.resumeSessionAt keeps only turn 1",
        )


async def kill_mid_turn(s: Smoke) -> None:
    client = s.client()
    async with s.agent(client, s.repo, "kill") as (conn, proc):
        sid = await s.new_session(conn, s.repo)
        s.stub.push(stall("Working"))
        prompt_task = asyncio.create_task(s.prompt(conn, sid, "Work forever."))
        s.check(await asyncio.to_thread(s.stub.wait_stalled, 60), "model call stalled before kill")
        proc.kill()
        code = await proc.wait()
        say(f"agent killed, exit status {code}")
        try:
            await asyncio.wait_for(prompt_task, 10)
            s.failures.append("prompt after kill returned a response")
        except (ConnectionError, asyncio.TimeoutError) as exc:
            s.check(isinstance(exc, ConnectionError), f"a killed agent fails the pending prompt ({exc!r})")
        s.stub.release()


async def main(quiet: bool, keep: bool, dump: Path | None) -> int:
    problem = ensure_agents_installed()
    if problem:
        say(f"cannot run: {problem}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="cairnd-smoke-claude-"))
    home = work / "home"
    home.mkdir()
    repo = make_git_repo(work / "repo", {"README.md": "# demo\n", "notes.txt": "alpha\nbeta\n"})
    say(f"work dir {work}")
    with AnthropicStub(log=say) as stub:
        s = Smoke(
            work=work,
            home=home,
            repo=repo,
            stub=stub,
            command=[str(claude_agent_bin())],
            env=lambda: claude_agent_env(stub.agent_env(str(home)), home),
            prompt_texts=prompt_texts,
            quiet=quiet,
        )
        sid = await tools_cancel_and_after(s)
        await load_in_fresh_process(s, sid)
        await load_from_other_worktree(s, sid)
        await fork_natively(s, sid)
        await kill_mid_turn(s)

        s.report_requests(dump)
    if keep:
        say(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    say("PASS" if not s.failures else f"FAILURES: {s.failures}")
    return 0 if not s.failures else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="cut long frames to 300 characters")
    parser.add_argument("--keep", action="store_true", help="keep the temp HOME and repo")
    parser.add_argument("--dump", type=Path, help="write every recorded model request as JSON here")
    parser.add_argument("--isolated", action="store_true", help="run in a network namespace with only loopback")
    args = parser.parse_args()
    if args.isolated:
        reexec_isolated()
    sys.exit(asyncio.run(main(args.quiet, args.keep, args.dump)))

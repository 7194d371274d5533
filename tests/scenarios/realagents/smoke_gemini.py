"""Smoke-drive the real Gemini CLI (`gemini --acp`) offline, with the acp SDK alone.

Not a pytest file: run it by hand to see every raw ACP frame and every model
call:

    cd /work/main && .venv/bin/python tests/scenarios/realagents/smoke_gemini.py [--quiet] [--keep] [--dump DIR] [--isolated]

It starts the scripted Gemini API stub, makes a temp HOME and a temp git
repo, spawns node_modules/.bin/gemini --acp there and runs, each as its own
turn: a write_file, a replace, a run_shell_command (`mkdir` + `git commit`),
a cancel while the model stalls and a turn after it, then a `session/load`
in a fresh process (what it replays, whether the model sees the earlier
turns), and a kill of the agent mid-turn. Findings are in NOTES.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realagents.gemini_stub import (  # noqa: E402
    GeminiStub,
    edit_file,
    function_responses,
    prompt_texts,
    run_shell_command,
    stall,
    text,
    write_file,
)
from realagents.harness import (  # noqa: E402
    RecordingClient,
    ensure_agents_installed,
    gemini_agent_command,
    gemini_agent_env,
    git_status,
    make_git_repo,
)
from realagents.smokekit import Smoke, git, reexec_isolated, say  # noqa: E402


def fs_methods(client: RecordingClient) -> list[str]:
    return [f.message["method"] for f in client.frames if str(f.message.get("method", "")).startswith("fs/")]


async def new_file_through_client_fs(s: Smoke) -> None:
    """Gemini CLI 0.61 cannot create a file through the client's fs/*: see NOTES.md."""
    client = s.client()
    async with s.agent(client, s.repo, "fs", fs=True) as (conn, _proc):
        sid = await s.new_session(conn, s.repo)
        s.stub.push(write_file(str(s.repo / "via-fs.txt"), "through the client\n"), text("Tried."))
        await s.prompt(conn, sid, "Create via-fs.txt.")
        failed = [p["update"] for p in client.updates("tool_call_update") if p["update"].get("status") == "failed"]
        s.seen(f"write_file of a new file with fs/* offered: exists={(s.repo / 'via-fs.txt').exists()}, failed updates={failed}")
        s.seen(f"fs/* requests: {fs_methods(client)}")

        s.stub.push(edit_file(str(s.repo / "notes.txt"), "alpha", "gamma"), text("Edited."))
        await s.prompt(conn, sid, "Change alpha to gamma in notes.txt.")
        s.check((s.repo / "notes.txt").read_text() == "gamma\nbeta\n", "replace edits an existing file through fs/read+fs/write")
        s.seen(f"fs/* requests: {fs_methods(client)}")
        git(s.repo, "checkout", "--", "notes.txt")


async def tools_and_cancel(s: Smoke) -> str:
    client = s.client()
    async with s.agent(client, s.repo, "main", fs=False) as (conn, proc):
        sid = await s.new_session(conn, s.repo)

        s.stub.push(write_file(str(s.repo / "hello.txt"), "hello from gemini\n"), text("Wrote hello.txt."))
        await s.prompt(conn, sid, "Create hello.txt saying hello.")
        s.check((s.repo / "hello.txt").read_text() == "hello from gemini\n", "write_file created hello.txt")
        s.seen(f"functionResponse parts sent back: {function_responses(s.stub.main_requests()[-1])}")

        s.stub.push(edit_file(str(s.repo / "hello.txt"), "hello", "goodbye"), text("Edited."))
        await s.prompt(conn, sid, "Change hello to goodbye in hello.txt.")
        s.check((s.repo / "hello.txt").read_text() == "goodbye from gemini\n", "replace changed hello.txt")

        s.stub.push(
            run_shell_command("mkdir -p made/by && touch made/by/shell && git add -A && git commit -q -m 'agent commit'"),
            text("Committed."),
        )
        await s.prompt(conn, sid, "Make a directory and commit everything.")
        s.check((s.repo / "made" / "by" / "shell").exists(), "run_shell_command made a directory")
        s.check(git_status(s.repo) == "", "run_shell_command committed everything")
        say("git log:\n" + git(s.repo, "log", "--oneline", "--stat"))
        seen = s.prompt_texts(s.stub.main_requests()[-1])
        s.seen(f"user texts in the last model call: {seen}")
        s.check(
            [t for t in seen if not t.startswith("<")][:3]
            == ["Create hello.txt saying hello.", "Change hello to goodbye in hello.txt.", "Make a directory and commit everything."],
            "the model sees every earlier user message in `contents`",
        )
        s.seen(f"permission requests: {orjson.dumps(client.permission_requests).decode()[:2500]}")

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

        for words, answer in (("Turn A after cancel.", "Answer to A."), ("Turn B after cancel.", "Answer to B.")):
            s.stub.push(text(answer))
            first_frame = len(client.frames)
            response = await s.prompt(conn, sid, words)
            await asyncio.sleep(0.5)
            texts = s.agent_texts_since(client, first_frame)
            s.check(response.stop_reason == "end_turn" and answer in "".join(t or "" for t in texts), f"{words!r} carries its own answer ({texts})")
        s.check(proc.returncode is None, "agent still alive")
    return sid


async def wait_past_chat_minute(s: Smoke, sid: str) -> None:
    """Gemini CLI 0.61's session/load clobbers a transcript written in the same UTC minute (NOTES.md)."""
    chats = list((s.home / ".gemini" / "tmp").glob(f"*/chats/session-*-{sid[:8]}.jsonl"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M")
    if any(now in p.name for p in chats):
        wait = 61 - datetime.now(timezone.utc).second
        s.seen(f"transcript {chats[0].name} is from this minute: waiting {wait}s before session/load")
        await asyncio.sleep(wait)


async def load_in_fresh_process(s: Smoke, sid: str) -> None:
    await wait_past_chat_minute(s, sid)
    client = s.client()
    async with s.agent(client, s.repo, "load", fs=False) as (conn, _proc):
        started = time.monotonic()
        try:
            await conn.load_session(cwd=str(s.repo), session_id=sid, mcp_servers=[])
        except Exception as exc:
            s.seen(f"session/load failed: {exc!r}")
            s.failures.append("session/load")
            return
        say(f"session/load took {time.monotonic() - started:.2f}s")
        await asyncio.sleep(0.5)
        s.seen(f"replayed updates: {[p['update']['sessionUpdate'] for p in client.updates()]}")
        replayed = [(p["update"].get("content") or {}).get("text") for p in client.updates("user_message_chunk")]
        s.seen(f"replayed user_message_chunk texts: {replayed}")
        s.check("Create hello.txt saying hello." in replayed, "session/load replays the user messages")
        s.stub.push(text("I remember."))
        before = len(s.stub.main_requests())
        await s.prompt(conn, sid, "What did I ask before?")
        seen = s.model_saw_since(before)
        s.seen(f"model saw after load: {seen}")
        s.check(bool(seen) and "Create hello.txt saying hello." in seen[0], "after session/load the model sees the first prompt")


async def load_from_other_worktree(s: Smoke, sid: str) -> None:
    other = s.work / "other-worktree"
    git(s.repo, "worktree", "add", "-q", "--detach", str(other), "HEAD")
    client = s.client(other)
    async with s.agent(client, other, "load-elsewhere", fs=False) as (conn, _proc):
        try:
            await conn.load_session(cwd=str(other), session_id=sid, mcp_servers=[])
            s.seen(f"session/load from another worktree worked, replayed {len(client.updates('user_message_chunk'))} user chunks")
        except Exception as exc:
            s.seen(f"session/load from another worktree failed: {exc!r} {getattr(exc, 'data', '')}")


async def kill_mid_turn(s: Smoke) -> None:
    client = s.client()
    async with s.agent(client, s.repo, "kill", fs=False) as (conn, proc):
        sid = await s.new_session(conn, s.repo)
        s.stub.push(stall("Working"))
        prompt_task = asyncio.create_task(s.prompt(conn, sid, "Work forever."))
        s.check(await asyncio.to_thread(s.stub.wait_stalled, 60), "model call stalled before kill")
        proc.kill()
        say(f"agent killed, exit status {await proc.wait()}")
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
    work = Path(tempfile.mkdtemp(prefix="cairnd-smoke-gemini-"))
    home = work / "home"
    home.mkdir()
    repo = make_git_repo(work / "repo", {"README.md": "# demo\n", "notes.txt": "alpha\nbeta\n"})
    say(f"work dir {work}")
    with GeminiStub(log=say) as stub:
        s = Smoke(
            work=work,
            home=home,
            repo=repo,
            stub=stub,
            command=gemini_agent_command(),
            env=lambda: gemini_agent_env(stub.agent_env(str(home)), home),
            prompt_texts=prompt_texts,
            quiet=quiet,
        )
        await new_file_through_client_fs(s)
        sid = await tools_and_cancel(s)
        await load_in_fresh_process(s, sid)
        await load_from_other_worktree(s, sid)
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

"""The web view in a real browser (SPEC 14): Debian's Chromium driven by Playwright,
against a real daemon and a real `cairnd web`, clicking through what people do.
Each test saves a screenshot of its page under its own tmp_path."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from gitrepos import git_text, make_repo
from webkit import CHROMIUM, CHROMIUM_ARGS, start_pair

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                 reason="Debian's chromium is not installed (apt-get install -y chromium)")]

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("webbrowser")
    repo = make_repo(base / "repo")
    daemon, web = start_pair(base)
    try:
        yield {"daemon": daemon, "web": web, "repo": repo}
    finally:
        web.stop()
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Any:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, site: Any) -> Any:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("dialog", lambda dialog: dialog.accept())
    # As a person does: the address `cairnd web` printed, whose token becomes a cookie.
    opened.goto(site["web"].entry)
    assert opened.url == site["web"].url + "/"
    yield opened
    context.close()
    assert not errors, errors  # no script error on any page


def new_session(site: Any, title: str, prompts: list[str]) -> str:
    made = site["daemon"].ok({"kind": "new", "repo": str(site["repo"]), "title": title, "prompt": prompts[0]})
    for text in prompts[1:]:
        site["daemon"].ok({"kind": "prompt", "session": made["session"], "text": text})
    return made["session"]


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    # At the bottom, so the sticky prompt box is drawn where it sits, under the conversation.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    docs = os.environ.get("CAIRND_DOCS_SCREENSHOTS")  # a directory: the docs' pictures, refreshed
    if docs:
        shutil.copyfile(path, Path(docs) / f"web-{name}.png")
    return path


def test_open_a_session_from_the_list(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "list me", ["write listed.txt: yes", "delegate: write sub.txt: s"])
    page.goto(site["web"].url + "/")
    row = page.locator(f'tr[data-session="{session}"]')
    assert row.locator("td").nth(2).inner_text() == "2"  # turns
    page.fill('input[name="q"]', "list me")
    page.click('form.filter button')
    page.wait_for_url(re.compile(r"q=list"))
    assert page.locator("tr.session-row").count() == 1
    shot(page, tmp_path, "sessions")
    page.click(f'tr[data-session="{session}"] a.session-link')
    page.wait_for_url(f"**/sessions/{session}")
    assert page.locator("h1.session-title").inner_text() == "list me"
    assert page.locator("#u0 .text").inner_text() == "write listed.txt: yes"
    assert page.locator("li.tool .tool-title").first.inner_text() == "write listed.txt"
    assert "history=0" in page.locator("#u0 ~ li.agent").first.inner_text()
    # the sub-session is folded: its messages and tool calls are there, not shown
    sub = page.locator("li.sub")
    assert sub.locator("summary").first.inner_text() == "Sub-session d1"
    sub_message = sub.locator("li.sub-user .text")
    assert sub_message.text_content() == "write sub.txt: s" and not sub_message.is_visible()
    assert sub_message.evaluate("el => el.closest('li.sub-user').querySelectorAll('.fork-btn').length") == 0
    sub.locator("summary").first.click()
    assert sub_message.is_visible()
    assert sub.locator("li.tool .tool-title").inner_text() == "write sub.txt"


def test_fork_from_message_2_with_edited_text_then_its_lineage(site: Any, page: Any, tmp_path: Path) -> None:
    parent = new_session(site, "three steps", ["write one.txt: 1", "write two.txt: 2", "write three.txt: 3"])
    page.goto(f"{site['web'].url}/sessions/{parent}")
    page.hover("#u2")
    page.click("#u2 .fork-btn")
    editor = page.locator("#u2 .fork-form textarea")
    assert editor.input_value() == "write three.txt: 3"  # the message, ready to edit
    editor.fill("write edited.txt: E")
    shot(page, tmp_path, "fork-editor")
    page.click('#u2 .fork-form button[value="fork-send"]')
    page.wait_for_url(re.compile(r"/sessions/(?!" + parent + r")[A-Za-z0-9]+$"))
    fork = page.url.rsplit("/", 1)[1]
    banner = page.locator(".fork-banner")
    assert "Forked from:" in banner.inner_text() and "three steps" in banner.inner_text()
    assert banner.locator("a.parent-link").get_attribute("href") == f"/sessions/{parent}"
    users = page.locator("li.user:not(.sub-user) > .text")
    assert users.all_inner_texts() == ["write one.txt: 1", "write two.txt: 2", "write edited.txt: E"]
    answer = page.locator("#u2 ~ li.agent").last
    answer.wait_for()
    assert "history=2" in answer.inner_text()  # the agent knew the 2 kept messages
    assert page.locator("#u2 ~ li.tool .tool-title").first.inner_text() == "write edited.txt"
    shot(page, tmp_path, "fork")
    page.click("text=Lineage")
    page.wait_for_url(f"**/sessions/{fork}/lineage")
    branch = page.locator(f'#node-{parent} .node-message[data-ordinal="2"] > .branch[data-at="2"]')
    assert branch.locator(f"#node-{fork}").count() == 1
    assert "write edited.txt: E" in branch.inner_text()
    shot(page, tmp_path, "lineage")


def test_a_running_turns_writes_appear_live_before_it_ends(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "live one", ["write before.txt: 0"])
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.locator("#live").wait_for()
    page.fill("#prompt-text", "write live.txt: hi\nsleep: 6\nwrite after.txt: bye")
    page.click("#prompt-form button")
    written = page.locator("#u1 ~ li.tool", has_text="write live.txt")
    written.wait_for()
    written.locator('.tool-status:text("completed")').wait_for()
    # the turn is still going (sleeping): no end, no checkpoint after it yet
    assert page.locator("#u1 ~ li.turn-end").count() == 0
    assert page.locator("#running").is_visible()
    path = live_path(site, session)
    assert not path.exists()  # the write after the sleep has not happened
    shot(page, tmp_path, "live")
    assert page.locator("#turns").inner_text() == "1 turn"
    page.locator("#u1 ~ li.turn-end").wait_for()
    assert page.locator("#u1 ~ li.tool", has_text="write after.txt").count() == 1
    page.locator("#turns", has_text="2 turns").wait_for()  # the header follows too
    page.locator("#running").wait_for(state="hidden")


def live_path(site: Any, session: str) -> Path:
    return site["daemon"].state / "worktrees" / session / "repo" / "after.txt"


def test_the_diff_of_a_turn_shows_its_changed_lines(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "diffs", ["write notes.txt: first line", "append notes.txt: second line"])
    page.goto(f"{site['web'].url}/sessions/{session}")
    checkpoint = page.locator("li.checkpoint", has_text="after turn 2")
    assert "M notes.txt" in checkpoint.inner_text()
    checkpoint.locator("a.diff-link").click()
    page.wait_for_url(re.compile(r"/diff\?"))
    assert page.locator(".file-diff h2").inner_text().startswith("M notes.txt")
    assert page.locator("pre.diff .add").all_inner_texts() == ["+second line"]
    assert page.locator("pre.diff .ctx").all_inner_texts()[-1] == " first line"
    shot(page, tmp_path, "diff")


def test_cancel_stops_a_running_turn(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "to cancel", ["write a.txt: a"])
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.locator("#live").wait_for()
    page.fill("#prompt-text", "sleep: 60")
    page.click("#prompt-form button")
    page.locator("#u1").wait_for()
    page.locator("#running").wait_for()
    page.click("#cancel-btn")
    page.locator(".toast", has_text="cancel: done").wait_for()
    page.locator("#u1 ~ li.turn-end .stop", has_text="cancelled").wait_for()
    shot(page, tmp_path, "cancel")


def test_rewind_takes_the_session_back_and_prefills_the_message(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "rewind me", ["write r1.txt: 1", "write r2.txt: 2"])
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.hover("#u1")
    page.click("#u1 .rewind-btn")
    page.click('#u1 .fork-form button[value="rewind"]')
    page.locator("li.divider", has_text="rewound here").wait_for()  # the page came back rewound
    assert page.locator("li.user:not(.sub-user) > .text").all_inner_texts() == ["write r1.txt: 1"]
    assert page.locator("#prompt-text").input_value() == "write r2.txt: 2"
    abandoned = page.locator("li.divider a").get_attribute("href")
    assert abandoned and abandoned.startswith("/sessions/")
    shot(page, tmp_path, "rewind")


def test_land_and_delete_from_the_page(site: Any, page: Any, tmp_path: Path) -> None:
    parent = new_session(site, "land then delete", ["write landed.txt: L"])
    fork = site["daemon"].ok({"kind": "fork", "session": parent, "user_message_index": 0})["session"]
    page.goto(f"{site['web'].url}/sessions/{parent}")
    page.fill('#land-form input[name="branch"]', "web-landed")
    page.click("#land-form button")
    page.locator(".toast.ok", has_text=re.compile(r"landed [0-9a-f]{7} on web-landed")).wait_for()
    assert git_text(site["repo"], "show", "web-landed:landed.txt") == "L"
    page.click("#delete-btn")
    page.locator("#state-badge", has_text="deleted").wait_for()
    assert page.locator("#prompt-form").count() == 0
    page.goto(f"{site['web'].url}/sessions/{fork}")
    banner = page.locator(".fork-banner")
    assert "land then delete" in banner.inner_text() and "(deleted)" in banner.inner_text()
    assert banner.locator("a.parent-link").count() == 0  # nothing to link to any more
    shot(page, tmp_path, "deleted-parent")


def test_the_state_badge_follows_a_delete_by_another_client_without_a_reload(site: Any, page: Any,
                                                                             tmp_path: Path) -> None:
    session = new_session(site, "deleted elsewhere", ["write elsewhere.txt: E"])
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.locator("#live:not([hidden])").wait_for()
    assert page.locator("#state-badge").inner_text() == "ready"
    page.evaluate("window.notReloaded = true")
    site["daemon"].ok({"kind": "delete", "session": session})  # the CLI's request, not the page's
    page.locator("#state-badge.deleted", has_text="deleted").wait_for()
    assert page.evaluate("window.notReloaded === true")  # the live stream said so, no reload
    assert page.locator("#prompt-form, #delete-btn, #land-form, #cancel-btn").count() == 0
    shot(page, tmp_path, "deleted-live")


def test_a_script_in_a_prompt_is_shown_not_run(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "hostile", ["write safe.txt: ok"])
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.locator("#live").wait_for()
    page.fill("#prompt-text", hostile)
    page.click("#prompt-form button")
    page.locator("#u1 ~ li.turn-end").wait_for()  # arrived live, through the event stream
    assert page.locator("#u1 > .text").inner_text() == hostile
    assert page.locator("#u1 ~ li.agent").first.inner_text().endswith(hostile)
    page.reload()  # and served with the page
    assert page.locator("#u1 > .text").inner_text() == hostile
    assert page.evaluate("window.pwned") is None
    assert page.locator("img").count() == 0
    shot(page, tmp_path, "hostile")


def test_a_long_session_comes_a_screenful_at_a_time_then_live(site: Any, page: Any, tmp_path: Path) -> None:
    prompts = [f"write f{n}.txt: {n}" for n in range(16)]  # five items a turn: two screenfuls
    session = new_session(site, "long one", prompts)
    page.goto(f"{site['web'].url}/sessions/{session}")
    users = page.locator("li.user:not(.sub-user) > .text")
    first = users.count()
    assert 0 < first < 16
    assert page.locator("#live").is_hidden()  # not following: the page is not at the end
    page.click("#more-btn")
    page.locator("#live").wait_for()
    assert users.all_inner_texts() == prompts
    assert page.locator("#more-btn").is_hidden()
    # the last checkpoint, on the second page, knows the one before it
    assert "A f15.txt" in page.locator("li.checkpoint").last.inner_text()
    site["daemon"].ok({"kind": "prompt", "session": session, "text": "write late.txt: L"})
    page.locator("#u16 ~ li.turn-end").wait_for()  # it arrived over the live stream
    assert users.last.inner_text() == "write late.txt: L"
    shot(page, tmp_path, "paged")


def test_fork_without_sending_puts_the_message_back_in_the_prompt_box(site: Any, page: Any, tmp_path: Path) -> None:
    parent = new_session(site, "two steps", ["write p1.txt: 1", "write p2.txt: 2"])
    page.goto(f"{site['web'].url}/sessions/{parent}")
    page.hover("#u1")
    page.click("#u1 .fork-btn")
    page.click('#u1 .fork-form button[value="fork"]')
    page.wait_for_url(re.compile(r"/sessions/(?!" + parent + r")[A-Za-z0-9]+$"))
    assert "two steps" in page.locator(".fork-banner").inner_text()
    assert page.locator("li.user:not(.sub-user) > .text").all_inner_texts() == ["write p1.txt: 1"]
    assert page.locator("#prompt-text").input_value() == "write p2.txt: 2"  # the prefill, ready to edit
    assert page.locator("li.divider", has_text="forked here").count() == 1
    shot(page, tmp_path, "fork-prefill")


def test_compare_tries_land_one_and_keep_it_deleting_the_others(site: Any, page: Any, tmp_path: Path) -> None:
    """SPEC 19: three tries from message 1, a check in each; the compare page sets them
    side by side, a diff is a click away, Land and Delete act per row, and "keep this
    one" deletes the others in one action."""
    session = new_session(site, "attempts", ["write plan.txt: one", "write plan.txt: two"])
    made = site["daemon"].ok({"kind": "fork", "session": session, "user_message_index": 1,
                              "prompts": ["write impl.txt: fast", "write impl.txt: slow\nwrite extra.txt: x",
                                          "write other.txt: none"],
                              "check": ["sh", "-c", "test -f impl.txt"]}, timeout=120)
    tries = [t["session"] for t in made["sessions"]]
    page.goto(site["web"].url + f"/sessions/{tries[0]}")
    page.click("a.compare-link")
    page.wait_for_url(re.compile(r"/compare\?siblings="))
    rows = page.locator("#compare tr.try")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-session") for i in range(3)] == tries
    assert page.locator("#compare .check-pass").count() == 2 and page.locator("#compare .check-fail").count() == 1
    assert "2 files" in rows.nth(1).locator("td.files").inner_text()
    shot(page, tmp_path, "compare")
    page.screenshot(path=str(tmp_path / "web-compare.png"), full_page=True)

    rows.nth(1).locator("a.diff-link").click()  # the diff, a click away
    page.wait_for_url(re.compile(r"/diff\?"))
    assert page.locator("section.file-diff").count() == 2 and "+slow" in page.locator("main").inner_text()
    page.go_back()

    row = page.locator(f'#compare tr[data-session="{tries[1]}"]')
    row.locator("input[name=branch]").fill("try/slow")
    row.locator(".land-form button").click()
    page.locator(".toast.ok", has_text="landed").wait_for()
    landed = git_text(site["repo"], "show", "try/slow:impl.txt")
    assert landed == "slow"

    row.locator(".keep-btn").click()
    for other in (tries[0], tries[2]):
        page.locator(f'#compare tr[data-session="{other}"][data-state="deleted"]').wait_for()
    assert row.get_attribute("data-state") == "ready"
    status, _headers, body = site["web"].http("GET", f"/api/compare?siblings={tries[1]}")
    assert status == 200 and [s["session"] for s in orjson.loads(body)["sessions"]] == [tries[1]]


# -- what a first hour in the browser found -------------------------------------------------------

def test_the_diff_page_lines_are_one_line_high_with_the_files_on_top(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "long diff", ["write d.txt: one\nappend d.txt: two\nappend d.txt: three\n"
                                              "write e.txt: other"])
    site["daemon"].ok({"kind": "prompt", "session": session, "text": "write d.txt: ONE\nappend d.txt: two\n"
                                                                          "append d.txt: 3\ndelete e.txt"})
    page.goto(f"{site['web'].url}/sessions/{session}")
    page.locator("li.checkpoint", has_text="after turn 2").locator("a.diff-link").click()
    page.wait_for_url(re.compile(r"/diff\?"))
    # the list of files first, each a link to its diff
    assert page.locator("#file-list a").all_inner_texts() == ["M d.txt", "D e.txt"]
    assert page.evaluate("document.querySelector('#file-list').getBoundingClientRect().bottom"
                         " <= document.querySelector('.file-diff').getBoundingClientRect().top")
    # each line of the diff is one line of text high: no empty line after it
    heights = page.evaluate("""() => {
        const pre = document.querySelector('pre.diff');
        const line = parseFloat(getComputedStyle(pre).lineHeight);
        const spans = [...pre.querySelectorAll('span')].map(s => s.getBoundingClientRect().height);
        const style = getComputedStyle(pre);
        const inner = pre.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
        return {line, spans, inner};
    }""")
    assert heights["spans"] and all(abs(h - heights["line"]) < 1 for h in heights["spans"]), heights
    assert abs(heights["inner"] - heights["line"] * len(heights["spans"])) < 2, heights
    assert page.locator("pre.diff .add").first.inner_text() == "+ONE"
    assert "\n-one\n+ONE\n" in page.evaluate("document.querySelector('pre.diff').innerText")  # copied as lines
    shot(page, tmp_path, "diff-files")
    page.click("a.view-switch")
    page.wait_for_url(re.compile(r"view=split"))
    changed = page.locator("table.diff-split tr.change").first
    assert changed.locator("td.del").inner_text() == "one" and changed.locator("td.add").inner_text() == "ONE"
    shot(page, tmp_path, "diff-split")


def test_the_lineage_tells_a_rewind_from_a_fork(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "rewound", ["write a.txt: 1", "write b.txt: 2", "write c.txt: 3"])
    fork = site["daemon"].ok({"kind": "fork", "session": session, "user_message_index": 2})["session"]
    rewind = site["daemon"].ok({"kind": "rewind", "session": session, "user_message_index": 1,
                                "prompt": "write b.txt: another 2"})
    for text in ("write x.txt: 3", "write y.txt: 4", "write z.txt: 5"):
        site["daemon"].ok({"kind": "prompt", "session": session, "text": text})
    abandoned = rewind["abandoned"]
    page.goto(f"{site['web'].url}/sessions/{session}/lineage")
    left = page.locator(f'.branch:has(> #node-{abandoned})')
    assert left.locator("> .branch-label").inner_text() == "left behind by a rewind to message 1"
    assert left.get_attribute("data-at") == "1"
    # it hangs at message 1 of the rewound session, not at the end of its copy of the log
    assert page.locator(f'#node-{session} > ol > li[data-ordinal="1"] > .branch > #node-{abandoned}').count() == 1
    forked = page.locator(f'.branch:has(> #node-{fork})')
    assert forked.locator("> .branch-label").inner_text() == "fork at message 2"
    shot(page, tmp_path, "lineage-rewind")
    status, _headers, tree = site["web"].http("GET", f"/api/tree?session={session}")
    assert status == 200 and b'"rewound_at":1' in tree.replace(b" ", b"")
    page.goto(f"{site['web'].url}/sessions/{abandoned}")
    banner = page.locator(".rewind-banner")
    assert "Left behind by a rewind of" in banner.inner_text() and "to message 1" in banner.inner_text()
    assert page.locator(".fork-banner").count() == 0


def contrast(page: Any, selector: str) -> dict[str, float]:
    """The WCAG contrast of an element's text against the background it is drawn on, and
    the opacity it is drawn with (its own and its ancestors')."""
    return page.evaluate("""(selector) => {
        const el = document.querySelector(selector);
        const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
        const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                     return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        let back = null, opacity = 1;
        for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
            const style = getComputedStyle(n);
            opacity *= parseFloat(style.opacity);
            const bg = rgb(style.backgroundColor);
            if (!back && (bg.length < 4 || bg[3] > 0)) back = bg.slice(0, 3);
        }
        const fg = lum(rgb(getComputedStyle(el).color)), bg = lum(back || [255, 255, 255]);
        return {ratio: (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05), opacity};
    }""", selector)


def test_buttons_look_enabled_and_cancel_shows_only_while_running(browser: Any, site: Any, tmp_path: Path) -> None:
    session = new_session(site, "buttons", ["write a.txt: a"])
    # a touch screen: nothing hovers
    context = browser.new_context(viewport={"width": 400, "height": 800}, has_touch=True, is_mobile=True)
    try:
        touch = context.new_page()
        touch.goto(site["web"].entry)
        touch.goto(f"{site['web'].url}/sessions/{session}")
        for selector in ("#u0 .fork-btn", "#u0 .rewind-btn"):
            seen = contrast(touch, selector)
            assert seen["opacity"] == 1 and seen["ratio"] >= 4.5, (selector, seen)
        assert touch.locator("#cancel-btn").is_hidden()  # nothing to cancel
        touch.locator("#live").wait_for()
        touch.fill("#prompt-text", "sleep: 60")
        touch.click("#prompt-form button")
        touch.locator("#running").wait_for()
        touch.locator("#cancel-btn").wait_for(state="visible")
        touch.click("#cancel-btn")
        touch.locator("#u1 ~ li.turn-end .stop", has_text="cancelled").wait_for()
        touch.locator("#cancel-btn").wait_for(state="hidden")
        shot(touch, tmp_path, "touch")
    finally:
        context.close()


def test_a_crashed_turn_shows_why(site: Any, page: Any, tmp_path: Path) -> None:
    session = new_session(site, "crashes", ["write a.txt: a"])
    failed = site["daemon"].request({"kind": "prompt", "session": session, "text": "crash"})
    assert failed["error"]["code"] == "agent_failed"
    page.goto(f"{site['web'].url}/sessions/{session}")
    end = page.locator("#u1 ~ li.turn-end")
    assert end.locator(".stop").inner_text() == "agent_exited"
    why = end.locator("pre.failure").inner_text()
    assert why and why in failed["error"]["message"]

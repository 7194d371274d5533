// cairnd web view: actions as spool requests, pages a screenful at a time, live
// frames over server-sent events. Text from logs is only ever set as text
// (textContent); HTML comes from the server's escaping templates.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;

function toast(text, kind) {
  const box = document.getElementById("toasts");
  const el = document.createElement("div");
  el.className = "toast " + (kind || "info");
  el.textContent = text;
  box.appendChild(el);
  if (kind !== "error") setTimeout(() => el.remove(), 8000);
  else el.addEventListener("click", () => el.remove());
  return el;
}

// Submit a request to the spool and wait for its result; shows progress, then the
// result or its error code and message. Resolves to the result file's object.
async function act(request, label) {
  const note = toast(label + ": queued", "info");
  note.classList.add("pending");
  let answer;
  try {
    const sent = await fetch("/api/requests", {
      method: "POST", headers: {"content-type": "application/json", "x-csrf-token": csrf},
      body: JSON.stringify(request), credentials: "same-origin",
    });
    answer = await sent.json();
    if (!sent.ok) {
      note.remove();
      const err = answer.error || {code: String(sent.status), message: sent.statusText};
      toast(label + " failed: " + err.code + ": " + err.message, "error");
      return answer;
    }
    const id = answer.id;
    for (;;) {
      const polled = await fetch("/api/requests/" + encodeURIComponent(id) + "?wait=3", {credentials: "same-origin"});
      answer = await polled.json();
      if (polled.status === 200) break;
      note.textContent = label + ": " + answer.status;
    }
  } catch (e) {
    note.remove();
    toast(label + " failed: " + e, "error");
    return null;
  }
  note.remove();
  if (answer.status === "ok") {
    toast(label + ": done", "ok");
  } else {
    const err = answer.error || {};
    toast(label + " failed: " + err.code + ": " + err.message, "error");
  }
  document.dispatchEvent(new CustomEvent("cairnd:result", {detail: answer}));
  return answer;
}

// ------------------------------------------------------------------ the conversation

function applyOps(ops) {
  const list = document.getElementById("conversation");
  for (const op of ops) {
    if (op.op === "add") {
      const existing = document.getElementById(op.key);
      if (existing) continue;
      let container = list;
      if (op.parent) {
        const group = document.getElementById(op.parent);
        if (group) container = group.querySelector(".sub-body") || list;
      }
      container.insertAdjacentHTML("beforeend", op.html);
      const added = document.getElementById(op.key);
      const turns = added && added.dataset.turns;
      if (turns && /^[0-9]+$/.test(turns) && document.getElementById("turns")) {
        document.getElementById("turns").textContent = turns + (turns === "1" ? " turn" : " turns");
      }
    } else if (op.op === "extend") {
      const el = document.getElementById(op.key);
      const text = el && el.querySelector(".text");
      if (text) text.appendChild(document.createTextNode(op.text));
    } else if (op.op === "patch") {
      const el = document.getElementById(op.key);
      if (!el) continue;
      if (op.status) {
        el.dataset.status = op.status;
        const badge = el.querySelector(".tool-status");
        badge.textContent = op.status;
        badge.className = "tool-status status-" + op.status;
      }
      if (op.title) el.querySelector(".tool-title").textContent = op.title;
      if (op.output) el.querySelector(".tool-output").textContent = op.output;
    }
  }
}

function setState(state) {
  // The registry's state changed (another client deleted the session): the badge
  // follows, and what only a ready session can do goes.
  const head = document.getElementById("session");
  const badge = document.getElementById("state-badge");
  if (!head || !badge || head.dataset.state === state) return;
  head.dataset.state = state;
  badge.textContent = state;
  badge.className = "badge " + state;
  if (state !== "ready") {
    for (const id of ["cancel-btn", "land-form", "delete-btn", "prompt-form"]) {
      const el = document.getElementById(id);
      if (el) el.remove();
    }
    setRunning(false);
  }
}

function setRunning(running) {
  const badge = document.getElementById("running");
  if (badge) badge.hidden = !running;
  const cancel = document.getElementById("cancel-btn");  // only a running turn can be cancelled
  if (cancel) cancel.hidden = !running;
}

let events = null;
let replacing = false;  // an action of this page is replacing the log: it navigates itself

function followLive(head) {
  if (events) events.close();
  const url = "/sessions/" + encodeURIComponent(head.dataset.session) + "/events?cursor=" +
    encodeURIComponent(head.dataset.cursor) + "&inode=" + encodeURIComponent(head.dataset.inode) +
    "&state=" + encodeURIComponent(head.dataset.state);
  events = new EventSource(url);
  document.getElementById("live").hidden = false;
  events.addEventListener("ops", (e) => {
    applyOps(JSON.parse(e.data).ops);
    // a reconnect must not replay: it would start from the page's cursor again
  });
  events.addEventListener("running", (e) => setRunning(JSON.parse(e.data).value));
  events.addEventListener("state", (e) => setState(JSON.parse(e.data).value));
  events.addEventListener("replaced", () => { events.close(); if (!replacing) location.reload(); });
  events.addEventListener("error", () => {
    // The server ends the stream only when the log is replaced; any other drop is
    // followed again from the page's cursor by reloading the page.
    if (events.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 2000);
  });
}

async function showMore(head) {
  const button = document.getElementById("more-btn");
  button.disabled = true;
  const url = "/sessions/" + encodeURIComponent(head.dataset.session) + "/more?cursor=" + encodeURIComponent(head.dataset.cursor);
  const response = await fetch(url, {credentials: "same-origin"});
  const page = await response.json();
  button.disabled = false;
  if (!response.ok) { toast("show more failed: " + page.error.code + ": " + page.error.message, "error"); return; }
  document.getElementById("conversation").insertAdjacentHTML("beforeend", page.html);
  applyOps(page.ops);
  head.dataset.cursor = page.cursor;
  head.dataset.inode = page.inode === null ? "" : String(page.inode);
  if (page.at_end) {
    button.hidden = true;
    setRunning(page.running);
    followLive(head);
  }
}

// ------------------------------------------------------------------ actions

function openEditor(li, session) {
  let form = li.querySelector(".fork-form");
  if (form) { form.querySelector("textarea").focus(); return; }
  form = document.getElementById("fork-editor").content.firstElementChild.cloneNode(true);
  const ordinal = Number(li.dataset.ordinal);
  const area = form.querySelector("textarea");
  area.value = li.querySelector(".text").textContent;
  li.appendChild(form);
  area.focus();
  form.querySelector(".close").addEventListener("click", () => form.remove());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const action = e.submitter ? e.submitter.value : "fork";
    const kind = action.startsWith("fork") ? "fork" : "rewind";
    const request = {kind, session, user_message_index: ordinal};
    if (action.endsWith("-send")) request.prompt = area.value;
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    // A rewind replaces this page's log: the live stream must not reload the page
    // before the result says where to go; the message goes back in the prompt box
    // of the session the result names.
    if (kind === "rewind") replacing = true;
    const prefill = action.endsWith("-send") ? null : area.value;
    if (prefill !== null && kind === "rewind") sessionStorage.setItem("cairnd-prefill:" + session, prefill);
    const result = await act(request, kind + " at message " + ordinal);
    form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    if (!result || result.status !== "ok") {
      replacing = false;
      sessionStorage.removeItem("cairnd-prefill:" + session);
      return;
    }
    const target = result.result.session;
    if (prefill !== null) sessionStorage.setItem("cairnd-prefill:" + target, prefill);
    location.href = "/sessions/" + encodeURIComponent(target);
  });
}

function sessionPage(head) {
  const session = head.dataset.session;
  const prefill = sessionStorage.getItem("cairnd-prefill:" + session);
  const promptText = document.getElementById("prompt-text");
  if (prefill !== null && promptText) {
    promptText.value = prefill;
    sessionStorage.removeItem("cairnd-prefill:" + session);
  }
  document.getElementById("conversation").addEventListener("click", (e) => {
    const button = e.target.closest(".fork-btn, .rewind-btn");
    if (!button) return;
    openEditor(button.closest("li.user"), session);
  });
  const promptForm = document.getElementById("prompt-form");
  if (promptForm) promptForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = promptText.value;
    if (!text.trim()) return;
    promptText.value = "";
    const result = await act({kind: "prompt", session, text}, "prompt");
    if (result && result.status !== "ok") promptText.value = text;
  });
  const cancel = document.getElementById("cancel-btn");
  if (cancel) cancel.addEventListener("click", () => act({kind: "cancel", session}, "cancel"));
  const del = document.getElementById("delete-btn");
  if (del) del.addEventListener("click", async () => {
    if (!confirm("Delete this session? Its worktree, refs and agent go; its log and lineage stay.")) return;
    const result = await act({kind: "delete", session}, "delete");
    if (result && result.status === "ok") location.reload();
  });
  const land = document.getElementById("land-form");
  if (land) land.addEventListener("submit", async (e) => {
    e.preventDefault();
    const branch = land.elements.branch.value.trim();
    const result = await act({kind: "land", session, branch}, "land on " + branch);
    if (result && result.status === "ok") {
      toast("landed " + result.result.commit.slice(0, 7) + " on " + result.result.branch, "ok");
    }
  });
  document.getElementById("more-btn").addEventListener("click", () => showMore(head));
  if (head.dataset.atEnd === "true") followLive(head);
}

// ------------------------------------------------------------------ compare (tries side by side)

function markDeleted(row) {
  row.dataset.state = "deleted";
  row.classList.add("state-deleted");
  const badge = row.querySelector(".badge");
  badge.className = "badge deleted";
  badge.textContent = "deleted";
  row.querySelector(".row-actions").textContent = "";
}

function comparePage(table) {
  table.addEventListener("submit", async (e) => {
    const form = e.target.closest(".land-form");
    if (!form) return;
    e.preventDefault();
    const session = form.closest("tr").dataset.session;
    const branch = form.elements.branch.value.trim();
    const result = await act({kind: "land", session, branch}, "land on " + branch);
    if (result && result.status === "ok") {
      toast("landed " + result.result.commit.slice(0, 7) + " on " + result.result.branch, "ok");
    }
  });
  table.addEventListener("click", async (e) => {
    const row = e.target.closest("tr.try");
    if (!row) return;
    if (e.target.closest(".delete-btn")) {
      if (!confirm("Delete this try? Its worktree, refs and agent go; its log and lineage stay.")) return;
      const result = await act({kind: "delete", session: row.dataset.session}, "delete");
      if (result && result.status === "ok") markDeleted(row);
    } else if (e.target.closest(".keep-btn")) {
      const others = [...table.querySelectorAll("tr.try")].filter((r) => r !== row && r.dataset.state === "ready");
      if (!others.length) { toast("no other try to delete", "info"); return; }
      if (!confirm("Keep this try and delete the " + others.length + " other(s)?")) return;
      const results = await Promise.all(others.map((r) => act({kind: "delete", session: r.dataset.session}, "delete")));
      results.forEach((result, i) => { if (result && result.status === "ok") markDeleted(others[i]); });
      row.classList.add("kept");
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const head = document.getElementById("session");
  if (head) sessionPage(head);
  const compare = document.getElementById("compare");
  if (compare) comparePage(compare);
});

// agentexec console: live counts on the list, live state/progress/events on an execution page,
// and control buttons that confirm and post without a reload. No inline code (strict CSP).
"use strict";

const FINISHED = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);

function setState(page, state) {
  const badge = document.getElementById("state");
  badge.textContent = state;
  badge.className = "state state-" + state;
  page.dataset.state = state;
  document.querySelectorAll("form.action").forEach((form) => {
    form.hidden = !form.dataset.states.split(" ").includes(state);
  });
  if (state !== "REQUIRES_ACTION") document.getElementById("required-action").hidden = true;
  if (FINISHED.has(state)) {
    document.getElementById("why").textContent = "Finished: " + state + ".";
  }
}

// The agent asks for tool outputs: one field per call in the page's form (built here when the
// page was opened before the request), as the server renders it.
function showToolCalls(action) {
  const box = document.getElementById("tool-calls");
  box.replaceChildren();
  (action.tool_calls || []).forEach((call) => {
    const row = document.createElement("p");
    const label = document.createElement("label");
    label.htmlFor = "output-" + call.id;
    const name = document.createElement("span");
    name.className = "mono";
    name.textContent = call.name + "(" + JSON.stringify(call.arguments || {}) + ")";
    const id = document.createElement("span");
    id.className = "muted mono";
    id.textContent = " " + call.id;
    label.append(name, id);
    const field = document.createElement("textarea");
    field.id = field.name = "output-" + call.id;
    field.rows = 3;
    field.cols = 60;
    field.maxLength = 65536;
    field.required = true;
    row.append(label, document.createElement("br"), field);
    box.appendChild(row);
  });
  const until = action.expires_at ? "Until " + action.expires_at + ". " : "";
  document.getElementById("action-expires").textContent = until + "Answer each call; the agent goes on with the outputs.";
  document.getElementById("why").textContent =
    "Waiting for the outputs of " + (action.tool_calls || []).length + " tool call(s), holding no worker: answer them below.";
  document.getElementById("required-action").hidden = false;
}

function setProgress(percentage, message) {
  const pct = Math.round(Number(percentage) || 0);
  document.getElementById("progress").value = pct;
  document.getElementById("progress").textContent = pct + "%";
  document.getElementById("progress-pct").textContent = pct + "%";
  if (message) document.getElementById("progress-message").textContent = message;
}

function addEvent(message) {
  const list = document.getElementById("events");
  const item = document.createElement("li");
  const p = message.payload || {};
  const detail = [p.new_state || p.state || "", p.percentage != null ? Math.round(p.percentage) + "%" : "", p.message || ""];
  item.textContent = "#" + message.id + " " + message.type.split(".").pop() + " " + detail.join(" ").trim();
  list.appendChild(item);
}

function outputBlock(box, step) {
  let block = Array.from(box.children).find((b) => b.dataset.step === step);
  if (!block) {
    block = document.createElement("div");
    block.className = "output-step";
    block.dataset.step = step;
    if (step) {
      const title = document.createElement("h3");
      title.textContent = step;
      block.appendChild(title);
    }
    const pre = document.createElement("pre");
    pre.className = "result";
    pre.tabIndex = 0;
    block.appendChild(pre);
    box.appendChild(block);
  }
  return block.querySelector("pre");
}

// One output delta: its text goes under its step; `reset` (a later attempt) drops the text the
// page holds for that step (all of it for a standard task), as docs/api.md says.
function addDelta(p) {
  const box = document.getElementById("output");
  const step = p.step || "";
  if (p.reset) {
    Array.from(box.children).forEach((b) => { if (!step || b.dataset.step === step) b.remove(); });
  }
  const pre = outputBlock(box, step);
  pre.textContent += p.delta || "";
  pre.scrollTop = pre.scrollHeight;
  document.getElementById("output-note").textContent = "As the model writes it, live.";
}

function showOutcome(p) {
  const box = document.getElementById("outcome");
  box.replaceChildren();
  if (p.error_code || p.error_message) {
    const err = document.createElement("p");
    err.className = "error";
    err.textContent = [p.error_code, p.error_message].filter(Boolean).join(" ");
    box.appendChild(err);
  }
  if (p.result != null) {
    const pre = document.createElement("pre");
    pre.className = "result";
    pre.textContent = JSON.stringify(p.result, null, 2);
    box.appendChild(pre);
  }
}

function streamState(page, state) {
  page.dataset.stateEvents = String(Number(page.dataset.stateEvents || 0) + 1);
  setState(page, state);
}

function follow(page) {
  let stream = null;
  const open = () => {
    if (stream) stream.close();
    const url = page.dataset.eventsUrl + "?after=" + encodeURIComponent(page.dataset.lastEventId || "0");
    stream = new EventSource(url);
    const live = document.getElementById("live");
    stream.onopen = () => { live.textContent = "live"; };
    stream.onerror = () => { live.textContent = FINISHED.has(page.dataset.state) ? "" : "reconnecting…"; };
    const handle = (kind) => (ev) => {
      const message = JSON.parse(ev.data);
      page.dataset.lastEventId = String(message.id);
      addEvent(message);
      const p = message.payload || {};
      if (kind === "state" && p.new_state) streamState(page, p.new_state);
      if (kind === "progress") setProgress(p.percentage, p.message);
      if (kind === "completed") {
        if (p.state) streamState(page, p.state);
        if (p.state === "COMPLETED") setProgress(100, null);
        showOutcome(p);
        stream.close();
        live.textContent = "";
      }
    };
    stream.addEventListener("agent.execution.state_changed", handle("state"));
    stream.addEventListener("agent.execution.progress", handle("progress"));
    stream.addEventListener("agent.execution.completed", handle("completed"));
    stream.addEventListener("agent.execution.requires_action", (ev) => {
      const message = JSON.parse(ev.data);
      page.dataset.lastEventId = String(message.id);
      addEvent(message);
      if ((message.payload || {}).required_action) showToolCalls(message.payload.required_action);
    });
    stream.addEventListener("agent.execution.output.delta", (ev) => {
      const message = JSON.parse(ev.data);
      page.dataset.lastEventId = String(message.id);
      addDelta(message.payload || {});
    });
    stream.addEventListener("reconnect", () => { stream.close(); setTimeout(open, 1000); });
  };
  if (!FINISHED.has(page.dataset.state)) open();
  return open;
}

// Posts a confirmed form in the background and shows the state it answers, without a reload.
function wireActions(page, reopen) {
  const forms = Array.from(document.querySelectorAll("form.action"));
  const outputs = document.getElementById("tool-outputs");
  if (outputs) forms.push(outputs);
  forms.forEach((form) => {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = form.dataset.action;
      const question = name
        ? name.charAt(0).toUpperCase() + name.slice(1) + " this execution?"
        : "Send these outputs of " + form.querySelectorAll("textarea").length + " tool call(s)? The agent goes on with them.";
      if (!window.confirm(question)) return;
      const live = document.getElementById("live");
      const seen = page.dataset.stateEvents || "0";
      const resp = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) { live.textContent = body.error || "refused (" + resp.status + ")"; return; }
      if (form === outputs) document.getElementById("required-action").hidden = true;
      const wasFinished = FINISHED.has(page.dataset.state);
      // The stream may have shown a newer state while the answer travelled: keep the newer one.
      if ((page.dataset.stateEvents || "0") === seen) setState(page, body.state);
      if (body.attempt != null) document.getElementById("attempt").textContent = body.attempt;
      if (wasFinished && !FINISHED.has(body.state)) reopen();
    });
  });
}

function refreshCounts(list) {
  fetch(list.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : null))
    .then((counts) => {
      if (!counts) return;
      list.querySelectorAll(".count").forEach((el) => {
        if (el.dataset.state in counts) el.textContent = counts[el.dataset.state];
      });
    })
    .catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.getElementById("execution");
  if (page) wireActions(page, follow(page));
  const counts = document.getElementById("counts");
  if (counts) setInterval(() => refreshCounts(counts), 5000);
});

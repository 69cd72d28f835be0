// Chorus's web UI: one page, no build step. It talks to the gateway's OpenAI-compatible
// endpoint (server-sent events) and draws the `chorus.event` each workflow chunk carries.
// Everything shown is set as text or as an attribute, never parsed as HTML.
"use strict";

const conversation = document.getElementById("conversation");
const composer = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const picker = document.getElementById("files");
const attachmentsView = document.getElementById("attachments");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const assistantTemplate = document.getElementById("turn-assistant");

const history = [];  // {role, content} of earlier turns, sent with each request
let attached = [];   // File objects waiting for the next Send
let current = null;  // the request in flight: {requestId, view}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fileChip(file, removable) {
  const chip = el("span", "chip");
  if (file.type.startsWith("image/")) {
    const img = el("img");
    img.src = URL.createObjectURL(file);
    img.alt = "";
    chip.append(img);
  }
  chip.append(document.createTextNode(file.name));
  if (removable) {
    const remove = el("button", "", "\u00d7");
    remove.type = "button";
    remove.title = "Remove";
    remove.addEventListener("click", () => { attached = attached.filter((f) => f !== file); showAttached(); });
    chip.append(remove);
  }
  return chip;
}

function showAttached() {
  attachmentsView.replaceChildren(...attached.map((f) => fileChip(f, true)));
}

function attach(files) {
  attached = attached.concat(Array.from(files));
  showAttached();
}

picker.addEventListener("change", () => { attach(picker.files); picker.value = ""; });
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (e) => { e.preventDefault(); composer.classList.add("dragging"); });
}
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) composer.classList.remove("dragging"); });
document.addEventListener("drop", (e) => {
  e.preventDefault();
  composer.classList.remove("dragging");
  if (e.dataTransfer && e.dataTransfer.files.length) attach(e.dataTransfer.files);
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); composer.requestSubmit(); }
});

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function contentParts(text, files) {
  const parts = [{ type: "text", text }];
  for (const file of files) {
    const url = await dataUrl(file);
    if (file.type.startsWith("image/")) parts.push({ type: "image_url", image_url: { url } });
    else parts.push({ type: "file", file: { filename: file.name, file_data: url } });
  }
  return parts;
}

// The plan as a graph: a column per depth, an edge from each dependency.
class WorkflowView {
  constructor(root) {
    this.root = root;
    this.box = root.querySelector(".workflow");
    this.state = root.querySelector(".state");
    this.levels = root.querySelector(".levels");
    this.svg = root.querySelector(".edges");
    this.tasks = new Map();
    this.deps = new Map();
  }

  plan(plan) {
    const tasks = plan.tasks || [];
    this.box.hidden = false;
    this.state.textContent = tasks.length ? `${tasks.length} task(s)` : "no tasks: answering directly";
    const depth = new Map();
    const depthOf = (t) => {
      if (!depth.has(t.id)) {
        depth.set(t.id, 0);
        const parents = (t.deps || []).map((d) => tasks.find((x) => x.id === d)).filter(Boolean);
        depth.set(t.id, parents.length ? 1 + Math.max(...parents.map(depthOf)) : 0);
      }
      return depth.get(t.id);
    };
    const columns = [];
    for (const t of tasks) (columns[depthOf(t)] ||= []).push(t);
    this.levels.replaceChildren(...columns.filter(Boolean).map((column) => {
      const level = el("div", "level");
      for (const t of column) level.append(this.node(t));
      return level;
    }));
    requestAnimationFrame(() => this.drawEdges());
  }

  node(t) {
    const node = el("div", "task");
    node.dataset.id = String(t.id);
    node.dataset.status = "pending";
    node.append(el("div", "name", `#${t.id} ${t.task}`));
    const needs = (t.deps || []).filter((d) => d >= 0);
    if (needs.length) node.append(el("div", "needs", `after ${needs.map((d) => "#" + d).join(", ")}`));
    for (const part of ["model", "status", "reason", "time"]) node.append(el("div", part));
    node.querySelector(".status").textContent = "waiting";
    this.tasks.set(t.id, node);
    this.deps.set(t.id, needs);
    return node;
  }

  drawEdges() {
    const origin = this.levels.getBoundingClientRect();
    const lines = [];
    for (const [id, needs] of this.deps) {
      const to = this.tasks.get(id).getBoundingClientRect();
      for (const d of needs) {
        const from = this.tasks.get(d);
        if (!from) continue;
        const f = from.getBoundingClientRect();
        const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
        line.setAttribute("x1", String(f.right - origin.left));
        line.setAttribute("y1", String(f.top + f.height / 2 - origin.top));
        line.setAttribute("x2", String(to.left - origin.left));
        line.setAttribute("y2", String(to.top + to.height / 2 - origin.top));
        lines.push(line);
      }
    }
    this.svg.replaceChildren(...lines);
  }

  update(id, status, fields) {
    const node = this.tasks.get(id);
    if (!node) return;
    node.dataset.status = status;
    node.querySelector(".status").textContent = status;
    for (const [part, text] of Object.entries(fields)) {
      if (text) node.querySelector("." + part).textContent = text;
    }
  }

  started(s) {
    this.update(s.task_id, "running", { model: s.model, reason: s.selection_reason });
  }

  finished(r) {
    const status = (r.status || "TASK_STATUS_UNSPECIFIED").replace("TASK_STATUS_", "").toLowerCase();
    const time = r.seconds ? `${Number(r.seconds).toFixed(1)} s` : "";
    this.update(r.task_id, status, { model: r.model, reason: r.error || r.selection_reason, time });
  }

  stopAll(status) {
    for (const node of this.tasks.values()) {
      if (["pending", "running"].includes(node.dataset.status)) {
        node.dataset.status = status;
        node.querySelector(".status").textContent = status;
      }
    }
  }
}

// The answer: text, with the links to files this gateway serves shown as the files themselves.
const FILE_LINK = /(!?)\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)/g;

function renderAnswer(target, text, artifacts) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(FILE_LINK)) {
    const [whole, bang, label, url] = match;
    const file = fileOf(url, artifacts);
    if (!file && !bang) continue;  // an ordinary link stays as text
    nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(file ? mediaFor(file, label.replace(/\\(.)/g, "$1")) : document.createTextNode(whole));
    last = match.index + whole.length;
  }
  nodes.push(document.createTextNode(text.slice(last)));
  target.replaceChildren(...nodes);
}

function fileOf(url, artifacts) {
  let parsed;
  try { parsed = new URL(url, location.href); } catch { return null; }
  const match = parsed.pathname.match(/^\/v1\/files\/([\w.-]+)\/content$/);
  if (!match || parsed.origin !== location.origin) return null;  // only this gateway's files
  const known = artifacts.get(match[1]);
  return { url: parsed.pathname, media_type: known ? known.media_type : "image/*" };
}

function mediaFor(file, name) {
  const kind = file.media_type.split("/")[0];
  let node;
  if (kind === "image") { node = el("img"); node.alt = name; }
  else if (kind === "audio" || kind === "video") { node = el(kind); node.controls = true; }
  else { node = el("a", "", name); node.href = file.url; node.download = name; return node; }
  node.src = file.url;
  node.title = name;
  return node;
}

function showTurnUser(text, files) {
  const turn = el("section", "turn user");
  turn.append(el("div", "text", text));
  if (files.length) {
    const chips = el("div", "chips");
    chips.append(...files.map((f) => fileChip(f, false)));
    turn.append(chips);
  }
  conversation.append(turn);
}

function showTurnAssistant() {
  const root = assistantTemplate.content.firstElementChild.cloneNode(true);
  conversation.append(root);
  return {
    root,
    workflow: new WorkflowView(root),
    answer: root.querySelector(".answer"),
    error: root.querySelector(".error"),
    text: "",
    artifacts: new Map(),
  };
}

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && data !== "[DONE]") yield JSON.parse(data);
    }
  }
}

function onChunk(view, chunk) {
  if (chunk.error) throw new Error(chunk.error.message);
  const extra = chunk.chorus || {};
  if (extra.request_id && current) current.requestId = extra.request_id;
  for (const a of extra.artifacts || []) view.artifacts.set(a.id, a);
  const event = extra.event || {};
  if (event.plan_ready) view.workflow.plan(event.plan_ready);
  if (event.task_started) view.workflow.started(event.task_started);
  if (event.task_finished) view.workflow.finished(event.task_finished);
  const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
  if (delta.content) view.text += delta.content;
  if (delta.content || extra.artifacts) renderAnswer(view.answer, view.text, view.artifacts);
}

async function send(text, files) {
  const parts = await contentParts(text, files);
  const messages = history.concat([{ role: "user", content: parts }]);
  const view = showTurnAssistant();
  current = { requestId: null, view };
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "chorus", messages, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    }
    for await (const chunk of serverSentEvents(response)) onChunk(view, chunk);
    view.workflow.state.textContent += " \u2014 done";
    history.push({ role: "user", content: [text, ...files.map((f) => f.name)].join(" ") });
    history.push({ role: "assistant", content: view.text });
  } catch (error) {
    const cancelled = /cancel/i.test(error.message);
    view.workflow.stopAll(cancelled ? "cancelled" : "failed");
    view.root.dataset.outcome = cancelled ? "cancelled" : "failed";
    view.error.hidden = false;
    view.error.textContent = cancelled ? "Cancelled." : `Error: ${error.message}`;
  } finally {
    current = null;
    setBusy(false);
    view.root.scrollIntoView({ block: "end" });
  }
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
}

composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text || current) return;
  const files = attached;
  attached = [];
  showAttached();
  prompt.value = "";
  showTurnUser(text, files);
  send(text, files);
});

stopButton.addEventListener("click", async () => {
  if (!current || !current.requestId) return;
  stopButton.disabled = true;
  try {
    await fetch(`/v1/requests/${encodeURIComponent(current.requestId)}/cancel`, { method: "POST" });
  } finally {
    stopButton.disabled = false;
  }
});

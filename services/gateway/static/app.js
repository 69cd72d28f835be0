// Chorus's web UI: one page, no build step. It talks to the gateway's OpenAI-compatible
// endpoint (server-sent events) and draws the `chorus.event` each workflow chunk carries.
// Everything shown is set as text or as an attribute, never parsed as HTML.
// With API keys on, the gateway answers 401 until the page sends one: the page then asks for
// it, keeps it in this tab's sessionStorage (never in a URL, never logged) and sends it as
// `Authorization: Bearer` on every call, files included (fetched, shown from object URLs).
"use strict";

const conversation = document.getElementById("conversation");
const composer = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const picker = document.getElementById("files");
const attachmentsView = document.getElementById("attachments");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const assistantTemplate = document.getElementById("turn-assistant");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const keyPrompt = document.getElementById("key-prompt");
const keyError = document.getElementById("key-error");
const forgetKey = document.getElementById("forget-key");
const KEY_SLOT = "chorus.apiKey";

const history = [];  // {role, content} of earlier turns, sent with each request
let attached = [];   // File objects waiting for the next Send
let current = null;  // the request in flight: {requestId, view}

// The API key. `api` is the page's one way to call the gateway: it sends the key, and on a 401
// asks for one (saying why) and calls again with it.
let keyWanted = null;  // while the form is shown: {resolve} of the callers waiting for a key

function bearer(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_SLOT);
    const headers = { ...(options.headers || {}), ...bearer(key) };
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (key) sessionStorage.removeItem(KEY_SLOT);  // revoked or expired since it was given
    await askForKey(await errorMessage(response), Boolean(key));
  }
}

async function errorMessage(response) {
  const body = await response.json().catch(() => ({}));
  return (body.error && body.error.message) || `HTTP ${response.status}`;
}

function askForKey(reason, hadKey) {
  if (!keyWanted) {
    keyWanted = [];
    keyPrompt.textContent = hadKey
      ? "The API key was refused; enter another."
      : "This Chorus needs an API key.";
    showKeyError(hadKey ? reason : "");
    forgetKey.hidden = true;
    keyForm.hidden = false;
    keyInput.focus();
  }
  return new Promise((resolve) => keyWanted.push(resolve));
}

function showKeyError(message) {
  keyError.hidden = !message;
  keyError.textContent = message ? `Refused: ${message}` : "";
}

keyForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  keyForm.querySelector("button").disabled = true;
  try {
    // Tried before it is kept, so a wrong key is refused here with the gateway's reason.
    const response = await fetch("/v1/models", { headers: bearer(key) });
    if (response.status === 401) {
      showKeyError(await errorMessage(response));
      keyInput.select();
      return;
    }
    sessionStorage.setItem(KEY_SLOT, key);
    keyInput.value = "";
    showKeyError("");
    keyForm.hidden = true;
    forgetKey.hidden = false;
    const waiting = keyWanted || [];
    keyWanted = null;
    for (const resolve of waiting) resolve();
  } catch (error) {
    showKeyError(error.message);
  } finally {
    keyForm.querySelector("button").disabled = false;
  }
});

forgetKey.addEventListener("click", () => {
  sessionStorage.removeItem(KEY_SLOT);
  forgetKey.hidden = true;
});

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
    img.alt = "";
    showObject(img, file);
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

function renderAnswer(view) {
  const { text, artifacts, media } = view;
  const nodes = [];
  const shown = new Map();  // how often each file is shown so far in this text
  let last = 0;
  for (const match of text.matchAll(FILE_LINK)) {
    const [whole, bang, label, url] = match;
    const file = fileOf(url, artifacts);
    if (!file && !bang) continue;  // an ordinary link stays as text
    nodes.push(document.createTextNode(text.slice(last, match.index)));
    if (file) {
      // The same element each time the answer is drawn again: fetched once, never flickering.
      const n = (shown.get(file.url) || 0) + 1;
      shown.set(file.url, n);
      const key = `${n} ${file.url} ${file.media_type} ${label}`;
      if (!media.has(key)) media.set(key, mediaFor(file, label.replace(/\\(.)/g, "$1")));
      nodes.push(media.get(key));
    } else {
      nodes.push(document.createTextNode(whole));
    }
    last = match.index + whole.length;
  }
  nodes.push(document.createTextNode(text.slice(last)));
  view.answer.replaceChildren(...nodes);
}

function fileOf(url, artifacts) {
  let parsed;
  try { parsed = new URL(url, location.href); } catch { return null; }
  const match = parsed.pathname.match(/^\/v1\/files\/([\w.-]+)\/content$/);
  if (!match || parsed.origin !== location.origin) return null;  // only this gateway's files
  const known = artifacts.get(match[1]);
  return { url: parsed.pathname, media_type: known ? known.media_type : "image/*" };
}

// A file of this gateway, fetched with the key: an <img src> or <a href> could not send it.
function mediaFor(file, name) {
  const kind = file.media_type.split("/")[0];
  if (kind !== "image" && kind !== "audio" && kind !== "video") return downloadLink(file, name);
  const node = el(kind === "image" ? "img" : kind);
  if (kind === "image") node.alt = name;
  else node.controls = true;
  node.title = name;
  fetchFile(file.url)
    .then((blob) => showObject(node, blob))
    .catch((error) => { node.replaceWith(el("span", "error", `${name}: ${error.message}`)); });
  return node;
}

async function fetchFile(url) {
  const response = await api(url);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.blob();
}

// Shows a blob in an <img>, <audio> or <video> through an object URL: a picture's is given back
// once it is drawn; a player keeps its own while it is on the page.
function showObject(node, blob) {
  const url = URL.createObjectURL(blob);
  if (node.tagName === "IMG") {
    const release = () => URL.revokeObjectURL(url);
    node.addEventListener("load", release, { once: true });
    node.addEventListener("error", release, { once: true });
  }
  node.src = url;
}

function downloadLink(file, name) {
  const link = el("a", "", name);
  link.href = file.url;  // shown and copyable; a click fetches it with the key
  link.addEventListener("click", async (e) => {
    e.preventDefault();
    try {
      const url = URL.createObjectURL(await fetchFile(file.url));
      const save = el("a");
      save.href = url;
      save.download = name;
      save.click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);  // once the download has begun
    } catch (error) {
      link.textContent = `${name}: ${error.message}`;
    }
  });
  return link;
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
    media: new Map(),  // the elements that show its files, by where they stand in the answer
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
  if (delta.content || extra.artifacts) renderAnswer(view);
}

async function send(text, files) {
  const parts = await contentParts(text, files);
  const messages = history.concat([{ role: "user", content: parts }]);
  const view = showTurnAssistant();
  current = { requestId: null, view };
  setBusy(true);
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "chorus", messages, stream: true }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
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
    await api(`/v1/requests/${encodeURIComponent(current.requestId)}/cancel`, { method: "POST" });
  } finally {
    stopButton.disabled = false;
  }
});

// Asks for a key as the page opens when the gateway wants one, not at the first Send.
forgetKey.hidden = !sessionStorage.getItem(KEY_SLOT);
api("/v1/models").catch(() => {});

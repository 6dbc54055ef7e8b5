// The edgecloud web app: a chat page served by `edgecloud device serve` at /.
// Plain JavaScript, no build step, nothing fetched from elsewhere: it talks to the
// OpenAI-compatible API of the device that serves it and reads the `edgecloud`
// extension field of each streamed chunk (docs/http.md).
"use strict";

const KEY_STORE = "edgecloud.apiKey";
const OPTIONS_STORE = "edgecloud.options";
const HEALTH_EVERY_MS = 5000;

// The embedded model is a base model without a chat template: a few questions with short
// answers in front of the conversation make it answer the next one the same way.
const FEW_SHOT = [
  ["What is the capital of France?", "Paris."],
  ["How many legs does a spider have?", "Eight."],
  ["What do bees make?", "Honey."],
];
const QA_INTRO = "Answer each question briefly and correctly.\n\n";
const QA_STOP = ["\nQ:", "\n\n"];
const HISTORY_TURNS = 4; // earlier exchanges sent along with a question

const $ = (id) => document.getElementById(id);
const state = {
  model: null,
  history: [], // [{question, answer}]
  controller: null,
  health: null,
  reachable: null,
};

// ---- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, init = {}) {
  for (;;) {
    const res = await fetch(path, { ...init, headers: headers(), cache: "no-store" });
    if (res.status !== 401) {
      if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
      return res;
    }
    if (!(await askForKey())) throw new ApiError(401, "this device needs an API key");
  }
}

async function errorMessage(res) {
  try {
    const body = await res.json();
    return body.error?.message || `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status}`;
  }
}

function askForKey() {
  const dialog = $("key-dialog");
  $("key").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = $("key").value.trim();
        if (dialog.returnValue === "ok" && key) {
          localStorage.setItem(KEY_STORE, key);
          resolve(true);
        } else resolve(false);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

async function modelId() {
  if (!state.model) {
    const res = await api("v1/models");
    state.model = (await res.json()).data[0].id;
    render.device();
  }
  return state.model;
}

// Server-sent events from a fetch body: one JSON object per `data:` line, `[DONE]` last.
async function* events(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function options() {
  return {
    mode: $("mode").value,
    route: $("route").value,
    maxTokens: Math.max(1, Math.min(2048, Number($("max-tokens").value) || 64)),
  };
}

function qaPrompt(question) {
  const turns = [
    ...FEW_SHOT.map(([q, a]) => ({ question: q, answer: ` ${a}` })),
    ...state.history.slice(-HISTORY_TURNS),
  ];
  const shots = turns.map((t) => `Q: ${t.question}\nA:${t.answer}\n\n`).join("");
  return `${QA_INTRO}${shots}Q: ${question}\nA:`;
}

function requestBody(question, opts, model) {
  const body = { model, stream: true, max_tokens: opts.maxTokens };
  if (opts.route !== "auto") body.edgecloud = { route: opts.route };
  if (opts.mode === "qa") {
    return [
      "v1/completions",
      { ...body, prompt: qaPrompt(question), stop: QA_STOP, logprobs: 0 },
    ];
  }
  const messages = [];
  for (const t of state.history.slice(-HISTORY_TURNS)) {
    messages.push({ role: "user", content: t.question });
    messages.push({ role: "assistant", content: t.answer.trim() });
  }
  messages.push({ role: "user", content: question });
  return ["v1/chat/completions", { ...body, messages, logprobs: true }];
}

// A chunk's text and its token's logprob, for either API.
function tokenOf(chunk) {
  const choice = chunk.choices?.[0];
  if (!choice) return null;
  if (choice.delta !== undefined) {
    return { text: choice.delta.content ?? "", logprob: choice.logprobs?.content?.[0]?.logprob };
  }
  return { text: choice.text ?? "", logprob: choice.logprobs?.token_logprobs?.[0] };
}

// ---- one answer on the page ------------------------------------------------------------

class Answer {
  constructor(question) {
    $("empty")?.remove();
    const turn = document.createElement("section");
    turn.className = "turn";
    const q = document.createElement("p");
    q.className = "question";
    q.textContent = question;
    this.box = document.createElement("div");
    this.box.className = "answer streaming";
    this.text = document.createElement("p");
    this.text.className = "text";
    this.meta = document.createElement("div");
    this.meta.className = "meta";
    this.box.append(this.text, this.meta);
    turn.append(q, this.box);
    $("log").append(turn);
    this.turn = turn;
    this.lastSource = null;
    this.shown = "";
  }

  add(text, logprob, source) {
    if (source !== this.lastSource) {
      if (this.lastSource === "local" && source === "cloud") {
        const mark = document.createElement("span");
        mark.className = "handoff";
        mark.textContent = "⇢ cloud";
        mark.title = "the device handed the answer to the cloud here";
        this.text.append(mark);
      }
      const badge = document.createElement("span");
      badge.className = `badge ${source}`;
      badge.textContent = source === "cloud" ? "cloud" : "device";
      this.text.append(badge);
      this.lastSource = source;
    }
    const span = document.createElement("span");
    span.className = `tok ${source}`;
    span.textContent = text;
    if (typeof logprob === "number") {
      const p = Math.exp(Math.max(logprob, -50));
      span.style.setProperty("--p", p.toFixed(3));
      span.title = `${source === "cloud" ? "cloud" : "device"} · p=${(100 * p).toFixed(1)}% (logprob ${logprob.toFixed(2)})`;
    } else {
      span.classList.add("nolp");
    }
    this.text.append(span);
    this.shown += text;
    scrollDown();
  }

  // Take back the last n characters (a cloud that rejected unverified device text).
  retract(n) {
    this.shown = this.shown.slice(0, Math.max(0, this.shown.length - n));
    const tokens = [...this.text.querySelectorAll(".tok")];
    while (n > 0 && tokens.length) {
      const span = tokens.pop();
      const len = span.textContent.length;
      if (len <= n) {
        span.remove();
        n -= len;
      } else {
        span.textContent = span.textContent.slice(0, len - n);
        n = 0;
      }
    }
    // badges and markers left with no token after them go too
    while (this.text.lastChild && !this.text.lastChild.classList.contains("tok")) {
      this.text.lastChild.remove();
    }
    const left = this.text.querySelectorAll(".tok");
    const last = left[left.length - 1];
    this.lastSource = last ? (last.classList.contains("cloud") ? "cloud" : "local") : null;
  }

  finish(ext, error) {
    this.box.classList.remove("streaming");
    const parts = [];
    if (ext) {
      this.box.dataset.source = ext.source;
      parts.push(chip(`where: ${ext.source === "local" ? "device" : ext.source}`, `src ${ext.source}`));
      const route = ext.route;
      if (route) {
        const why = route.reason ? `${route.policy}: ${route.reason}` : route.policy;
        const reason = chip(route.escalated ? `escalated · ${why}` : `stayed · ${why}`, "reason");
        reason.title = route.endpoint ? `cloud endpoint ${route.endpoint}` : "";
        parts.push(reason);
        if (route.fallback) parts.push(chip(`fallback: ${route.fallback}`, "fallback"));
      } else {
        parts.push(chip("device only (no cloud configured)", "reason"));
      }
      const c = ext.confidence;
      if (c && c.tokens) {
        parts.push(chip(`mean p ${(100 * Math.exp(c.mean_logprob ?? -Infinity)).toFixed(0)}%`, "conf"));
      }
      const t = ext.timings;
      if (t && t.decode_tokens_per_s) parts.push(chip(`${t.decode_tokens_per_s.toFixed(1)} tok/s`, "speed"));
      if (ext.finish === "length") parts.push(chip("cut at max tokens", "fallback"));
    }
    if (error) parts.push(chip(error, "error"));
    this.meta.replaceChildren(...parts);
    scrollDown();
  }
}

function chip(text, cls) {
  const el = document.createElement("span");
  el.className = `chip ${cls}`;
  el.textContent = text;
  return el;
}

function scrollDown() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

// ---- asking ----------------------------------------------------------------------------

async function ask(question) {
  const opts = options();
  const answer = new Answer(question);
  const controller = new AbortController();
  state.controller = controller;
  busy(true);
  let ext = null;
  let error = null;
  try {
    const model = await modelId();
    const [path, body] = requestBody(question, opts, model);
    const res = await api(path, { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    for await (const chunk of events(res)) {
      if (chunk.error) throw new ApiError(500, chunk.error.message);
      const e = chunk.edgecloud;
      if (!e) continue; // the role chunk, the usage chunk
      if (e.route !== undefined) {
        ext = e; // the last chunk: where the answer ran and why
        continue;
      }
      if (e.retracted) answer.retract(e.retracted);
      const token = tokenOf(chunk);
      if (token && token.text) answer.add(token.text, token.logprob, e.source);
    }
  } catch (exc) {
    error = exc.name === "AbortError" ? "stopped" : exc.message || String(exc);
    if (exc.status === undefined && exc.name !== "AbortError") state.reachable = false;
  } finally {
    state.controller = null;
    busy(false);
  }
  answer.finish(ext, error);
  if (ext) state.history.push({ question, answer: answer.shown });
  refreshHealth();
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("prompt").disabled = on;
}

// ---- status: network, device, cloud, adapter -------------------------------------------

const render = {
  net() {
    const online = navigator.onLine;
    setChip("net", online ? "online" : "offline", online ? "ok" : "warn");
  },
  device() {
    if (state.reachable === false) return setChip("device", "device unreachable", "bad");
    const h = state.health;
    if (!h) return setChip("device", "device …", "");
    const name = state.model || h.model;
    setChip("device", h.status === "ok" ? name : `${name} (${h.status})`, h.status === "ok" ? "ok" : "warn");
  },
  cloud() {
    const h = state.health;
    if (!h || state.reachable === false) return setChip("cloud", "cloud ?", "");
    const c = h.cloud;
    if (!c) return setChip("cloud", "no cloud: answers stay on the device", "off");
    if (c.available === null) return setChip("cloud", `cloud: ${c.endpoints || "discovery"}, not checked yet`, "");
    if (c.available === 0) return setChip("cloud", "cloud unreachable: answers stay on the device", "warn");
    setChip("cloud", `cloud: ${c.available} of ${c.endpoints} reachable`, "ok");
  },
  adapter() {
    const h = state.health;
    const v = h?.adapter_version;
    setChip("adapter", v === null || v === undefined ? "base model" : `adapter v${v}`, v ? "ok" : "off");
  },
};

function setChip(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = `chip ${cls}`;
}

async function refreshHealth() {
  try {
    const res = await fetch("health", { cache: "no-store" });
    state.health = await res.json();
    state.reachable = true;
  } catch {
    state.reachable = false;
  }
  render.device();
  render.cloud();
  render.adapter();
}

// A token's probability and source on a tap: touch screens show no title tooltips.
function showTip(event) {
  const tip = $("tip");
  const token = event.target.closest?.(".tok");
  if (!token || !token.title) {
    tip.hidden = true;
    return;
  }
  tip.textContent = token.title;
  tip.hidden = false;
  const box = token.getBoundingClientRect();
  const left = Math.min(Math.max(4, box.left), window.innerWidth - tip.offsetWidth - 4);
  tip.style.left = `${left}px`;
  tip.style.top = `${Math.max(4, box.top - tip.offsetHeight - 6)}px`;
}

// ---- wiring ----------------------------------------------------------------------------

function saveOptions() {
  localStorage.setItem(OPTIONS_STORE, JSON.stringify(options()));
}

function loadOptions() {
  try {
    const o = JSON.parse(localStorage.getItem(OPTIONS_STORE) || "{}");
    if (o.mode) $("mode").value = o.mode;
    if (o.route) $("route").value = o.route;
    if (o.maxTokens) $("max-tokens").value = o.maxTokens;
  } catch {
    localStorage.removeItem(OPTIONS_STORE);
  }
}

function start() {
  loadOptions();
  for (const id of ["mode", "route", "max-tokens"]) $(id).addEventListener("change", saveOptions);
  const prompt = $("prompt");
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = prompt.value.trim();
    if (!question || state.controller) return;
    prompt.value = "";
    prompt.style.height = "";
    ask(question).finally(() => prompt.focus());
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  prompt.addEventListener("input", () => {
    prompt.style.height = "";
    prompt.style.height = `${Math.min(prompt.scrollHeight, 160)}px`;
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  document.addEventListener("click", showTip);
  $("log").addEventListener("scroll", () => ($("tip").hidden = true));
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    state.model = null;
  });
  $("clear").addEventListener("click", () => {
    state.history = [];
    $("log").replaceChildren();
  });
  window.addEventListener("online", () => {
    render.net();
    refreshHealth();
  });
  window.addEventListener("offline", render.net);
  render.net();
  refreshHealth();
  setInterval(refreshHealth, HEALTH_EVERY_MS);
  if ("serviceWorker" in navigator) {
    // a secure context only: localhost, or the device served over TLS
    navigator.serviceWorker.register("sw.js").catch((exc) => console.warn("no offline shell:", exc));
  }
}

start();

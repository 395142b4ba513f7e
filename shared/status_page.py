"""The status page served at GET /: one self-contained HTML document (inline CSS, inline
script, inline SVG charts; nothing from a CDN). It carries no data: the script asks for
the token once (a form, or `#token=...` in the address, removed at once), keeps it in
sessionStorage and fetches the JSON routes with it. Everything from the API is put into
the page as text, never as HTML, and the Content-Security-Policy allows only this exact
script and style (by hash) and requests to the page's own origin.
"""

from __future__ import annotations

import base64
import hashlib

_STYLE = """
:root { --ok: #1a7f37; --bad: #cf222e; --run: #9a6700; --muted: #57606a; --line: #d0d7de;
        --bg: #fff; --fg: #1f2328; --card: #f6f8fa; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --ok: #3fb950; --bad: #ff7b72; --run: #d29922; --muted: #8d96a0; --line: #30363d;
          --bg: #0d1117; --fg: #e6edf3; --card: #161b22; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans",
       "Noto Sans CJK SC", sans-serif; background: var(--bg); color: var(--fg); }
header { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; gap: .5rem;
         align-items: center; padding: .6rem .8rem; background: var(--card);
         border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.05rem; margin: 0 auto 0 0; }
main { max-width: 60rem; margin: 0 auto; padding: .8rem; }
button { font: inherit; padding: .45rem .8rem; border-radius: .4rem; border: 1px solid var(--line);
         background: var(--bg); color: var(--fg); min-height: 2.5rem; }
button.primary { background: var(--ok); color: #fff; border-color: var(--ok); }
button:disabled { opacity: .6; }
input { font: inherit; padding: .5rem; width: 100%; border-radius: .4rem;
        border: 1px solid var(--line); background: var(--bg); color: var(--fg); }
h2 { font-size: 1rem; margin: 1.2rem 0 .5rem; }
.hidden { display: none !important; }
#message { padding: .6rem .8rem; border-radius: .4rem; background: var(--card); margin: 0 0 .6rem; }
#message.bad { color: var(--bad); border: 1px solid var(--bad); }
#message:empty { display: none; }
form#login { display: grid; gap: .6rem; max-width: 24rem; margin: 2rem auto; }
.charts { display: grid; gap: .6rem; grid-template-columns: 1fr 1fr; }
figure { margin: 0; padding: .4rem .5rem; border: 1px solid var(--line); border-radius: .5rem; min-width: 0; }
figcaption { font-size: .85rem; color: var(--muted); margin-bottom: .3rem; }
svg { display: block; width: 100%; height: auto; }
svg .bar { fill: var(--ok); } svg .bar.failed { fill: var(--bad); } svg .bar.running { fill: var(--run); }
svg text { fill: var(--muted); font-size: 10px; }
svg line { stroke: var(--line); }
.run { border: 1px solid var(--line); border-left: .35rem solid var(--ok); border-radius: .5rem;
       margin: 0 0 .8rem; background: var(--bg); }
.run.failed { border-left-color: var(--bad); }
.run.running { border-left-color: var(--run); }
.run > summary { list-style: none; padding: .6rem .8rem; cursor: pointer; }
.run > summary::-webkit-details-marker { display: none; }
.run-title { display: flex; flex-wrap: wrap; gap: .4rem; align-items: baseline; }
.run-id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9rem;
          overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: .85rem; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 1rem; font-size: .8rem;
         font-weight: 600; color: #fff; background: var(--muted); }
.badge.done, .badge.succeeded { background: var(--ok); }
.badge.failed { background: var(--bad); }
.badge.running, .badge.exporting, .badge.copying, .badge.ready, .badge.pending { background: var(--run); }
ul.jobs { list-style: none; margin: 0; padding: 0 .8rem .6rem; }
.job { padding: .5rem 0; border-top: 1px solid var(--line); }
.job-title { display: flex; flex-wrap: wrap; gap: .4rem; align-items: baseline; }
.job-name { font-weight: 600; overflow-wrap: anywhere; }
.job.failed .job-name { color: var(--bad); }
.error { color: var(--bad); font-weight: 600; overflow-wrap: anywhere; margin-top: .2rem; }
.key { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .8rem;
       color: var(--muted); overflow-wrap: anywhere; }
.more { text-align: center; }
"""

_SCRIPT = r"""
"use strict";
const TOKEN_KEY = "baas-backup-token";
const LIST_SIZE = 30;      // runs in the charts and the list
const DETAILED = 10;       // runs whose jobs are fetched at once; the rest on request
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
let refreshTimer = null;

// The token: once from the form or from #token=..., then only in this tab's sessionStorage.
(function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.round(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function count(n) { return n === null || n === undefined ? "–" : n.toLocaleString(); }
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function say(text, bad) {
  const box = $("message");
  box.textContent = text || "";
  box.className = bad ? "bad" : "";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new ApiError(401, "");
  const headers = Object.assign({ "Authorization": "Bearer " + token }, (options || {}).headers);
  const response = await fetch(BASE + path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (body && typeof body.statusCode === "number" && "isBase64Encoded" in body) {
    throw new ApiError(0, "API Gateway hands back the function's answer unmapped: turn on " +
                          "integrated response (集成响应) for this API in API Gateway.");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || ("HTTP " + response.status));
  }
  return body;
}

function showLogin(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("login").classList.remove("hidden");
  $("app").classList.add("hidden");
  $("actions").classList.add("hidden");
  $("login-error").textContent = reason || "";
  $("token").focus();
}

function showApp() {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("actions").classList.remove("hidden");
}

function failed(error) {
  if (error.status === 401) { showLogin(error.message ? "The token was refused: " + error.message : ""); return; }
  say(error.message || String(error), true);
}

function chart(figure, runs, value, label, format) {
  const shown = runs.filter((r) => value(r) !== null && value(r) !== undefined).slice(0, 20).reverse();
  const svg = figure.querySelector("svg");
  svg.replaceChildren();
  const width = 200, height = 100, top = 14, bottom = 16, left = 2;
  if (!shown.length) {
    svg.append(svgEl("text", { x: 4, y: 50 }, "no finished runs yet"));
    return;
  }
  const max = Math.max(...shown.map(value), 1e-9);
  const slot = (width - left) / shown.length;
  svg.append(svgEl("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom }));
  svg.append(svgEl("text", { x: 2, y: 10 }, "max " + format(max)));
  shown.forEach((run, i) => {
    const h = Math.max(1, (value(run) / max) * (height - top - bottom));
    const bar = svgEl("rect", {
      class: "bar " + run.status, x: left + i * slot + slot * 0.15, y: height - bottom - h,
      width: Math.max(1, slot * 0.7), height: h, "data-run-id": run.run_id,
    }, svgEl("title", {}, run.run_id + ": " + format(value(run)) + " (" + run.status + ")"));
    svg.append(bar);
  });
  svg.append(svgEl("text", { x: 2, y: height - 4 }, "oldest"));
  svg.append(svgEl("text", { x: width - 2, y: height - 4, "text-anchor": "end" }, "newest"));
  figure.querySelector("figcaption").textContent = label;
}

function jobItem(job) {
  const numbers = [];
  if (job.records !== null) numbers.push(count(job.records) + " records");
  if (job.bytes !== null) numbers.push(bytes(job.bytes));
  if (job.duration_seconds !== null) {
    numbers.push((job.status === "failed" ? "failed after " : "") + seconds(job.duration_seconds));
  }
  if (job.attempts) numbers.push(job.attempts + (job.attempts === 1 ? " retry" : " retries"));
  return el("li", { class: "job " + job.status, "data-job-id": job.job_id, "data-job-status": job.status,
                    "data-collection": job.collection, "data-source": job.source },
    el("div", { class: "job-title" },
      el("span", { class: "job-name" }, job.source + " / " + job.collection),
      el("span", { class: "badge " + job.status }, job.status)),
    el("div", { class: "meta" }, numbers.join(" · ")),
    job.status === "failed" && job.error ? el("div", { class: "error" }, job.error) : null,
    job.status !== "failed" && job.error ? el("div", { class: "meta" }, "last retry: " + job.error) : null,
    ...job.object_keys.map((key) => el("div", { class: "key" }, key)));
}

function runCard(run, detail) {
  const t = run.totals;
  const card = el("details", { class: "run " + run.status, "data-run-id": run.run_id,
                               "data-run-status": run.status, open: detail && (run.status !== "succeeded") },
    el("summary", {},
      el("div", { class: "run-title" },
        el("span", { class: "badge " + run.status }, run.status),
        el("span", { class: "run-id" }, run.run_id)),
      el("div", { class: "meta" },
        [run.trigger, when(run.created_at), seconds(run.duration_seconds),
         t.done + "/" + t.jobs + " done" + (t.failed ? ", " + t.failed + " failed" : ""),
         count(t.records) + " records", bytes(t.bytes)].join(" · "))));
  const list = el("ul", { class: "jobs" });
  card.append(list);
  const fill = (full) => list.replaceChildren(...full.jobs.map(jobItem));
  if (detail) fill(detail);
  else card.addEventListener("toggle", () => {
    if (card.open && !list.childElementCount) api("runs/" + encodeURIComponent(run.run_id)).then(fill, failed);
  });
  return card;
}

async function load() {
  clearTimeout(refreshTimer);
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(""); return; }
  showApp();
  try {
    const page = await api("runs?limit=" + LIST_SIZE);
    const runs = page.runs;
    const details = await Promise.all(runs.slice(0, DETAILED).map(
      (run) => api("runs/" + encodeURIComponent(run.run_id))));
    chart($("chart-bytes"), runs.filter((r) => r.finished_at), (r) => r.totals.bytes,
          "bytes per run", bytes);
    chart($("chart-duration"), runs.filter((r) => r.finished_at), (r) => r.duration_seconds,
          "duration per run", seconds);
    $("runs").replaceChildren(...runs.map((run, i) => runCard(run, details[i])));
    if (!runs.length) $("runs").append(el("p", { class: "meta" }, "No runs yet. Start one with “Back up now”."));
    const running = runs.some((r) => r.status === "running");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + (running ? " · refreshing while runs are going" : "");
    if (!$("message").classList.contains("bad")) say("");
    refreshTimer = setTimeout(load, running ? 5000 : 60000);
  } catch (error) {
    failed(error);
  }
}

async function backUpNow() {
  const button = $("run-now");
  button.disabled = true;
  const key = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
  try {
    // one key per tap: a resent request lands on the same run
    const answer = await api("runs", { method: "POST", body: "{}",
      headers: { "Content-Type": "application/json", "Idempotency-Key": "page-" + key } });
    say("Started run " + answer.run_id + ".");
    await load();
  } catch (error) {
    failed(error);
  } finally {
    button.disabled = false;
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  load();
});
$("run-now").addEventListener("click", backUpNow);
$("refresh").addEventListener("click", load);
$("forget").addEventListener("click", () => { say(""); showLogin("Token forgotten in this tab."); });
load();
"""

_BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>baas-backup status</title>
<style>{style}</style>
</head>
<body>
<header>
  <h1>baas-backup</h1>
  <div id="actions" class="hidden">
    <button id="run-now" class="primary" type="button">Back up now</button>
    <button id="refresh" type="button">Refresh</button>
    <button id="forget" type="button">Forget token</button>
  </div>
</header>
<main>
  <noscript><p>This page needs JavaScript to fetch the backup status.</p></noscript>
  <form id="login" class="hidden" autocomplete="off">
    <label for="token">API token (the value of BAAS_BACKUP_API_TOKEN)</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required>
    <button class="primary" type="submit">Show status</button>
    <p id="login-error" class="meta" role="alert"></p>
  </form>
  <div id="app" class="hidden">
    <p id="message" role="status"></p>
    <section class="charts" aria-label="recent runs in numbers">
      <figure id="chart-bytes"><figcaption>bytes per run</figcaption>
        <svg viewBox="0 0 200 100" role="img" aria-label="bytes per run"></svg></figure>
      <figure id="chart-duration"><figcaption>duration per run</figcaption>
        <svg viewBox="0 0 200 100" role="img" aria-label="duration per run"></svg></figure>
    </section>
    <h2>Recent runs <span id="updated" class="meta"></span></h2>
    <section id="runs"></section>
  </div>
</main>
<script>{script}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


HTML = _BODY.replace("{style}", _STYLE).replace("{script}", _SCRIPT)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    f"script-src {_hash(_SCRIPT)}",
    f"style-src {_hash(_STYLE)}",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])


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
    job.suspect ? el("div", { class: "suspect" },
      "⚠ suspect: " + count(job.records) + " records, down from " + count(job.previous_records) +
      " in the last good backup. ",
      el("button", { type: "button", class: "acknowledge", "data-run-id": job.run_id },
         "The drop was intended")) : null,
    job.pruned ? el("div", { class: "meta" }, "deleted by retention") : null,
    job.status === "failed" && job.error ? el("div", { class: "error" }, job.error) : null,
    job.status !== "failed" && job.error ? el("div", { class: "meta" }, "last retry: " + job.error) : null,
    ...job.object_keys.map((key) => el("div", { class: "key" }, key)));
}

async function acknowledge(button, job) {
  if (!confirm("Acknowledge that " + job.source + " / " + job.collection + " really has " +
               count(job.records) + " records now (it had " + count(job.previous_records) +
               ")? The backup will count as good, and later backups compare with it.")) return;
  button.disabled = true;
  try {
    await api("runs/" + encodeURIComponent(job.run_id) + "/acknowledge", { method: "POST",
      body: JSON.stringify({ source: job.source, collection: job.collection }),
      headers: { "Content-Type": "application/json" } });
    say("Acknowledged " + job.source + " / " + job.collection + ".");
    await load();
  } catch (error) {
    button.disabled = false;
    failed(error);
  }
}

function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 3600) return Math.max(1, Math.round(s / 60)) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function collectionRow(c, retention) {
  const good = c.last_good;
  const latest = c.latest;
  const stale = !good || good.age_seconds > 26 * 3600;
  return el("tr", { class: "collection" + (latest && latest.suspect ? " suspect" : "") + (stale ? " stale" : ""),
                    "data-source": c.source, "data-collection": c.collection,
                    "data-suspect": latest && latest.suspect ? "yes" : "no" },
    el("td", {}, c.source + " / " + c.collection),
    el("td", {}, good ? age(good.age_seconds) + " · " + count(good.records) + " records" : "no good backup"),
    el("td", {}, latest && latest.suspect
      ? "⚠ suspect: " + count(latest.records) + " (was " + count(latest.previous_records) + ")"
      : (latest ? latest.status : "–")),
    el("td", {}, retention ? String(c.kept) + " kept" : "all kept"));
}

function collectionTable(listing) {
  if (!listing.collections.length) return el("p", { class: "meta" }, "No backups yet.");
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "collection"), el("th", {}, "last good backup"),
                       el("th", {}, "newest"), el("th", {}, "retention"))),
    el("tbody", {}, ...listing.collections.map((c) => collectionRow(c, listing.retention))));
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
  const fill = (full) => {
    list.replaceChildren(...full.jobs.map(jobItem));
    list.querySelectorAll("button.acknowledge").forEach((button, i) => {
      const job = full.jobs.filter((j) => j.suspect)[i];
      button.addEventListener("click", () => acknowledge(button, job));
    });
  };
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
    const [page, listing] = await Promise.all([api("runs?limit=" + LIST_SIZE), api("collections")]);
    $("collections").replaceChildren(collectionTable(listing));
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

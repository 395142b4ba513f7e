
"use strict";
const TOKEN_KEY = "baas-backup-token";
const LIST_SIZE = 30;      // runs in the charts and the list
const DETAILED = 10;       // runs whose jobs are fetched at once; the rest on request
const RESTORE_POLL_MS = 3000;  // how often a running restore is asked how far it got
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
let refreshTimer = null;
let runsGoing = false;     // what the last answered refresh saw: it sets the next one's pace
let restoresTimer = null;
let restoresGoing = false;  // the last answered Restores listing had a restore running
// GET /restores (shared/entrypoints/http_restores.py) and GET /runs (shared/entrypoints/
// http_api.py, _list_runs) answer a page at a time, newest first, with `next` for the page
// after it. Once older pages are asked for, what they brought stays shown when the first
// page is asked again (by id; the newer answer wins), and the next older page follows the
// oldest one fetched: an item that newer ones pushed off the first page meanwhile is still
// shown, and none is skipped.
function pagedListing(idOf) {
  return {
    idOf,
    shown: new Map(),  // id -> the item as last answered
    older: false,      // the user asked for older pages
    next: null,        // `next` of the oldest page fetched: there is more
    keep(items) { for (const item of items) this.shown.set(this.idOf(item), item); },
    firstPage(items, next) {
      if (!this.older) { this.shown.clear(); this.next = next; }
      this.keep(items);
    },
    forget() { this.shown.clear(); this.older = false; this.next = null; },
  };
}
const restoresListed = pagedListing((r) => r.restore_id);
const runsListed = pagedListing((run) => run.run_id);
const runDetails = new Map();  // run id -> GET /runs/{id} of the last refresh (its jobs)
// Counts the forgets of the token (forgetData): an answer to a request asked before the
// last one is about data the tab no longer holds, and is dropped, not drawn or said.
let session = 0;
// The error a refresh put up (the runs', the Restores section's): the next refresh of the
// same kind that is answered takes it down. A message an action left stays until read.
let refreshSaid = null;
let restoresSaid = null;

// The token: once from the form or from #token=..., then only in this tab's sessionStorage.
// All of the address after "#token=", as it is: read as a form query, a + became a space
// and an & ended the token, and tokens made with base64 hold + / =. Only %XX is decoded
// (the browser escapes a space or a non-ASCII character typed into the address).
(function tokenFromFragment() {
  const prefix = "#token=";
  if (!location.hash.startsWith(prefix)) return;
  let token = location.hash.slice(prefix.length);
  try { token = decodeURIComponent(token); } catch (e) { /* a % that escapes nothing is the token's */ }
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

// A confirmation ("Started run X.") outlasts the refresh its action asks for at once, and
// a few more, so it is read; the next tap on a button takes it down (clicked()).
const TOLD_REFRESHES = 4;
let toldLeft = 0;  // answered refreshes the confirmation shown stays for

function say(text, bad) {
  const box = $("message");
  box.textContent = text || "";
  box.className = bad ? "bad" : "";
  toldLeft = 0;
}

function tell(text) {
  say(text);
  toldLeft = TOLD_REFRESHES;
}

// An answered refresh: whether the confirmation shown has stayed long enough.
function toldEnough() {
  toldLeft = Math.max(0, toldLeft - 1);
  return toldLeft === 0;
}

function clicked(event) {
  if (toldLeft && event.target instanceof Element && event.target.closest("button")) say("");
}

class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field || null; }
}

// A new Idempotency-Key: a resent request with it lands on what the first one started.
function freshKey(prefix) {
  return prefix + (crypto.randomUUID ? crypto.randomUUID()
                                     : String(Date.now()) + Math.random().toString(16).slice(2));
}

function postJson(path, body, headers) {
  return api(path, { method: "POST", body: JSON.stringify(body),
                     headers: Object.assign({ "Content-Type": "application/json" }, headers || {}) });
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
    throw new ApiError(response.status, (body && body.error) || ("HTTP " + response.status),
                       body && body.field);
  }
  return body;
}

function showLogin(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
  clearTimeout(restoresTimer);
  if ($("restore").open) $("restore").close();
  forgetData();
  $("login").classList.remove("hidden");
  $("app").classList.add("hidden");
  $("actions").classList.add("hidden");
  $("login-error").textContent = reason || "";
  $("token").focus();
}

// Without the token the tab holds no data: what the last token fetched is dropped, not
// hidden, so the next token typed into the form (a guess, too) is shown none of it.
function forgetData() {
  for (const id of ["collections", "restores", "runs", "updated"]) $(id).replaceChildren();
  for (const id of ["chart-bytes", "chart-duration"]) $(id).querySelector("svg").replaceChildren();
  session++;
  verifyResults.clear();
  restoresListed.forget();
  runsListed.forget();
  runDetails.clear();
  runsGoing = restoresGoing = false;
  say("");
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
  let restoreButton = null;
  if (job.status === "done" && !job.pruned) {  // only a finished backup still in the bucket
    restoreButton = el("button", { type: "button", class: "restore", "data-run-id": job.run_id,
                             "data-source": job.source, "data-collection": job.collection }, "Restore");
    restoreButton.addEventListener("click", () => openRestore(job));
  }
  return el("li", { class: "job " + job.status, "data-job-id": job.job_id, "data-job-status": job.status,
                    "data-collection": job.collection, "data-source": job.source },
    el("div", { class: "job-title" },
      el("span", { class: "job-name" }, job.source + " / " + job.collection),
      el("span", { class: "badge " + job.status }, job.status), restoreButton),
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
  const asked = session;
  try {
    await api("runs/" + encodeURIComponent(job.run_id) + "/acknowledge", { method: "POST",
      body: JSON.stringify({ source: job.source, collection: job.collection }),
      headers: { "Content-Type": "application/json" } });
    if (asked !== session) return;  // the token was forgotten meanwhile
    tell("Acknowledged " + job.source + " / " + job.collection + ".");
    await load();
  } catch (error) {
    if (asked !== session) return;
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
    el("td", {}, latest && latest.verify_failed ? "❌ verify found it damaged"
      : latest && latest.suspect
      ? "⚠ suspect: " + count(latest.records) + " (was " + count(latest.previous_records) + ")"
      : (latest ? latest.status : "–")),
    el("td", {}, retention ? String(c.kept) + " kept" : "all kept"));
}

// the staleness alarm no webhook took: the page must not look quiet while it is unsent
function unsentAlarm(listing) {
  if (!listing.undelivered_alarm) return [];
  return [el("div", { class: "error", "data-undelivered": "stale" },
    "⚠ Alarm not delivered to any webhook (the poller sends it again): " + listing.undelivered_alarm)];
}

function collectionTable(listing) {
  if (!listing.collections.length) return el("p", { class: "meta" }, "No backups yet.");
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "collection"), el("th", {}, "last good backup"),
                       el("th", {}, "newest"), el("th", {}, "retention"))),
    el("tbody", {}, ...listing.collections.map((c) => collectionRow(c, listing.retention))));
}

// what each kind of undelivered alert is (`kind` in GET /runs' undelivered_alerts)
const UNDELIVERED = {
  run: "This run's notification",
  verify: "The verify's alert",
  retention: "The retention alert (old backups could not be deleted after this run)",
};

function runCard(run, detail, wasOpen) {
  const t = run.totals;
  const open = wasOpen === undefined ? detail && run.status !== "succeeded" : wasOpen;
  const card = el("details", { class: "run " + run.status, "data-run-id": run.run_id,
                               "data-run-status": run.status, open },
    el("summary", {},
      el("div", { class: "run-title" },
        el("span", { class: "badge " + run.status }, run.status),
        el("span", { class: "run-id" }, run.run_id)),
      el("div", { class: "meta" },
        [run.trigger, when(run.created_at), seconds(run.duration_seconds),
         t.done + "/" + t.jobs + " done" + (t.failed ? ", " + t.failed + " failed" : ""),
         count(t.records) + " records", bytes(t.bytes)].join(" · "))));
  // a source that could not be listed has no job to show its error on
  for (const [source, why] of Object.entries(run.sources_not_listed || {})) {
    card.append(el("div", { class: "error", "data-not-listed": source }, source + ": " + why));
  }
  // an alert about this run that no webhook accepted: the poller sends it again, for a day
  for (const alert of run.undelivered_alerts || []) {
    card.append(el("div", { class: "error", "data-undelivered": alert.kind },
      "⚠ " + (UNDELIVERED[alert.kind] || "An alert about this run") +
      " reached no webhook (" + alert.tries + " tries since " + when(alert.since) + "): " +
      (alert.gave_up_at ? "no longer sent; check notify.webhooks (doctor --notify)"
                        : "the poller sends it again")));
  }
  if (run.status !== "running") card.append(verifyActions(run));
  const list = el("ul", { class: "jobs" });
  card.append(list);
  const kept = el("div", { class: "verify-kept" });
  card.insertBefore(kept, list);
  const fill = (full) => {
    kept.replaceChildren(...keptVerify(full));
    list.replaceChildren(...full.jobs.map(jobItem));
    list.querySelectorAll("button.acknowledge").forEach((button, i) => {
      const job = full.jobs.filter((j) => j.suspect)[i];
      button.addEventListener("click", () => acknowledge(button, job));
    });
  };
  if (detail) fill(detail);
  else card.addEventListener("toggle", () => {
    if (!card.open || list.childElementCount) return;
    const asked = session;  // an answer after Forget token is dropped
    api("runs/" + encodeURIComponent(run.run_id)).then(
      (full) => { if (asked === session) fill(full); },
      (error) => { if (asked === session) failed(error); });
  });
  return card;
}

// Verify: the run's backups checked again in the bucket (sizes and CRC64, no data read).
const verifyResults = new Map();  // run id -> its verify's answer, kept when the list is redrawn
// Runs whose verify has not answered yet: a card redrawn meanwhile (a refresh) keeps its
// button disabled, or a second tap would start a second verify, and a second alert.
const verifying = new Set();

function verifyActions(run) {
  const result = verifyResults.get(run.run_id) || el("div", { class: "verify-result", "aria-live": "polite" });
  verifyResults.set(run.run_id, result);
  const button = el("button", { type: "button", class: "verify", "data-run-id": run.run_id }, "Verify");
  verifyBusy(button, verifying.has(run.run_id));
  button.addEventListener("click", () => verifyRun(button, run, result));
  return el("div", { class: "run-actions" }, button, result);
}

function verifyBusy(button, busy) {
  button.disabled = busy;
  button.textContent = busy ? "Verifying …" : "Verify";
}

// What the verifies kept on the run found (the one after the run, the latest asked for
// later): a damaged backup is said on its card after a reload too, not only just after
// Verify was tapped. `failed` names the collections still found damaged.
function keptVerify(full) {
  return verifyFound(full).concat(quickChecked(full));
}

function verifyFound(full) {
  const newest = full.last_verify || full.verify;
  if (!newest) return [];
  const damaged = newest.failed || [];
  if (newest.ok && !damaged.length) return [];
  return [el("div", { class: "error", "data-verify-kept": full.run_id },
    "✗ A verify of this run found " + (damaged.length ? damaged.join(", ") + " damaged" : "problems") +
    (newest.at ? " (" + when(newest.at) + ")" : "") + (newest.problems.length ? ":" : "."),
    newest.problems.length ? el("ul", { class: "problem-list" },
      ...newest.problems.map((line) => el("li", {}, line))) : null)];
}

const QUICK_ONLY_LISTED = 10;  // keys named on the card; `next_step` gives the count

// A full verify after the run that ran out of the closing invocation's time read some
// objects back and only quick-checked the rest (size, CRC64): `next_step` says how many
// and how to read them back (shared/service/close.py). It stays until later verifies have
// read all of those back: `last_verify.after_run_quick_only` names what is still unread
// (shared/service/verify.py, after_run_unread); a verify of another collection reads none.
function quickChecked(full) {
  const after = full.verify;
  if (!after || !after.next_step) return [];
  const keys = stillQuickOnly(full);
  if (!keys.length) return [];
  const more = keys.length - QUICK_ONLY_LISTED;
  const fewer = leftAfterRun(after).length > keys.length;  // some were read back since
  return [el("div", { class: "notice", "data-verify-quick-only": full.run_id },
    "⚠ Verify after the run: " + after.next_step + "." + (fewer ? " " + keys.length +
      (keys.length === 1 ? " of them is" : " of them are") + " still to be read back:" : ""),
    ...keys.slice(0, QUICK_ONLY_LISTED).map((key) => el("div", { class: "key" }, key)),
    more > 0 ? el("div", { class: "meta" }, "… and " + more + " more") : null)];
}

// What the check after the run only quick-checked and no verify since has read back. A
// verify kept before the list was (no `after_run_quick_only`) is taken as before: a full
// one read everything back.
function stillQuickOnly(full) {
  const later = full.last_verify;
  if (later && Array.isArray(later.after_run_quick_only)) return later.after_run_quick_only;
  if (later && later.quick === false) return [];
  return leftAfterRun(full.verify);
}

// What the check after the run only quick-checked, or had no time left to check at all.
function leftAfterRun(after) {
  return (after.quick_only || []).concat(after.unchecked || []);
}

// The run's backups retention deleted on purpose (`pruned` in the verify's report,
// "source/collection"): not checked, as nothing of them is left, and not a problem.
function prunedNote(report) {
  const pruned = report.pruned || [];
  if (!pruned.length) return [];
  return [el("div", { class: "meta", "data-verify-pruned": pruned.join(" ") },
    (report.objects.length ? "Not checked: " : "Nothing left to check: ") + pruned.join(", ") +
    (pruned.length === 1 ? " was" : " were") + " deleted by retention, as the retention rules in the config decided.")];
}

function problemText(p) { return p.what + ": " + p.detail + (p.where ? " (" + p.where + ")" : ""); }

async function verifyRun(button, run, result) {
  if (verifying.has(run.run_id)) return;
  verifying.add(run.run_id);
  verifyBusy(button, true);
  result.removeAttribute("data-verify");
  result.replaceChildren(el("span", { class: "meta" }, "checking the backups in the bucket …"));
  const asked = session;
  try {
    const report = await postJson("runs/" + encodeURIComponent(run.run_id) + "/verify", { quick: true });
    if (asked !== session) return;  // the token was forgotten meanwhile: nothing is shown
    const problems = report.problems.concat(...report.objects.map((o) => o.problems));
    result.setAttribute("data-verify", report.ok ? "ok" : "problems");
    if (report.ok) {
      // objects the trigger's time ran out before it checked are not vouched for
      const checked = report.objects.filter((o) => !o.unchecked);
      const noCrc = checked.filter((o) => o.crc64 !== "ok").length;
      result.replaceChildren(checked.length ? el("div", { class: "ok" },
        "✓ " + checked.length + (checked.length === 1 ? " backup object" : " backup objects") +
        " and their manifests are in the bucket with the recorded sizes" +
        (noCrc ? " (" + noCrc + " without a CRC64 to compare)" : " and CRC64") + ".") : null,
        checked.length < report.objects.length ? el("div", { class: "notice", "data-verify-unchecked": "" },
          "⚠ " + (report.next_step || (report.objects.length - checked.length) + " not checked: time ran out") + ".") : null,
        ...prunedNote(report));
    } else {
      result.replaceChildren(
        el("div", { class: "error" }, "✗ Verify found " + problems.length +
           (problems.length === 1 ? " problem" : " problems") + ":"),
        el("ul", { class: "problem-list" }, ...problems.map((p) => el("li", {}, problemText(p)))),
        ...prunedNote(report));
    }
    // the verify is kept on the run: the Collections table and the run's card show what it
    // found now, not at the next refresh (a minute away while no run is going)
    load();
  } catch (error) {
    if (asked !== session) return;
    if (error.status === 401) { failed(error); return; }
    result.setAttribute("data-verify", "error");
    result.replaceChildren(el("div", { class: "error" }, "Verify did not run: " + error.message));
  } finally {
    verifying.delete(run.run_id);
    // the card may have been redrawn meanwhile: its button now is not the one tapped
    document.querySelectorAll('button.verify[data-run-id="' + CSS.escape(run.run_id) + '"]')
      .forEach((shown) => verifyBusy(shown, false));
    verifyBusy(button, false);
  }
}

// Restores: the list, newest first, refreshed while one is running.
function restoreFacts(r) {
  const p = r.progress || {};
  const facts = [];
  if (r.step) facts.push("step " + r.step);
  if (p.objects) facts.push("objects sent " + p.objects_sent + "/" + p.objects);
  if (p.rows_written !== null && p.rows_written !== undefined) facts.push(count(p.rows_written) + " rows written");
  if (p.imported !== null && p.imported !== undefined) facts.push(count(p.imported) + " imported");
  if (p.rejected) facts.push(count(p.rejected) + " rejected");
  if (p.records_before !== null && p.records_before !== undefined) {
    facts.push("records before " + count(p.records_before) +
               (p.records_after !== null && p.records_after !== undefined ? ", after " + count(p.records_after) : ""));
  }
  if (r.attempts) facts.push(r.attempts + (r.attempts === 1 ? " retry" : " retries"));
  if (p.note) facts.push(p.note);
  return facts;
}

function restoreItem(r) {
  const known = r.source !== undefined;
  return el("div", { class: "restore-item " + r.status, "data-restore-id": r.restore_id,
                     "data-restore-status": r.status },
    el("div", { class: "job-title" },
      el("span", { class: "badge " + r.status }, r.status),
      el("span", { class: "job-name" }, known ? r.source + " / " + r.collection + " → " + r.target : r.restore_id)),
    known ? el("div", { class: "meta" }, ["mode " + r.mode, count(r.records) + " records from run " + r.backup_run_id,
                                          "started " + when(r.created_at),
                                          r.finished_at ? "ended " + when(r.finished_at) : null]
                                         .filter(Boolean).join(" · ")) : null,
    el("div", { class: "meta restore-progress" }, restoreFacts(r).join(" · ")),
    r.forced ? el("div", { class: "meta" }, "forced although the backup failed its verify or cannot be restored as it was") : null,
    r.error ? el("div", { class: r.status === "failed" ? "error" : "meta" },
                 (r.status === "failed" ? "" : "last retry: ") + r.error) : null,
    el("div", { class: "key" }, "restore " + r.restore_id));
}

// The button under a listing that fetches its next older page (GET path?before=), then
// draws the listing again with `show`.
function olderButton(listing, label, path, items, show) {
  const button = el("button", { type: "button", class: "older" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    const asked = session;
    try {
      const page = await api(path + "before=" + encodeURIComponent(listing.next));
      if (asked !== session) return;
      listing.older = true;
      listing.next = page.next;
      listing.keep(items(page));
      show();
    } catch (error) {
      if (asked !== session) return;
      button.disabled = false;
      failed(error);
    }
  });
  return button;
}

function showRestores() {
  const restores = [...restoresListed.shown.values()].sort((a, b) =>
    (b.created_at || "").localeCompare(a.created_at || "") || b.restore_id.localeCompare(a.restore_id));
  $("restores").replaceChildren(...restores.map(restoreItem));
  if (!restores.length) {
    $("restores").append(el("p", { class: "meta" }, "No restores yet: open a run below and tap Restore on a finished backup."));
  }
  if (restoresListed.next) {
    $("restores").append(olderButton(restoresListed, "Show older restores", "restores?",
                                     (page) => page.restores, showRestores));
  }
}

async function loadRestores() {
  clearTimeout(restoresTimer);
  const asked = session;
  try {
    const listing = await api("restores");
    if (asked !== session) return;
    restoresListed.firstPage(listing.restores, listing.next);
    showRestores();
    restoresGoing = listing.restores.some((r) => r.status === "running");
    if (restoresSaid !== null && $("message").textContent === restoresSaid) say("");
    restoresSaid = null;
    if (restoresGoing) restoresTimer = setTimeout(loadRestores, RESTORE_POLL_MS);
  } catch (error) {
    if (asked !== session) return;
    failed(error);
    if (error.status !== 401) restoresSaid = $("message").textContent;
    // one listing that got no answer must not stop following a running restore
    if (error.status !== 401 && restoresGoing) restoresTimer = setTimeout(loadRestores, RESTORE_POLL_MS);
  }
}

// The restore dialog: a preview (what will be written where), then the real request, then
// the restore's progress until it ends.
const restore = { job: null, opened: 0, seq: 0, plan: null, key: null, starting: false,
                  following: null, followTimer: null, typingTimer: null };

function restoreMode() { return document.querySelector("#restore-form input[name=mode]:checked").value; }

function restoreRequest(preview) {
  const job = restore.job;
  const body = { run_id: job.run_id, source: job.source, collection: job.collection,
                 mode: restoreMode(), force: $("restore-force").checked, preview };
  const into = $("restore-into").value.trim();
  if (into) body.into = into;
  if (!preview && body.mode !== "new") body.confirm = $("restore-confirm").value;
  return body;
}

const MODE_TEXT = {
  new: "new: into a new (or empty) collection; the original is not touched",
  insert: "insert: added to what is there; records whose _id is already there are rejected",
  upsert: "upsert: added to what is there, overwriting records with the same _id",
};

function planView(plan) {
  const row = (label, field, ...value) => [el("dt", {}, label), el("dd", { "data-field": field }, ...value)];
  return [
    el("p", { class: "plan-summary" }, "Writes " + count(plan.records) + " records of " + plan.source + " / " +
       plan.collection + " (backup run " + plan.backup_run_id + ") into " + plan.source + " / " + plan.target +
       (plan.target_exists ? ", which exists." : ", a new collection the restore creates.")),
    el("dl", {},
      ...row("source", "source", plan.source),
      ...row("collection", "collection", plan.collection),
      ...row("backup run", "backup_run_id", plan.backup_run_id),
      ...row("writes into", "target", el("strong", {}, plan.target)),
      ...row("target exists", "target_exists", plan.target_exists ? "yes" : "no: it will be created"),
      ...row("mode", "mode", MODE_TEXT[plan.mode] || plan.mode),
      ...row("records", "records", count(plan.records)),
      ...row("size", "bytes", bytes(plan.bytes) + " of " + plan.file_type.toUpperCase()),
      ...row(plan.objects.length === 1 ? "object" : "objects (" + plan.objects.length + ")", "objects",
             ...plan.objects.map((key) => el("div", { class: "key" }, key)))),
  ];
}

function showProblems(lines) {
  const box = $("restore-problems");
  box.classList.toggle("hidden", !lines.length);
  box.replaceChildren(...(lines.length ? [
    el("div", {}, "This backup fails its verify or cannot be restored as it was:"),
    el("ul", { class: "problem-list" }, ...lines.map((line) => el("li", {}, line)))] : []));
  $("restore-force-label").classList.toggle("hidden", !lines.length && !$("restore-force").checked);
}

function restoreReady() {
  const plan = restore.plan;
  const confirmed = !plan || !plan.confirm_needed || $("restore-confirm").value === plan.target;
  $("restore-start").disabled = !plan || restore.starting || !confirmed ||
    (plan.verify_problems.length > 0 && !$("restore-force").checked);
}

async function previewRestore() {
  clearTimeout(restore.typingTimer);
  const seq = ++restore.seq;
  restore.plan = null;
  restore.key = null;  // a new plan gets a new key when it is started
  restoreReady();
  $("restore-loading").classList.remove("hidden");
  $("restore-error").textContent = "";
  try {
    const answer = await postJson("restores", restoreRequest(true));
    if (seq !== restore.seq) return;
    const plan = answer.plan;
    restore.plan = plan;
    $("restore-plan").replaceChildren(...planView(plan));
    $("restore-plan").classList.remove("stale");
    showProblems(plan.verify_problems.concat(
      (plan.restore_caveats || []).map((c) => "exported with " + c.option + ": " + c.why)));
    $("restore-confirm-box").classList.toggle("hidden", !plan.confirm_needed);
    $("restore-confirm-name").textContent = plan.target;
    if (!$("restore-into").value.trim()) $("restore-into").placeholder = plan.target;
  } catch (error) {
    if (seq !== restore.seq) return;
    if (error.status === 401) { $("restore").close(); failed(error); return; }
    $("restore-plan").replaceChildren();
    $("restore-plan").classList.remove("stale");
    $("restore-confirm-box").classList.add("hidden");
    if (error.field === "force") showProblems([error.message]);
    else $("restore-error").textContent = error.message;
  } finally {
    if (seq === restore.seq) $("restore-loading").classList.add("hidden");
    restoreReady();
  }
}

function openRestore(job) {
  restore.opened++;
  restore.job = job;
  $("restore-setup").inert = false;
  restore.starting = false;
  restore.following = null;
  clearTimeout(restore.followTimer);
  $("restore-form").reset();
  $("restore-into").placeholder = "";
  $("restore-title").textContent = "Restore " + job.source + " / " + job.collection;
  $("restore-setup").classList.remove("hidden");
  $("restore-progress").classList.add("hidden");
  $("restore-progress").replaceChildren();
  $("restore-start").classList.remove("hidden");
  $("restore-cancel").textContent = "Cancel";
  $("restore-plan").replaceChildren();
  $("restore-confirm-box").classList.add("hidden");
  $("restore-force-label").classList.add("hidden");
  showProblems([]);
  $("restore").showModal();
  previewRestore();
}

async function startRestore() {
  if (!restore.plan || restore.starting) return;
  restore.starting = true;
  restoreReady();
  $("restore-error").textContent = "";
  restore.key = restore.key || freshKey("page-restore-");  // kept if this request is sent again
  const opened = restore.opened, job = restore.job;
  $("restore-setup").inert = true;  // what was asked for stays what is shown
  try {
    const answer = await postJson("restores", restoreRequest(false), { "Idempotency-Key": restore.key });
    if (opened !== restore.opened || !$("restore").open) {  // closed meanwhile: it started all the same
      tell("Started restore " + answer.restore_id + ".");
      loadRestores();
      return;
    }
    restore.seq++;  // this dialog now shows the restore, not the form
    $("restore-setup").classList.add("hidden");
    $("restore-start").classList.add("hidden");
    $("restore-cancel").textContent = "Close";
    const plan = answer.plan;
    showRestoreProgress({ restore_id: answer.restore_id, status: "running", source: plan.source,
                          collection: plan.collection, target: plan.target, mode: plan.mode,
                          backup_run_id: plan.backup_run_id, records: plan.records, forced: plan.forced });
    tell("Started restore " + answer.restore_id + " into " + plan.source + " / " + plan.target + ".");
    followRestore(answer.restore_id);
  } catch (error) {
    if (error.status === 401) { $("restore").close(); failed(error); return; }
    const refused = error.status >= 400 && error.status < 500;  // else it may have started
    if (opened !== restore.opened || !$("restore").open) {  // closed meanwhile: say it here
      say("The restore of " + job.source + " / " + job.collection + (refused
          ? " did not start: " : " got no answer (it may have started: see Restores): ") +
          error.message, true);
      return;
    }
    if (error.field === "force") showProblems([error.message]);
    else $("restore-error").textContent = refused ? error.message : noAnswerText(error);
  } finally {
    if (opened === restore.opened) {
      $("restore-setup").inert = false;
      restore.starting = false;
      restoreReady();
    }
  }
}

// No answer (the network dropped it, a 5xx): the restore may have started. Start again
// sends the same Idempotency-Key (restore.key: a changed form gets a new one), and the API
// answers a resent key with the restore it started, or starts it now (POST /restores:
// shared/service/restore/plan.py, _resent and start_restore).
function noAnswerText(error) {
  return (error.status ? "HTTP " + error.status : "No answer") + " (" + error.message +
         "): the restore may have started. Tapping Start " +
         "again without changing anything is safe: it is sent with the same Idempotency-Key, so " +
         "it shows that restore, or starts it if it did not start. Restores lists what started.";
}

function showRestoreProgress(r) {
  const box = $("restore-progress");
  box.classList.remove("hidden");
  const ended = r.status !== "running";
  box.replaceChildren(restoreItem(r), el("p", { class: "meta" }, ended
    ? (r.status === "succeeded" ? "The restore finished." : "The restore failed; the error above says why.")
    : "Following it every " + RESTORE_POLL_MS / 1000 + " s; you may close this, it goes on."));
}

async function followRestore(id) {
  restore.following = id;
  clearTimeout(restore.followTimer);
  try {
    const r = await api("restores/" + encodeURIComponent(id));
    if (restore.following !== id) return;
    showRestoreProgress(r);
    const listed = document.querySelector('#restores [data-restore-id="' + CSS.escape(id) + '"]');
    if (restoresListed.shown.has(id)) restoresListed.shown.set(id, r);
    if (listed) listed.replaceWith(restoreItem(r));
    else loadRestores();
    if (r.status === "running") restore.followTimer = setTimeout(() => followRestore(id), RESTORE_POLL_MS);
    else loadRestores();
  } catch (error) {
    if (restore.following !== id) return;
    if (error.status === 401) { $("restore").close(); failed(error); return; }
    $("restore-error").textContent = "Could not ask how the restore stands: " + error.message + "; trying again.";
    restore.followTimer = setTimeout(() => followRestore(id), RESTORE_POLL_MS);
  }
}

function closedRestore() {
  // The close event comes a task after close(): if a tap has opened the dialog again
  // meanwhile, this event is about the earlier restore, and the new one is left alone.
  if ($("restore").open) return;
  restore.seq++;
  restore.following = null;
  clearTimeout(restore.followTimer);
  clearTimeout(restore.typingTimer);
  loadRestores();
}

function newestFirst(a, b) {
  return (b.created_at || "").localeCompare(a.created_at || "") || b.run_id.localeCompare(a.run_id);
}

function showRuns() {
  const runs = [...runsListed.shown.values()].sort(newestFirst);
  // a card the user opened or closed stays so when the list is redrawn
  const opened = new Map([...$("runs").querySelectorAll("details[data-run-id]")]
    .map((card) => [card.dataset.runId, card.open]));
  $("runs").replaceChildren(...runs.map((run) => runCard(run, runDetails.get(run.run_id), opened.get(run.run_id))));
  if (!runs.length) $("runs").append(el("p", { class: "meta" }, "No runs yet. Start one with “Back up now”."));
  if (runsListed.next) {  // older runs' jobs are fetched when their card is opened
    $("runs").append(olderButton(runsListed, "Show older runs", "runs?limit=" + LIST_SIZE + "&",
                                 (page) => page.runs, showRuns));
  }
}

async function load() {
  clearTimeout(refreshTimer);
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(""); return; }
  showApp();
  const asked = session;
  try {
    const [page, listing] = await Promise.all([api("runs?limit=" + LIST_SIZE), api("collections"),
                                               loadRestores()]);
    if (asked !== session) return;
    $("collections").replaceChildren(...unsentAlarm(listing), collectionTable(listing));
    const runs = page.runs;
    const details = await Promise.all(runs.slice(0, DETAILED).map(
      (run) => api("runs/" + encodeURIComponent(run.run_id))));
    if (asked !== session) return;
    chart($("chart-bytes"), runs.filter((r) => r.finished_at), (r) => r.totals.bytes,
          "bytes per run", bytes);
    chart($("chart-duration"), runs.filter((r) => r.finished_at), (r) => r.duration_seconds,
          "duration per run", seconds);
    runsListed.firstPage(runs, page.next);
    runDetails.clear();
    details.forEach((detail) => runDetails.set(detail.run_id, detail));
    showRuns();
    const running = runs.some((r) => r.status === "running");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + (running ? " · refreshing while runs are going" : "");
    const shown = $("message");
    if (shown.textContent === refreshSaid || (!shown.classList.contains("bad") && toldEnough())) say("");
    refreshSaid = null;
    runsGoing = running;
    refreshTimer = setTimeout(load, running ? 5000 : 60000);
  } catch (error) {
    if (asked !== session) return;
    failed(error);
    if (error.status !== 401) refreshSaid = $("message").textContent;
    // a refresh that got no answer (the network, a 5xx) is tried again at the same pace:
    // one blip must not stop the page following a run; a refused token asks for it instead
    if (error.status !== 401) refreshTimer = setTimeout(load, runsGoing ? 5000 : 60000);
  }
}

// Kept while a tap got no answer from the API (the network dropped it, or a 5xx): the
// run may have started, so the next tap sends the same key and lands on that run.
let runKey = null;

async function backUpNow() {
  const button = $("run-now");
  button.disabled = true;
  runKey = runKey || freshKey("page-");
  try {
    const answer = await postJson("runs", {}, { "Idempotency-Key": runKey });
    runKey = null;  // answered: the next tap is a new backup
    tell("Started run " + answer.run_id + ".");
    await load();
  } catch (error) {
    if (error.status >= 400 && error.status < 500) runKey = null;  // refused: nothing started
    failed(error);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("click", clicked, true);  // before the tap's own handler says anything
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
$("restore-form").addEventListener("submit", (event) => event.preventDefault());
document.querySelectorAll("#restore-form input[name=mode]").forEach((radio) => {
  radio.addEventListener("change", () => {
    $("restore-confirm").value = "";  // typed for the old target
    previewRestore();
  });
});
$("restore-into").addEventListener("input", () => {
  clearTimeout(restore.typingTimer);
  restore.seq++;  // what is shown is for the old name until the preview answers
  restore.plan = null;
  restoreReady();
  $("restore-plan").classList.add("stale");
  restore.typingTimer = setTimeout(previewRestore, 500);
});
$("restore-force").addEventListener("change", previewRestore);
$("restore-confirm").addEventListener("input", restoreReady);
$("restore-start").addEventListener("click", startRestore);
$("restore-cancel").addEventListener("click", () => $("restore").close());
$("restore").addEventListener("close", closedRestore);
load();

// What both pages share: the API token, REST calls, formatting.
"use strict";

(function takeTokenFromUrl() {
  const q = new URLSearchParams(location.search);
  if (q.get("token")) {
    localStorage.setItem("rl_api_token", q.get("token"));
    q.delete("token");
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  }
})();

function token() { return localStorage.getItem("rl_api_token") || ""; }

function bindTokenField(input) {
  input.value = token();
  input.addEventListener("change", () => localStorage.setItem("rl_api_token", input.value.trim()));
}

async function api(method, path, body) {
  const headers = {"Content-Type": "application/json"};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const r = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : r.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`HTTP ${r.status}: ${detail}`);
  }
  return data;
}

// Text from the API placed in innerHTML: a run's reason may quote whatever an env raised.
function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}

// A running run that no actor serves makes no progress: say so, and how to start one.
const ACTOR_HINT = "python -m services.actor --nats URL";
function starved(run) { return run.state === "running" && !run.actors; }

function num(v, digits) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  return v.toLocaleString(undefined, {maximumFractionDigits: digits === undefined ? 1 : digits});
}

function showError(el, e) {
  el.textContent = e ? String(e.message || e) : "";
  el.hidden = !e;
}

async function runAction(id, action, errEl) {
  try {
    await api("POST", `/runs/${encodeURIComponent(id)}/${action}`);
    showError(errEl, null);
  } catch (e) {
    showError(errEl, new Error(`${action} ${id}: ${e.message}`));
  }
}

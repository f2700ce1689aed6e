// lvmkit serve: the playground (POST /v1/next) and the runs dashboard (GET /v1/runs, polled). No libraries.
"use strict";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(250, Number(params.get("poll")) || 2000);
let token = sessionStorage.getItem("lvmkit-token") || "";

function esc(text) {
  const d = document.createElement("div");
  d.textContent = text == null ? "" : String(text);
  return d.innerHTML;
}

function fmt(v, digits = 4) {
  if (v == null) return "–";
  return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) : String(v);
}

async function api(path, body) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) $("#token-form").hidden = false;
  const data = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(`${res.status}: ${data.detail || res.statusText}`);
  return data;
}

function duration(seconds) {
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

// ------------------------------------------------------------------------------------------------ tabs
const tabs = [...document.querySelectorAll('[role="tab"]')];

function select(tab, focus) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $("#" + t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  const view = tab.getAttribute("aria-controls");
  if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  if (view === "runs") startPolling(); else stopPolling();
}

tabs.forEach((t, i) => {
  t.addEventListener("click", () => select(t, false));
  t.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step) { e.preventDefault(); select(tabs[(i + step + tabs.length) % tabs.length], true); }
    if (e.key === "Home") { e.preventDefault(); select(tabs[0], true); }
    if (e.key === "End") { e.preventDefault(); select(tabs[tabs.length - 1], true); }
  });
});

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("lvmkit-token", token);
  $("#token-form").hidden = true;
  loadInfo();
});

// ------------------------------------------------------------------------------------------------ info
async function loadInfo() {
  try {
    const info = await api("/v1/info");
    const b = info.bank, m = info.models.map((x) => x.name).join(", ");
    const idx = info.index.type + (info.index.nprobe ? ` nprobe ${info.index.nprobe}` : "");
    $("#about").textContent = `bank ${b.path} · ${b.chunks.toLocaleString()} chunks · ${info.encoder.name} ` +
      `(${info.encoder.dim}-d) · ${idx} index · answered by ${m} · ≤ ${info.limits.max_context_chunks} context chunks`;
  } catch (err) {
    $("#about").textContent = "info unavailable: " + err.message;
  }
}

// ------------------------------------------------------------------------------------------ playground
function hitItem(h) {
  const label = h.label ? ` · ${esc(h.label)}` : "";
  return `<li><div class="hit-head"><span class="title">${esc(h.title)}</span>` +
    `<span class="score" title="inner product">${h.score.toFixed(3)}</span></div>` +
    `<div class="src muted">article ${esc(h.article_id)} · chunk ${h.chunk_index} · id ${h.chunk_id}${label}</div>` +
    `<div class="text">${esc(h.text)}</div></li>`;
}

async function predict(e) {
  if (e) e.preventDefault();
  const paragraph = $("#paragraph").value;
  const button = $("#predict");
  $("#next-error").hidden = true;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const r = await api("/v1/next", {
      paragraph, k: Number($("#k").value) || 5, exclude_context: $("#exclude").checked,
    });
    $("#run-name").textContent = r.run;
    $("#predicted").innerHTML = r.predicted.map(hitItem).join("") || "<li>no result</li>";
    $("#copy-last").innerHTML = r.copy_last.map(hitItem).join("") || "<li>no result</li>";
    $("#context").innerHTML = r.context.map((c) => `<li>${esc(c)}</li>`).join("");
    $("#context-count").textContent = `${r.context.length} (the model reads the last ${r.context_used})`;
    const t = r.timings_ms;
    $("#timings").innerHTML = ["encode", "predict", "search", "total"]
      .map((s) => `<span><b>${s}</b> ${t[s].toFixed(1)} ms</span>`).join("");
    $("#next-out").hidden = false;
  } catch (err) {
    $("#next-error").textContent = err.message;
    $("#next-error").hidden = false;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

$("#next-form").addEventListener("submit", predict);
$("#paragraph").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) predict(e);
});

// ------------------------------------------------------------------------------------------- dashboard
const COLORS = ["#2563eb", "#9ca3af", "#dc2626", "#059669"];

function chart(title, series) {
  // series: [{name, points: [[x, y]], dash}] -> an SVG line chart with its min/max and a legend
  const pts = series.flatMap((s) => s.points);
  if (pts.length < 1) return "";
  const W = 320, H = 130, L = 44, R = 8, T = 8, B = 22;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const lines = series.map((s, i) => {
    if (!s.points.length) return "";
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const dots = s.points.length < 40 ? s.points.map((p) =>
      `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="2.2" fill="${COLORS[i]}"/>`).join("") : "";
    return `<path d="${d}" fill="none" stroke="${COLORS[i]}" stroke-width="1.8"${s.dash ? ' stroke-dasharray="4 3"' : ""}/>${dots}`;
  }).join("");
  const legend = series.map((s, i) => `<span><i style="background:${COLORS[i]}"></i>${esc(s.name)}</span>`).join("");
  return `<figure class="chart"><figcaption>${esc(title)}</figcaption>` +
    `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">` +
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" class="axis"/>` +
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" class="axis"/>` +
    `<text x="${L - 4}" y="${T + 8}" text-anchor="end">${fmt(y1, 3)}</text>` +
    `<text x="${L - 4}" y="${H - B}" text-anchor="end">${fmt(y0, 3)}</text>` +
    `<text x="${L}" y="${H - 6}">${fmt(x0)}</text><text x="${W - R}" y="${H - 6}" text-anchor="end">${fmt(x1)}</text>` +
    `${lines}</svg><div class="legend">${legend}</div></figure>`;
}

function curves(detail) {
  const ep = detail.epochs;
  const metric = ["val_hit@5", "val_recall@10", "val_cos"].find((m) => ep.some((r) => m in r));
  const out = [];
  if (metric) {
    const base = metric.replace("val_", "val_copy_last_");
    out.push(chart(`${metric} per epoch`, [
      { name: "model", points: ep.filter((r) => metric in r).map((r) => [r.epoch, r[metric]]) },
      { name: "copy_last", dash: true, points: ep.filter((r) => base in r).map((r) => [r.epoch, r[base]]) },
    ]));
  }
  const steps = detail.steps.filter((r) => r.train_loss != null || r.loss != null);
  if (steps.length) {
    out.push(chart("training loss per step", [
      { name: "train loss", points: steps.map((r) => [r.step, r.train_loss ?? r.loss]) },
    ]));
  }
  return out.join("");
}

function gates(detail) {
  const rows = detail.gates || [];
  if (!rows.length) return '<p class="muted">no gates</p>';
  const body = rows.map((g) => {
    const bound = [g.min != null ? `≥ ${g.min}` : "", g.max != null ? `≤ ${g.max}` : ""].filter(Boolean).join(", ");
    const state = g.held == null ? "pending" : g.held ? "held" : "failed";
    return `<tr><td>${esc(g.metric)}</td><td>${g.epoch ?? "–"}</td><td>${bound}</td>` +
      `<td>${fmt(g.value)}</td><td class="gate-${state}">${state}</td></tr>`;
  }).join("");
  return `<table class="gates"><caption>Gates</caption><thead><tr><th>metric</th><th>epoch</th>` +
    `<th>bound</th><th>value</th><th>state</th></tr></thead><tbody>${body}</tbody></table>`;
}

function card(s, detail) {
  const best = s.best_metric ? `${esc(s.best_metric)} ${fmt(s.best_value)} (epoch ${fmt(s.best_epoch)})` : "–";
  const latest = s.latest || {};
  const shown = ["train_loss", "val_hit@5", "val_cos"].filter((k) => k in latest).map((k) => {
    const base = latest[k.replace("val_", "val_copy_last_")];
    const b = k.startsWith("val_") && base != null ? ` <span class="muted">(copy_last ${fmt(base)})</span>` : "";
    return `<div><dt>${esc(k)}</dt><dd>${fmt(latest[k])}${b}</dd></div>`;
  }).join("");
  const eta = s.eta_s != null ? `<div><dt>ETA (training)</dt><dd>${duration(s.eta_s)}</dd></div>` : "";
  const report = s.has_report
    ? `<a class="report" href="/v1/runs/${encodeURIComponent(s.name)}/report" target="_blank" rel="noopener">HTML report</a>` : "";
  return `<article class="card" data-run="${esc(s.name)}" aria-labelledby="run-${esc(s.name)}">` +
    `<header><h2 id="run-${esc(s.name)}">${esc(s.name)}</h2><span class="state state-${esc(s.state)}">${esc(s.state)}</span></header>` +
    `<dl><div><dt>epoch</dt><dd class="epoch">${fmt(s.epoch)} / ${fmt(s.epochs)}</dd></div>` +
    `<div><dt>step</dt><dd>${fmt(s.step)}</dd></div><div><dt>best</dt><dd>${best}</dd></div>${shown}${eta}</dl>` +
    (s.message ? `<p class="muted">${esc(s.message)}</p>` : "") +
    (detail ? curves(detail) + gates(detail) : "") + report + "</article>";
}

let timer = null;
const details = {};

async function refreshRuns() {
  try {
    const list = await api("/v1/runs");
    $("#runs-dir").textContent = list.runs_dir ? `runs in ${list.runs_dir}` : "no --runs-dir given";
    await Promise.all(list.runs.map(async (s) => {
      const key = `${s.state}/${s.epoch}/${s.step}`;
      if (!details[s.name] || details[s.name].key !== key) {
        details[s.name] = { key, detail: await api(`/v1/runs/${encodeURIComponent(s.name)}`).catch(() => null) };
      }
    }));
    const html = list.runs.map((s) => card(s, details[s.name] && details[s.name].detail)).join("");
    $("#run-cards").innerHTML = html || '<p class="muted">no runs yet</p>';
    $("#runs-error").hidden = true;
  } catch (err) {
    $("#runs-error").textContent = err.message;
    $("#runs-error").hidden = false;
  }
}

$("#run-cards").addEventListener("click", async (e) => {
  const a = e.target.closest("a.report");
  if (!a || !token) return; // without a token the plain link works
  e.preventDefault();
  const res = await fetch(a.href, { headers: { Authorization: "Bearer " + token } });
  const blob = await res.blob();
  window.open(URL.createObjectURL(blob), "_blank", "noopener");
});

function startPolling() {
  if (timer) return;
  $("#poll-note").textContent = `· refreshed every ${(POLL_MS / 1000).toFixed(1)} s`;
  refreshRuns();
  timer = setInterval(refreshRuns, POLL_MS);
}

function stopPolling() {
  clearInterval(timer);
  timer = null;
}

loadInfo();
select(location.hash === "#runs" ? tabs[1] : tabs[0], false);

// agentrl view: the episode list, one episode as its sub-traces with per-token colours, a per-turn chart,
// and the same task from another arm side by side. Data: the embedded block (an exported page) or the
// server's /api/index and /api/episode?id=N (one episode per request, fetched when it is opened).
"use strict";

const NEG = [178, 24, 43];  // colour of the most negative value on the scale
const POS = [33, 102, 172];  // colour of the most positive value
const KIND_LABELS = {
  system: "system prompt", task: "task", summary: "summary that opened this window",
  summary_request: "compaction request", tool_result: "tool result", observation: "observation",
  action: "action", policy_summary: "summary written by the policy (trained)",
  context: "kept turn (context here, trained where it was sampled)", other: "message",
};
const state = { index: null, embedded: null, cache: new Map(), field: "advantages", compareArm: "", current: null };
const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function showError(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  return Number(v).toPrecision(6).replace(/\.?0+$/, "").replace(/\.?0+e/, "e");
}

// ---- data -------------------------------------------------------------------------------------------

async function loadIndex() {
  const block = $("agentrl-data");
  if (block) {
    state.embedded = JSON.parse(block.textContent);
    return state.embedded.index;
  }
  const response = await fetch("api/index");
  if (!response.ok) throw new Error(`api/index: HTTP ${response.status}`);
  return response.json();
}

async function loadEpisode(id) {
  if (state.cache.has(id)) return state.cache.get(id);
  const entry = state.index.episodes[id];
  let data;
  if (entry && entry.error) data = { error: entry.error };
  else if (state.embedded) data = state.embedded.episodes[String(id)] || { error: `episode ${id} is not in this exported page` };
  else {
    try {
      const response = await fetch(`api/episode?id=${id}`);
      data = await response.json();
    } catch (e) {
      data = { error: `episode ${id}: the server did not answer (${e.message})` };
    }
  }
  state.cache.set(id, data);
  return data;
}

// ---- the list -----------------------------------------------------------------------------------------

function fillSelect(select, values, label) {
  select.innerHTML = `<option value="">${label}</option>` +
    values.map((v) => `<option value="${escapeHtml(v)}">${escapeHtml(v)}</option>`).join("");
}

function uniqueSorted(values, numeric) {
  const out = [...new Set(values)];
  return numeric ? out.sort((a, b) => a - b) : out.sort();
}

function setUpFilters() {
  const good = state.index.episodes.filter((e) => !e.error);
  fillSelect($("f-iteration"), uniqueSorted(good.map((e) => e.iteration), true), "all");
  fillSelect($("f-task"), uniqueSorted(good.map((e) => e.task_id)), "all");
  fillSelect($("f-success"), ["yes", "no"], "any");
  fillSelect($("f-reason"), uniqueSorted(good.map((e) => e.reason)), "any");
  fillSelect($("f-subs"), uniqueSorted(good.map((e) => e.sub_traces), true), "any");
  for (const id of ["f-iteration", "f-task", "f-success", "f-reason", "f-subs", "f-sort"]) {
    $(id).addEventListener("change", renderList);
  }
  const arms = uniqueSorted(state.index.runs.map((r) => r.arm));
  if (arms.length > 1) {
    $("compare-label").hidden = false;
    fillSelect($("compare-arm"), arms, "none");
    $("compare-arm").addEventListener("change", () => { state.compareArm = $("compare-arm").value; renderCurrent(); });
  }
  $("field").addEventListener("change", () => { state.field = $("field").value; renderCurrent(); });
}

function filtered() {
  const it = $("f-iteration").value, task = $("f-task").value, ok = $("f-success").value;
  const reason = $("f-reason").value, subs = $("f-subs").value, sort = $("f-sort").value;
  const rows = state.index.episodes.filter((e) => e.error ? !(it || task || ok || reason || subs) : (
    (!it || String(e.iteration) === it) && (!task || e.task_id === task) &&
    (!ok || (ok === "yes") === e.success) && (!reason || e.reason === reason) &&
    (!subs || String(e.sub_traces) === subs)));
  const key = { reward: (e) => e.reward ?? -Infinity, length: (e) => e.tokens ?? -1 }[sort.split("-")[0]];
  if (key) rows.sort((a, b) => (key(a) - key(b)) * (sort.endsWith("desc") ? -1 : 1));
  return rows;
}

function runLabel(entry) {
  return entry.run === "." ? entry.arm : entry.run;
}

function renderList() {
  const rows = filtered();
  const total = state.index.episodes.length;
  const count = $("episode-count");
  count.dataset.count = rows.length;
  count.textContent = `${rows.length} of ${total} episodes` +
    (state.index.left_out ? ` (${state.index.left_out} more in the run, left out of this export)` : "");
  $("episode-list").querySelector("tbody").innerHTML = rows.map((e) => e.error
    ? `<tr class="bad" data-id="${e.id}"><td>${escapeHtml(runLabel(e))}</td><td>${e.iteration}</td><td colspan="5">unreadable line ${e.line}</td></tr>`
    : `<tr data-id="${e.id}" class="${state.current === e.id ? "selected" : ""}"><td>${escapeHtml(runLabel(e))}</td>` +
      `<td>${e.iteration}</td><td>${escapeHtml(e.task_id)}</td><td>${fmt(e.reward)}</td><td>${e.sub_traces}</td>` +
      `<td>${e.tokens}</td><td>${escapeHtml(e.success ? "success" : e.reason)}</td></tr>`).join("");
  for (const tr of $("episode-list").querySelectorAll("tbody tr")) {
    tr.addEventListener("click", () => openEpisode(Number(tr.dataset.id)));
  }
}

// ---- one episode --------------------------------------------------------------------------------------

function colour(value, scale) {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  const t = scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
  const target = t < 0 ? NEG : POS;
  const mix = target.map((c) => Math.round(255 + (c - 255) * Math.abs(t)));
  return `rgb(${mix[0]}, ${mix[1]}, ${mix[2]})`;
}

function scaleOf(data, field) {
  let scale = 0;
  for (const sub of data.sub_traces) {
    const values = sub.fields[field];
    if (!values) continue;
    sub.mask.forEach((m, i) => { if (m && values[i] !== null) scale = Math.max(scale, Math.abs(values[i])); });
  }
  return scale;
}

function turnsOf(data, field) {
  const turns = [];
  data.sub_traces.forEach((sub, k) => {
    for (const m of sub.messages) {
      if (m.kind !== "action" && m.kind !== "policy_summary") continue;
      const values = sub.fields[field] || [];
      let sum = 0, n = 0;
      for (let i = m.start; i < m.end; i++) if (sub.mask[i] && values[i] !== null && values[i] !== undefined) { sum += values[i]; n++; }
      turns.push({ k, start: m.start, mean: n ? sum / n : null, kind: m.kind });
    }
  });
  return turns;
}

function chartSvg(turns, scale, paneId) {
  // bar heights on the turns' own range (a turn's mean is smaller than its largest token); colours on
  // the tokens' scale, as in the legend
  const w = 600, h = 90, mid = h / 2, n = Math.max(turns.length, 1), bw = w / n;
  const height = Math.max(0, ...turns.map((t) => (t.mean === null ? 0 : Math.abs(t.mean))));
  let bars = "", lastK = 0;
  turns.forEach((t, j) => {
    if (t.k !== lastK) { bars += `<line x1="${j * bw}" x2="${j * bw}" y1="0" y2="${h}" stroke="#ffb300" stroke-dasharray="3,2"/>`; lastK = t.k; }
    if (t.mean === null) return;
    const size = height > 0 ? Math.abs(t.mean) / height * (mid - 4) : 0;
    const y = t.mean >= 0 ? mid - size : mid;
    bars += `<rect class="turn-bar" data-k="${t.k}" data-start="${t.start}" x="${j * bw + 1}" y="${y}" width="${Math.max(bw - 2, 1)}" height="${Math.max(size, 0.5)}" ` +
      `fill="${colour(t.mean, scale)}" stroke="#555" stroke-width="0.3"><title>turn ${j + 1} (window ${t.k + 1}): mean ${fmt(t.mean)}</title></rect>`;
  });
  return `<svg class="chart" id="${paneId}-chart" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">` +
    `<line x1="0" x2="${w}" y1="${mid}" y2="${mid}" stroke="#bbb"/>${bars}</svg>`;
}

function tokensHtml(sub, k, start, end, field, scale) {
  const values = sub.fields[field] || [];
  const rewards = sub.fields.rewards || [];
  let out = "";
  for (let i = start; i < end; i++) {
    const text = escapeHtml(sub.text[i]);
    const reward = rewards[i] ? `<span class="reward-badge">reward ${fmt(rewards[i])}</span>` : "";
    if (sub.mask[i]) {
      const c = colour(values[i], scale);
      out += `<span class="tok pol${rewards[i] ? " rew" : ""}" data-k="${k}" data-i="${i}"${c ? ` style="background-color:${c}"` : ""}>${text}</span>${reward}`;
    } else {
      out += `<span class="tok obs${rewards[i] ? " rew" : ""}" data-k="${k}" data-i="${i}">${text}</span>${reward}`;
    }
  }
  return out;
}

function messageHtml(sub, k, m, field, scale) {
  const tokens = tokensHtml(sub, k, m.start, m.end, field, scale);
  const text = sub.text.slice(m.start, m.end).join("");
  let label = KIND_LABELS[m.kind] || m.kind;
  if (m.kind === "action" && text.includes("<tool_call>")) label = "action: tool call";
  const n = m.end - m.start;
  if (m.kind === "system" || m.kind === "task") {
    return `<details class="msg kind-${m.kind}" data-kind="${m.kind}"><summary>${label} (${n} tokens)</summary><div class="tokens">${tokens}</div></details>`;
  }
  return `<div class="msg kind-${m.kind}" data-kind="${m.kind}" data-start="${m.start}"><div class="label">${label}</div><div class="tokens">${tokens}</div></div>`;
}

function endingText(ep) {
  const info = ep.info || {};
  let text = ep.end === "terminated" ? "ended: terminated by the environment" : `ended: truncated (${ep.truncation_reason})`;
  text += info.success ? ", success" : ", no success";
  if (info.env_error) text += `; environment error: ${info.env_error}`;
  return text;
}

function episodeHtml(data, field, paneId) {
  const ep = data.episode, entry = data.entry;
  const scale = scaleOf(data, field);
  const reward = data.sub_traces.reduce((s, sub) => s + (sub.fields.rewards || []).reduce((a, b) => a + (b || 0), 0), 0);
  const has = data.sub_traces.some((sub) => sub.fields[field]);
  let html = `<div class="facts"><span><b>${escapeHtml(runLabel(entry))}</b> iteration ${entry.iteration}</span>` +
    `<span>task <b>${escapeHtml(ep.task_id)}</b></span><span>reward <b>${fmt(reward)}</b></span>` +
    `<span class="subtrace-count" data-count="${data.sub_traces.length}">${data.sub_traces.length} sub-traces</span>` +
    `<span>${ep.num_turns} turns</span><span>${ep.num_tool_errors} tool errors</span>` +
    `<span>${escapeHtml(endingText(ep))}</span></div>`;
  html += has
    ? `<div class="legend" data-field="${escapeHtml(field)}" data-scale="${scale}">${escapeHtml(field)}: <span>${fmt(-scale)}</span><span class="bar"></span><span>${fmt(scale)}</span>` +
      `<span class="obs-sample">grey: prompt/observation, not trained</span></div>`
    : `<div class="legend" data-field="${escapeHtml(field)}" data-scale="0">this run did not record ${escapeHtml(field)}; policy tokens are uncoloured</div>`;
  if (!data.has_text) html += `<div class="error">the run saved no tokenizer: tokens are shown as ids</div>`;
  html += chartSvg(turnsOf(data, field), scale, paneId);
  data.sub_traces.forEach((sub, k) => {
    const policy = sub.mask.reduce((a, b) => a + b, 0);
    html += `<div class="subtrace" data-k="${k}"><h3>sub-trace ${k + 1} of ${data.sub_traces.length}: ${sub.ids.length} tokens, ${policy} policy tokens</h3>`;
    if (k > 0) {
      const summary = sub.messages.find((m) => m.kind === "summary");
      const text = summary ? sub.text.slice(summary.start, summary.end).join("").replace(/^<\|im_start\|>user\n/, "").replace(/<\|im_end\|>\s*$/, "") : "(no summary: old turns were dropped)";
      html += `<div class="boundary" data-k="${k}"><b>compaction ${k}</b>: window ${k + 1} opens with<div class="summary-text">${escapeHtml(text)}</div></div>`;
    }
    for (const m of sub.messages) html += messageHtml(sub, k, m, field, scale);
    if (k === data.sub_traces.length - 1) html += `<div class="ending ${ep.end}">${escapeHtml(endingText(ep))}</div>`;
    html += `</div>`;
  });
  return html;
}

function counterpart(entry) {
  const candidates = state.index.episodes.filter((e) => !e.error && e.arm === state.compareArm && e.task_id === entry.task_id);
  const rank = (e) => (e.seed === entry.seed ? 0 : 2) + (e.iteration === entry.iteration ? 0 : 1);
  return candidates.sort((a, b) => rank(a) - rank(b))[0];
}

async function renderPane(pane, id, field) {
  const data = await loadEpisode(id);
  if (data.error) {
    pane.innerHTML = `<div class="error episode-error">${escapeHtml(data.error)}</div>`;
    return;
  }
  pane.innerHTML = episodeHtml(data, field, pane.id);
  pane.dataset.id = id;
  for (const bar of pane.querySelectorAll(".turn-bar")) {
    bar.addEventListener("click", () => {
      const target = pane.querySelector(`.subtrace[data-k="${bar.dataset.k}"] .msg[data-start="${bar.dataset.start}"]`);
      if (target) target.scrollIntoView({ block: "center" });
    });
  }
}

function fieldsOf(data) {
  const names = [];
  for (const sub of data.sub_traces || []) for (const name of Object.keys(sub.fields)) if (!names.includes(name)) names.push(name);
  return names;
}

async function renderCurrent() {
  if (state.current === null) return;
  const data = await loadEpisode(state.current);
  const names = fieldsOf(data);
  if (names.length && !names.includes(state.field)) state.field = names.includes("advantages") ? "advantages" : names[0];
  $("field").innerHTML = names.map((n) =>
    `<option value="${escapeHtml(n)}"${n === state.field ? " selected" : ""}>${escapeHtml(n)}</option>`).join("");
  await renderPane($("pane-a"), state.current, state.field);
  const b = $("pane-b");
  b.hidden = !state.compareArm;
  if (state.compareArm) {
    const entry = state.index.episodes[state.current];
    const other = counterpart(entry);
    if (other) await renderPane(b, other.id, state.field);
    else b.innerHTML = `<div class="error">no episode of task ${escapeHtml(entry.task_id)} in arm ${escapeHtml(state.compareArm)}</div>`;
  }
}

async function openEpisode(id) {
  state.current = id;
  history.replaceState(null, "", `#episode=${id}`);
  for (const tr of $("episode-list").querySelectorAll("tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  await renderCurrent();
  document.body.dataset.ready = "1";
}

// ---- the hover card -------------------------------------------------------------------------------------

function setUpTooltip() {
  const tip = $("tooltip");
  document.addEventListener("mouseover", async (event) => {
    const tok = event.target.closest && event.target.closest(".tok");
    if (!tok) { tip.hidden = true; return; }
    const pane = tok.closest(".pane");
    const data = await loadEpisode(Number(pane.dataset.id));
    const k = Number(tok.dataset.k), i = Number(tok.dataset.i), sub = data.sub_traces[k];
    const rows = Object.entries(sub.fields).map(([name, values]) =>
      `<tr data-field="${escapeHtml(name)}"><td>${escapeHtml(name)}</td><td>${fmt(values[i])}</td></tr>`).join("");
    tip.innerHTML = `<div>sub-trace ${k + 1}, token ${i} · id <b class="tip-id">${sub.ids[i]}</b></div>` +
      `<div>text <b class="tip-text">${escapeHtml(JSON.stringify(sub.text[i]))}</b></div>` +
      `<div>${sub.mask[i] ? "policy token (trained)" : "prompt/observation (not trained)"}</div><table>${rows}</table>`;
    tip.hidden = false;
    tip.style.left = `${Math.min(event.clientX + 12, window.innerWidth - 430)}px`;
    tip.style.top = `${event.clientY + 14}px`;
  });
}

async function main() {
  try {
    state.index = await loadIndex();
  } catch (e) {
    showError(`cannot read the episode index: ${e.message}`);
    return;
  }
  $("root").textContent = state.index.root;
  if (!state.index.episodes.length) { showError("this run has no episodes"); return; }
  setUpFilters();
  setUpTooltip();
  renderList();
  const match = /episode=(\d+)/.exec(location.hash);
  const first = filtered()[0];
  await openEpisode(match && state.index.episodes[Number(match[1])] ? Number(match[1]) : first.id);
}

main().catch((e) => showError(`viewer error: ${e.message}`));

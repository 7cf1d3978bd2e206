// The supervisors' wallboard: per line waiting, longest wait, overflow, service level,
// abandon rate, every seat as a tile; today's calls by legacy number and by category.
// Today's figures come from the engine (/api/today, counted by the database over every
// ticket of the day); everything is inserted as text.
"use strict";
let status = null;
let statusAt = 0;
let today = {lines: {}, by_number: {}, by_category: {}};
const LINE_ZH = {"110": "110 应急", "96345": "96345 公共服务"};
const pct = (x) => (x === null || x === undefined ? "–" : Math.round(100 * x) + "%");

async function refreshStatus() {
  status = await api("GET", "/api/status");
  statusAt = Date.now() / 1000;
  render();
}

function kpi(key, value, label, alert) {
  return el("div", {className: "kpi" + (alert ? " alert" : "")}, el("b", {data: {k: key}}, value), el("span", {}, label));
}

function render() {
  if (!status) return;
  document.getElementById("clock").textContent = new Date().toLocaleTimeString("zh-CN");
  const panels = [];
  for (const [id, line] of Object.entries(status.lines)) {
    const t = today.lines[id] || {};
    const waited = line.waiting ? line.longest_wait_s + (Date.now() / 1000 - statusAt) : 0;
    const tiles = el("div", {className: "tiles"});
    for (const [seat, s] of Object.entries(status.seats)) {
      const mine = seat.startsWith("s" + id + "-") || (line.overflow_seats || []).includes(seat);
      if (!mine) continue;
      tiles.append(el("div", {className: "tile " + s.state, data: {seat, state: s.state}},
        el("b", {}, seat), (STATE_ZH[s.state] || s.state) + (s.registered ? "" : " · 未注册"), el("br"),
        el("span", {}, s.since ? fmt(secondsSince(s.since)) : "–")));
    }
    panels.push(el("div", {className: "panel", data: {line: id}},
      el("h2", {}, (LINE_ZH[id] || id) + (line.overflow_active ? " · 溢出坐席已启用" : "")),
      el("div", {className: "kpis"},
        kpi("waiting", line.waiting, "排队", line.waiting > 0),
        kpi("longest", fmt(waited), "最长等待"),
        kpi("sl", pct(t.service_level), "15秒接通率"),
        kpi("abandon", pct(t.abandon_rate), "呼损率"),
        kpi("overflow", line.overflow_active ? "开" : "关", "溢出")),
      tiles));
  }
  document.getElementById("lines").replaceChildren(...panels);
  renderSpeech();
  renderRecording();
}

// call recording: on (which lines), suspended (disk full or read-only: new calls go on
// unrecorded), failures so far by reason
const RECORDING_ZH = {off: "录音：未启用", on: "录音：已启用", disk_full: "录音暂停：磁盘空间不足，新来电未录音",
                      read_only: "录音暂停：录音目录不可写，新来电未录音"};
const FAILURE_ZH = {disk_full: "磁盘满", read_only: "不可写", start_failed: "启动失败", no_file: "无文件",
                    store_failed: "保存失败", incomplete: "不完整"};
function renderRecording() {
  const r = status && status.recording;
  const node = document.getElementById("recording");
  if (!node || !r) return;
  const failures = Object.entries(r.failures || {}).filter(([, n]) => n > 0);
  node.className = r.state === "on" || r.state === "off" ? (failures.length ? "alert" : "muted") : "alert";
  node.dataset.state = r.state;
  node.replaceChildren((RECORDING_ZH[r.state] || "录音：" + r.state) + (r.state === "on" ? `（${r.lines.join("、")}）· 录音中 ${r.recording}` : "") +
    (failures.length ? " · 未录音/失败 " + failures.map(([k, n]) => `${FAILURE_ZH[k] || k} ${n}`).join("、") : ""));
}

// speech: transcription on/off/broken, in use, refused over the limit, failures; and the
// callers whose words matched a keyword rule (a hint for the supervisor; seats decide)
const flagged = new Map();
const SPEECH_ZH = {off: "未启用（未配置模型）", loading: "模型加载中", ready: "已启用", broken: "故障，已关闭"};
function renderSpeech() {
  const s = status && status.speech;
  const node = document.getElementById("speech");
  if (!node || !s) return;
  const failed = Object.values(s.failures || {}).reduce((a, b) => a + b, 0);
  node.className = s.state === "broken" || failed ? "alert" : "muted";
  node.dataset.state = s.state;
  node.replaceChildren(`语音转写：${SPEECH_ZH[s.state] || s.state}` + (s.model ? `（${s.model}）` : "") +
    ` · 进行中 ${s.active}/${s.limit} · 超限未转写 ${s.refused_over_limit} · 失败 ${failed}` +
    (s.error ? ` · ${s.error}` : ""));
  const rows = [...flagged.values()].map((c) => el("div", {className: "flagged", data: {call: c.call_id}},
    el("b", {className: "flag"}, flagText(c.transcript)), ` ${c.line} · ${c.caller || "未知号码"} · ${c.phase === "talking" ? "通话中" : "排队"} · `,
    (c.transcript.keywords || []).join("、"), " · ", c.transcript.text));
  document.getElementById("flagged").replaceChildren(...(rows.length ? rows : [el("span", {className: "muted"}, "无")]));
}

function bars(node, counts, labelOf) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 15);
  const max = Math.max(1, ...entries.map((e) => e[1]));
  node.replaceChildren(...entries.map(([k, n]) => {
    const bar = el("i");
    bar.style.width = Math.round(260 * n / max) + "px";  // CSSOM: allowed under the page's CSP
    return el("div", {data: {key: k}}, el("span", {}, (labelOf ? labelOf(k) : k) || "(无号码)"), bar, String(n));
  }));
}

async function refreshToday() {
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  today = await api("GET", "/api/today?since=" + encodeURIComponent(midnight.toISOString()));
  render();
  bars(document.getElementById("by-number"), today.by_number);
  bars(document.getElementById("by-category"), today.by_category, categoryLabel);
}

// after (re)connecting: the live calls already flagged (the feed only brings changes)
async function refreshFlagged() {
  flagged.clear();
  for (const c of await api("GET", "/api/calls")) {
    if (c.transcript && (c.transcript.flags || []).length) flagged.set(c.call_id, c);
  }
  renderSpeech();
}

let pending = null, todayPending = null;
feed((msg) => {
  if (typeof dispatchBoardEvent === "function") dispatchBoardEvent(msg);  // dispatch-board.js
  if (msg.type === "status") { status = msg.data; statusAt = Date.now() / 1000; render(); return; }
  const d = msg.data || {};
  if (msg.type === "call_transcript" && d.transcript && (d.transcript.flags || []).length) flagged.set(d.call_id, d);
  if (msg.type === "call_connected" && flagged.has(d.call_id)) flagged.set(d.call_id, {...flagged.get(d.call_id), phase: "talking"});
  if (msg.type === "call_ended") flagged.delete(d.call_id);
  // any change: fetch the fresh status at once (coalesced), the day's figures a little later
  if (!pending) pending = setTimeout(() => { pending = null; refreshStatus().catch(() => {}); }, 50);
  if (["call_arrived", "call_connected", "call_ended"].includes(msg.type) && !todayPending) {
    todayPending = setTimeout(() => { todayPending = null; refreshToday().catch(() => {}); }, 500);
  }
}, () => { refreshToday().catch(() => {}); refreshFlagged().catch(() => {}); });
refreshStatus().catch(() => {});
loadCategories().then(() => refreshToday()).catch(() => {});  // labels of today's categories
setInterval(render, 1000);
setInterval(() => refreshToday().catch(() => {}), 30000);

// The supervisors' wallboard: per line waiting, longest wait, overflow, service level,
// abandon rate, every seat as a tile; today's calls by legacy number and by category.
"use strict";
let status = null;
let statusAt = 0;
let today = {};  // per line, from today's tickets: offered, answered within 15 s, abandoned
const LINE_ZH = {"110": "110 应急", "96345": "96345 公共服务"};

async function refreshStatus() {
  status = await api("GET", "/api/status");
  statusAt = Date.now() / 1000;
  render();
}

function render() {
  if (!status) return;
  document.getElementById("clock").textContent = new Date().toLocaleTimeString("zh-CN");
  const lines = document.getElementById("lines");
  lines.innerHTML = "";
  for (const [id, line] of Object.entries(status.lines)) {
    // today's figures come from the tickets (they survive engine restarts)
    const t = today[id] || {done: 0, within: 0, abandoned: 0};
    const abandon = t.done ? Math.round(100 * t.abandoned / t.done) + "%" : "–";
    const sl = t.done ? Math.round(100 * t.within / t.done) + "%" : "–";
    const waited = line.waiting ? line.longest_wait_s + (Date.now() / 1000 - statusAt) : 0;
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.dataset.line = id;
    panel.innerHTML = `<h2>${LINE_ZH[id] || id} ${line.overflow_active ? "· 溢出坐席已启用" : ""}</h2>
      <div class="kpis">
        <div class="kpi ${line.waiting ? "alert" : ""}"><b data-k="waiting">${line.waiting}</b><span>排队</span></div>
        <div class="kpi"><b data-k="longest">${fmt(waited)}</b><span>最长等待</span></div>
        <div class="kpi"><b data-k="sl">${sl}</b><span>15秒接通率</span></div>
        <div class="kpi"><b data-k="abandon">${abandon}</b><span>呼损率</span></div>
        <div class="kpi"><b data-k="overflow">${line.overflow_active ? "开" : "关"}</b><span>溢出</span></div>
      </div><div class="tiles"></div>`;
    const tiles = panel.querySelector(".tiles");
    for (const [seat, s] of Object.entries(status.seats)) {
      const mine = seat.startsWith("s" + id + "-") || (line.overflow_seats || []).includes(seat);
      if (!mine) continue;
      const tile = document.createElement("div");
      tile.className = "tile " + s.state;
      tile.dataset.seat = seat;
      tile.dataset.state = s.state;
      tile.innerHTML = `<b>${seat}</b>${STATE_ZH[s.state] || s.state}${s.registered ? "" : " · 未注册"}
        <br><span>${s.since ? fmt(secondsSince(s.since)) : "–"}</span>`;
      tiles.appendChild(tile);
    }
    lines.appendChild(panel);
  }
}

function bars(el, counts) {
  const max = Math.max(1, ...Object.values(counts));
  el.innerHTML = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 15)
    .map(([k, n]) => `<div><span>${k}</span><i style="width:${Math.round(260 * n / max)}px"></i>${n}</div>`).join("");
}

async function refreshToday() {
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  const rows = await api("GET", "/api/tickets?limit=1000&since=" + encodeURIComponent(midnight.toISOString()));
  const byNumber = {}, byCategory = {};
  today = {};
  for (const t of rows) {
    const d = today[t.line] = today[t.line] || {done: 0, within: 0, abandoned: 0};
    const seated = t.seat_answered_at ? (Date.parse(t.seat_answered_at) - Date.parse(t.arrived_at)) / 1000 : null;
    if (seated !== null || t.ended_at) d.done += 1;
    if (seated !== null && seated <= 15) d.within += 1;
    if (t.outcome === "abandoned") d.abandoned += 1;
    byNumber[t.dialled || t.number] = (byNumber[t.dialled || t.number] || 0) + 1;
    byCategory[t.category] = (byCategory[t.category] || 0) + 1;
  }
  render();
  bars(document.getElementById("by-number"), byNumber);
  bars(document.getElementById("by-category"), byCategory);
}

let pending = null;
feed((msg) => {
  if (msg.type === "status") { status = msg.data; statusAt = Date.now() / 1000; render(); return; }
  // any change: fetch the fresh status at once (coalesced), the day's chart a little later
  if (!pending) pending = setTimeout(() => { pending = null; refreshStatus(); }, 50);
  if (["call_arrived", "call_connected", "call_ended"].includes(msg.type)) setTimeout(refreshToday, 500);
});
refreshStatus();
refreshToday();
setInterval(render, 1000);
setInterval(refreshToday, 30000);

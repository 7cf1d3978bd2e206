// The wallboard's dispatch side: the last hour of each line as a live chart (waiting callers
// per minute as bars, the minute's 15-second service level as a line; GET /api/history),
// open orders per unit with the overdue ones first, and the month's accountability per unit
// (GET /api/dispatch/summary, supervisors and admins); the other channels: today's requests
// per channel (web, WeChat, forum) and the newest unsolved ones with their order
// (GET /api/intake/summary; the channel only, never the citizen's contact: the wallboard is
// a screen in the room). Drawn as SVG built node by node; every value goes in as text or a
// number attribute, never as markup.
"use strict";
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = {w: 640, h: 170, left: 34, right: 40, top: 12, bottom: 22};

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function lineChart(lineId, samples, nowS) {
  const {w, h, left, right, top, bottom} = CHART;
  const plotW = w - left - right, plotH = h - top - bottom;
  const end = Math.floor(nowS / 60) * 60, start = end - 59 * 60;
  const slot = plotW / 60;
  const maxWaiting = Math.max(1, ...samples.map((m) => m.waiting));
  const root = svg("svg", {viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "history-chart", "data-history-line": lineId,
                           role: "img", "aria-label": `${lineId} 近一小时排队与接通率`});
  root.append(svg("rect", {x: left, y: top, width: plotW, height: plotH, class: "plot"}));
  const x = (at) => left + ((at - start) / 60) * slot;
  const bars = svg("g", {class: "waiting"});
  const points = [];
  for (const m of samples) {
    if (m.at < start) continue;
    const bh = (m.waiting / maxWaiting) * plotH;
    bars.append(svg("rect", {x: x(m.at) + 1, y: top + plotH - bh, width: Math.max(1, slot - 2), height: bh,
                             "data-minute": m.at, "data-waiting": m.waiting, "data-sl": m.service_level ?? ""}));
    if (m.service_level !== null && m.service_level !== undefined) {
      points.push([x(m.at) + slot / 2, top + plotH * (1 - m.service_level)]);
    }
  }
  root.append(bars);
  if (points.length) {
    root.append(svg("polyline", {class: "sl", points: points.map((p) => p.map((v) => v.toFixed(1)).join(",")).join(" ")}));
    for (const [px, py] of points) root.append(svg("circle", {class: "sl", cx: px.toFixed(1), cy: py.toFixed(1), r: 2.5}));
  }
  // axes: waiting on the left, service level on the right, time below
  root.append(svg("text", {x: left - 4, y: top + 10, class: "axis", "text-anchor": "end"}, maxWaiting));
  root.append(svg("text", {x: left - 4, y: top + plotH, class: "axis", "text-anchor": "end"}, 0));
  root.append(svg("text", {x: w - right + 4, y: top + 10, class: "axis sl-axis"}, "100%"));
  root.append(svg("text", {x: w - right + 4, y: top + plotH, class: "axis sl-axis"}, "0%"));
  root.append(svg("text", {x: left, y: h - 6, class: "axis"}, "60分钟前"));
  root.append(svg("text", {x: left + plotW, y: h - 6, class: "axis", "text-anchor": "end"}, "现在"));
  return root;
}

async function refreshHistory() {
  const section = document.getElementById("history-section");
  const data = await api("GET", "/api/history?minutes=60");
  const now = Date.now() / 1000;
  const charts = Object.entries(data.lines).sort().map(([id, samples]) => {
    const last = samples.length ? samples[samples.length - 1] : null;
    const sl = last && last.service_level !== null ? Math.round(100 * last.service_level) + "%" : "–";
    return el("div", {className: "history-line", data: {historyLine: id}},
      el("h3", {}, `${(LINE_ZH[id] || id)} · 本分钟排队 ${last ? last.waiting : 0} · 接通率 ${sl}`), lineChart(id, samples, now));
  });
  document.getElementById("history-charts").replaceChildren(...charts);
  section.hidden = false;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  return s < 3600 ? Math.round(s / 60) + "分" : (s / 3600).toFixed(1) + "小时";
}

async function refreshDispatch() {
  const section = document.getElementById("dispatch");
  let data;
  try { data = await api("GET", "/api/dispatch/summary"); }
  catch (e) { section.hidden = true; return; }  // supervisors and admins only
  const open = data.units.filter((u) => (u.open || 0) > 0 || (u.overdue || 0) > 0)
    .sort((a, b) => (b.overdue || 0) - (a.overdue || 0) || (b.open || 0) - (a.open || 0));
  const th = (t) => el("th", {}, t);
  document.getElementById("open-orders").replaceChildren(
    el("tr", {}, th("单位"), th("未结"), th("超时"), th("按时签收"), th("工单")),
    ...(open.length ? open.map((u) => el("tr", {className: (u.overdue || 0) > 0 ? "overdue" : "", data: {unit: u.unit}},
      el("td", {}, u.unit_name || u.unit), el("td", {data: {k: "open"}}, u.open || 0),
      el("td", {data: {k: "overdue"}}, u.overdue || 0), el("td", {}, u.acknowledged_in_time ?? "–"),
      el("td", {}, u.orders ?? "–")))
      : [el("tr", {}, el("td", {colSpan: 5, className: "muted"}, "无未结工单"))]));
  document.getElementById("month").textContent = data.month;
  const rows = data.accountability.filter((u) => (u.orders || 0) > 0);
  document.getElementById("accountability").replaceChildren(
    el("tr", {}, th("单位"), th("工单"), th("按时签收"), th("超时"), th("签收用时中位"), th("办结用时中位"), th("回访完成")),
    ...(rows.length ? rows.map((u) => el("tr", {className: (u.overdue || 0) > 0 ? "overdue" : "", data: {unit: u.unit}},
      el("td", {}, u.unit_name || u.unit), el("td", {}, u.orders), el("td", {}, u.acknowledged_in_time),
      el("td", {}, u.overdue), el("td", {}, duration(u.median_ack_s)), el("td", {}, duration(u.median_solve_s)),
      el("td", {}, u.follow_ups_done)))
      : [el("tr", {}, el("td", {colSpan: 7, className: "muted"}, "本月暂无工单"))]));
  section.hidden = false;
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "–" : d.toLocaleTimeString("zh-CN", {hour12: false, hour: "2-digit", minute: "2-digit"});
}

async function refreshIntake() {
  const section = document.getElementById("intake");
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  let data;
  try { data = await api("GET", "/api/intake/summary?since=" + encodeURIComponent(midnight.toISOString())); }
  catch (e) { section.hidden = true; return; }  // supervisors and admins only
  const th = (t) => el("th", {}, t);
  document.getElementById("intake-channels").replaceChildren(
    el("tr", {}, th("渠道"), th("诉求"), th("新工单"), th("并入已有工单"), th("未办结")),
    ...Object.entries(data.channels).map(([ch, c]) => el("tr", {data: {channel: ch}},
      el("td", {}, CHANNEL_ZH[ch] || ch), el("td", {data: {k: "requests"}}, c.requests),
      el("td", {data: {k: "tickets"}}, c.tickets), el("td", {data: {k: "linked"}}, c.linked),
      el("td", {data: {k: "open"}}, c.open))));
  const rows = data.open_requests;
  document.getElementById("intake-open").replaceChildren(
    el("tr", {}, th("时间"), th("渠道"), th("类别"), th("乡镇"), th("派往单位"), th("状态")),
    ...(rows.length ? rows.map((r) => el("tr", {className: r.overdue ? "overdue" : "",
                                               data: {ticket: r.ticket_id, channel: r.channel}},
      el("td", {}, clock(r.arrived_at)), el("td", {data: {k: "channel"}}, CHANNEL_ZH[r.channel] || r.channel),
      el("td", {data: {k: "category"}}, r.category_label || categoryLabel(r.category)),
      el("td", {data: {k: "town"}}, r.town_name || "乡镇未知"), el("td", {data: {k: "unit"}}, r.unit_name || "–"),
      el("td", {data: {k: "state"}}, r.order_state ? (ORDER_STATE_ZH[r.order_state] || r.order_state) : "待派单")))
      : [el("tr", {}, el("td", {colSpan: 6, className: "muted"}, "无未办结诉求"))]));
  section.hidden = false;
}

// the wallboard's feed hands every message here: order changes refresh the tables at once
// (coalesced), call changes the chart a little later
let dispatchPending = null, historyPending = null, intakePending = null;
function dispatchBoardEvent(msg) {
  const order = String(msg.type).startsWith("order_");
  if (order && !dispatchPending) {
    dispatchPending = setTimeout(() => { dispatchPending = null; refreshDispatch().catch(() => {}); }, 300);
  }
  // a request from another channel (new or linked), or an order's change: the intake tables
  if ((order || msg.type === "intake" || msg.type === "linked") && !intakePending) {
    intakePending = setTimeout(() => { intakePending = null; refreshIntake().catch(() => {}); }, 300);
  }
  if (["call_arrived", "call_connected", "call_ended"].includes(msg.type) && !historyPending) {
    historyPending = setTimeout(() => { historyPending = null; refreshHistory().catch(() => {}); }, 2000);
  }
}
refreshHistory().catch(() => {});
refreshDispatch().catch(() => {});
refreshIntake().catch(() => {});
setInterval(() => refreshHistory().catch(() => {}), 15000);
setInterval(() => refreshIntake().catch(() => {}), 15000);
setInterval(() => refreshDispatch().catch(() => {}), 15000);

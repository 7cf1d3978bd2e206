// The agent console: the seat's own state; the ticket pops when a call is answered at
// this seat, with the dialled number's meaning, the caller's earlier tickets and the
// transfer history; one click hands the caller to the other line. Every value is
// inserted as text (el(), textContent): a caller number is data, never markup.
"use strict";
let me = null, plan = {}, current = null;
const OTHER = {"110": "96345", "96345": "110"};
const $ = (id) => document.getElementById(id);

async function seatAction(action) {
  try { const r = await api("POST", `/api/seats/${encodeURIComponent(me.seat)}/${action}`, {reason: "agent"}); showState(r.state); }
  catch (e) { $("result").textContent = e.message; }
}
function showState(state) { $("state").textContent = STATE_ZH[state] || state; $("state").dataset.state = state; }

const th = (text) => el("th", {}, text);
const td = (text, id) => el("td", id ? {id} : {}, text);

async function pop(call) {
  current = call;
  const entry = plan[call.number] || {};
  $("ticket").className = "";
  $("ticket").dataset.ticket = call.ticket;
  $("ticket").replaceChildren(el("table", {},
    el("tr", {}, th("拨打号码"), td(call.dialled, "t-dialled"), th("含义"), td(entry.description || "未列入号码表", "t-meaning")),
    el("tr", {}, th("线路"), td(call.line, "t-line"), th("类别"), td(call.category, "t-category")),
    el("tr", {}, th("责任部门"), td(call.department), th("优先级"), td(call.priority)),
    el("tr", {}, th("来电号码"), td(call.caller || "未知", "t-caller"), th("来电名称"), td("–", "t-caller-name")),
    el("tr", {}, th("工单"), el("td", {colSpan: 3}, call.ticket)),
    el("tr", {}, th("来电者所述"), el("td", {colSpan: 3, id: "t-transcript"}, "–")),
    el("tr", {}, th("转接记录"), el("td", {colSpan: 3, id: "t-transfers"}, "–"))));
  showTranscript(call.transcript);
  $("transfer").textContent = "转接 " + OTHER[call.line];
  $("consult").textContent = "三方通话 " + OTHER[call.line];
  $("actions").hidden = false;
  $("result").textContent = "";
  showTicket(call.ticket, 0);
  let earlier = [];
  try {
    earlier = call.caller ? await api("GET", "/api/tickets?limit=20&caller=" + encodeURIComponent(call.caller)) : [];
  } catch (e) { $("result").textContent = "历史工单：" + e.message; }
  const rows = earlier.filter((t) => t.id !== call.ticket).map((t) => el("tr", {data: {ticket: t.id}},
    td(t.arrived_at.slice(0, 16).replace("T", " ")), td(t.dialled), td(t.category), td(t.outcome || "")));
  $("history").replaceChildren(el("tr", {}, th("时间"), th("号码"), th("类别"), th("结果")),
    ...(rows.length ? rows : [el("tr", {}, el("td", {colSpan: 4, className: "muted"}, "无"))]));
}

// what the caller said while waiting (speech recognition: a hint, the seat decides)
function showTranscript(t) {
  const cell = $("t-transcript");
  if (!cell) return;
  const flags = flagText(t);
  cell.replaceChildren(t && t.text ? t.text : "–");
  cell.dataset.flags = (t && t.flags || []).join(" ");
  if (flags) cell.append(" ", el("b", {className: "flag", id: "t-flags"}, "【" + flags + "：" + (t.keywords || []).join("、") + "】"));
}

async function showTicket(id, tries) {
  // the ticket is written beside the call: it may land a moment after the pop
  try {
    const ticket = await api("GET", "/api/tickets/" + encodeURIComponent(id));
    if (!current || current.ticket !== id) return;
    $("t-caller-name").textContent = ticket.caller_name || "–";
    $("t-transfers").textContent = (ticket.transfers || []).map((t) => `${t.from_line}→${t.to_line} (${t.seat} ${t.reason})`).join("; ") || "–";
  } catch (e) { if (tries < 5) setTimeout(() => showTicket(id, tries + 1), 400); }
}

async function callAction(path, body, done) {
  try { await api("POST", `/api/calls/${encodeURIComponent(current.call_id)}/${path}`, body); $("result").textContent = done; }
  catch (e) { $("result").textContent = "失败：" + e.message; }
}

async function refreshSeat() {
  const status = await api("GET", "/api/status");
  if (me.seat && status.seats[me.seat]) showState(status.seats[me.seat].state);
}

async function start() {
  me = await api("GET", "/api/me");
  $("seat").textContent = me.seat || "(" + me.role + ")";
  for (const e of await api("GET", "/api/plan")) plan[e.number] = e;
  await refreshSeat();
  for (const a of ["login", "pause", "resume", "logout"]) $(a).onclick = () => seatAction(a);
  $("wrapup").onclick = () => seatAction("wrapup_done");
  $("transfer").onclick = () => callAction("transfer", {to: OTHER[current.line], reason: "坐席转接"},
                                           "已转接 " + OTHER[current.line]);
  $("consult").onclick = () => callAction("consult", {line: OTHER[current.line]}, "正在呼叫 " + OTHER[current.line]);
  $("reclassify").onclick = () => callAction("reclassify", {category: $("category").value}, "类别已更新");
  $("note").onclick = async () => {
    try {
      await api("POST", `/api/tickets/${encodeURIComponent(current.ticket)}/notes`, {text: $("note-text").value});
      $("result").textContent = "备注已添加"; $("note-text").value = "";
    } catch (e) { $("result").textContent = "失败：" + e.message; }
  };
  feed((msg) => {
    const d = msg.data || {};
    if (msg.type === "seat_state" && d.seat === me.seat) showState(d.state);
    if (msg.type === "call_connected" && d.seat === me.seat) pop(d);
    if (msg.type === "call_transcript" && current && d.call_id === current.call_id) showTranscript(d.transcript);
    if (msg.type === "call_ended" && current && d.call_id === current.call_id) $("result").textContent = "通话已结束";
  }, () => refreshSeat().catch(() => {}));
}
start().catch((e) => { $("result").textContent = e.message; });

// The agent console: the seat's own state; the ticket pops when a call is answered at
// this seat, with the dialled number's meaning, the caller's earlier tickets and the
// transfer history; one click hands the caller to the other line.
"use strict";
let me = null, plan = {}, current = null;
const OTHER = {"110": "96345", "96345": "110"};
const $ = (id) => document.getElementById(id);

async function seatAction(action) {
  try { const r = await api("POST", `/api/seats/${me.seat}/${action}`, {reason: "agent"}); showState(r.state); }
  catch (e) { $("result").textContent = e.message; }
}
function showState(state) { $("state").textContent = STATE_ZH[state] || state; $("state").dataset.state = state; }

async function pop(call) {
  current = call;
  const entry = plan[call.number] || {};
  $("ticket").className = "";
  $("ticket").dataset.ticket = call.ticket;
  $("ticket").innerHTML = `<table>
    <tr><th>拨打号码</th><td id="t-dialled">${call.dialled}</td><th>含义</th><td id="t-meaning">${entry.description || "未列入号码表"}</td></tr>
    <tr><th>线路</th><td id="t-line">${call.line}</td><th>类别</th><td id="t-category">${call.category}</td></tr>
    <tr><th>责任部门</th><td>${call.department}</td><th>优先级</th><td>${call.priority}</td></tr>
    <tr><th>来电号码</th><td id="t-caller">${call.caller || "未知"}</td><th>工单</th><td>${call.ticket}</td></tr>
    <tr><th>转接记录</th><td colspan="3" id="t-transfers">–</td></tr></table>`;
  $("transfer").textContent = "转接 " + OTHER[call.line];
  $("consult").textContent = "三方通话 " + OTHER[call.line];
  $("actions").hidden = false;
  $("result").textContent = "";
  try {
    const ticket = await api("GET", "/api/tickets/" + encodeURIComponent(call.ticket));
    $("t-transfers").textContent = (ticket.transfers || []).map((t) => `${t.from_line}→${t.to_line} (${t.seat} ${t.reason})`).join("; ") || "–";
  } catch (e) { /* written a moment later; the history below still shows */ }
  const earlier = call.caller ? await api("GET", "/api/tickets?limit=20&caller=" + encodeURIComponent(call.caller)) : [];
  $("history").innerHTML = "<tr><th>时间</th><th>号码</th><th>类别</th><th>结果</th></tr>" + earlier
    .filter((t) => t.id !== call.ticket)
    .map((t) => `<tr><td>${t.arrived_at.slice(0, 16).replace("T", " ")}</td><td>${t.dialled}</td><td>${t.category}</td><td>${t.outcome || ""}</td></tr>`)
    .join("");
}

async function callAction(path, body, done) {
  try { await api("POST", `/api/calls/${current.call_id}/${path}`, body); $("result").textContent = done; }
  catch (e) { $("result").textContent = "失败：" + e.message; }
}

async function start() {
  me = await api("GET", "/api/me");
  $("seat").textContent = me.seat || "(" + me.role + ")";
  for (const e of await api("GET", "/api/plan")) plan[e.number] = e;
  const status = await api("GET", "/api/status");
  if (me.seat && status.seats[me.seat]) showState(status.seats[me.seat].state);
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
    if (msg.type === "call_ended" && current && d.call_id === current.call_id) $("result").textContent = "通话已结束";
  });
}
start();

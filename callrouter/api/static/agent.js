// The agent console: the seat's own state; the ticket pops when a call is answered at
// this seat, with the dialled number's meaning, the caller's earlier tickets and the
// transfer history; one click hands the caller to the other line. The seat sets the
// caller's town (from the units file), corrects the category (chosen by its Chinese label)
// and sends the ticket to dispatch; the follow-up calls (回访) wait in their own list.
// Every value is inserted as text (el(), textContent): a caller number is data, never markup.
"use strict";
let me = null, plan = {}, current = null, towns = [];
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
    el("tr", {}, th("线路"), td(call.line, "t-line"), th("类别"),
       el("td", {id: "t-category", data: {category: call.category}}, categoryLabel(call.category))),
    el("tr", {}, th("乡镇"), td("未知", "t-town"), th("派单"), td("未派单", "t-dispatched")),
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
  fillCategories(call.line, call.category);
  $("town").value = "";
  showTicket(call.ticket, 0);
  let earlier = [];
  try {
    earlier = call.caller ? await api("GET", "/api/tickets?limit=20&caller=" + encodeURIComponent(call.caller)) : [];
  } catch (e) { $("result").textContent = "历史工单：" + e.message; }
  const rows = earlier.filter((t) => t.id !== call.ticket).map((t) => el("tr", {data: {ticket: t.id}},
    td(t.arrived_at.slice(0, 16).replace("T", " ")), td(t.dialled), td(categoryLabel(t.category)), td(t.outcome || "")));
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
    showDispatch(ticket);
  } catch (e) { if (tries < 5) setTimeout(() => showTicket(id, tries + 1), 400); }
}

// the ticket's town and whether it went to dispatch, as the database has them
function showDispatch(ticket) {
  const town = towns.find((t) => t.id === ticket.town);
  $("t-town").textContent = town ? town.name : "未知";
  $("t-town").dataset.town = ticket.town || "";
  if (ticket.town && $("town").value === "") $("town").value = ticket.town;
  $("t-dispatched").textContent = ticket.dispatched_at ? "已派单 " + ticket.dispatched_at.slice(11, 19)
    : current.dispatchRequested ? "已送派单：" + current.dispatchRequested : "未派单";
  $("t-category").textContent = categoryLabel(ticket.category);
  $("t-category").dataset.category = ticket.category;
}

// the plan's categories by Chinese label, the call's own line first
function fillCategories(line, selected) {
  const groups = {};
  for (const c of CATEGORY_LIST) {
    if (!groups[c.line]) groups[c.line] = el("optgroup", {label: c.line});
    groups[c.line].append(el("option", {value: c.slug}, c.label));
  }
  const order = Object.keys(groups).sort((a, b) => (a === line ? -1 : b === line ? 1 : 0));
  $("category").replaceChildren(...order.map((k) => groups[k]));
  $("category").value = selected;
}

async function ticketAction(path, body, done) {
  const id = current.ticket;
  try {
    const r = await api("POST", `/api/tickets/${encodeURIComponent(id)}/${path}`, body);
    $("result").textContent = done(r);
    setTimeout(() => showTicket(id, 3), 400);  // the write lands beside the call
    return r;
  } catch (e) { $("result").textContent = "失败：" + e.message; return null; }
}

async function reclassify() {
  const slug = $("category").value;
  const done = "类别已更新：" + categoryLabel(slug);
  if (current.ended) await ticketAction("reclassify", {category: slug}, () => done);
  else await callAction("reclassify", {category: slug}, done);
  $("t-category").textContent = categoryLabel(slug);
  $("t-category").dataset.category = slug;
}

// 回访: 96345 tickets whose unit reported back; the seat calls the citizen and says how it went
async function refreshFollowUps() {
  const rows = await api("GET", "/api/follow-ups");
  $("follow-ups-count").textContent = rows.length ? `（${rows.length}）` : "";
  const head = el("tr", {}, th("工单"), th("类别"), th("联系方式"), th("单位处理结果"), th("备注"), th(""));
  $("follow-ups").replaceChildren(head, ...(rows.length ? rows.map(followUpRow)
    : [el("tr", {}, el("td", {colSpan: 6, className: "muted"}, "无"))]));
}

function followUpRow(r) {
  const t = r.ticket && typeof r.ticket === "object" ? r.ticket : r;
  const id = r.ticket_id || t.id;
  const order = r.order && typeof r.order === "object" ? r.order : r;
  const note = el("input", {placeholder: "回访备注", maxLength: 500});
  const send = async (outcome) => {
    try {
      await api("POST", `/api/tickets/${encodeURIComponent(id)}/follow-up`, {outcome, note: note.value});
      $("result").textContent = outcome === "reached" ? "回访完成，工单已办结" : "已记录：未接通";
    } catch (e) { $("result").textContent = "回访失败：" + e.message; }
    setTimeout(() => refreshFollowUps().catch(() => {}), 400);
  };
  const reached = el("button", {className: "reached"}, "已联系上");
  const missed = el("button", {className: "secondary no-answer"}, "未接通");
  reached.onclick = () => send("reached");
  missed.onclick = () => send("no_answer");
  return el("tr", {data: {ticket: id}}, td(id), td(r.category_label || categoryLabel(t.category)),
    td(t.contact || t.caller || "–"), td(order.result || r.result || "–"), el("td", {}, note),
    el("td", {}, reached, missed));
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
  await loadCategories();
  try {
    towns = (await api("GET", "/api/units")).towns;
    $("town").append(...towns.map((t) => el("option", {value: t.id}, t.name)));
  } catch (e) { $("result").textContent = "乡镇列表：" + e.message; }
  await refreshSeat();
  for (const a of ["login", "pause", "resume", "logout"]) $(a).onclick = () => seatAction(a);
  $("wrapup").onclick = () => seatAction("wrapup_done");
  $("transfer").onclick = () => callAction("transfer", {to: OTHER[current.line], reason: "坐席转接"},
                                           "已转接 " + OTHER[current.line]);
  $("consult").onclick = () => callAction("consult", {line: OTHER[current.line]}, "正在呼叫 " + OTHER[current.line]);
  $("reclassify").onclick = () => reclassify();
  $("set-town").onclick = () => ticketAction("town", {town: $("town").value || null},
    (r) => "乡镇已设置：" + (r.town_name || "未知（县级单位处理）"));
  $("dispatch").onclick = () => ticketAction("dispatch", {}, (r) => {
    current.dispatchRequested = r.unit_name;
    $("t-dispatched").textContent = "已送派单：" + r.unit_name;
    return "已派单：" + r.unit_name;
  });
  refreshFollowUps().catch((e) => { $("follow-ups-count").textContent = e.message; });
  setInterval(() => refreshFollowUps().catch(() => {}), 30000);
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
    if (msg.type === "call_ended" && current && d.call_id === current.call_id) {
      current.ended = true;
      $("result").textContent = "通话已结束";
    }
  }, () => refreshSeat().catch(() => {}));
}
start().catch((e) => { $("result").textContent = e.message; });

// Shared by both pages: API calls, the live event feed, building elements safely.
//
// The token is never kept by the page: opened once with ?token=, the engine redirects to
// the bare page and keeps the token in an HttpOnly cookie that no script can read. Every
// value from the engine (caller numbers and names above all) goes into the page as text
// (textContent / text nodes), never as HTML.
"use strict";
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);

function setLive(text, stale) {
  const live = document.getElementById("live");
  if (!live) return;
  live.textContent = text;
  live.className = stale ? "stale" : "muted";
  document.body.dataset.live = stale ? "stale" : "live";
}

async function api(method, path, body) {
  const resp = await fetch(path, {method, credentials: "same-origin",
    headers: body === undefined ? {} : {"Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (resp.status === 401) setLive("未授权：请用管理员发放的带 ?token= 的链接重新打开本页", true);
  if (!resp.ok) throw new Error((data && data.details) || resp.statusText);
  return data;
}

// el("td", {id: "x", className: "y"}, "text", otherNode...): children become text nodes
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

// onMessage for every event; onOpen after each (re)connect, once the fresh status came:
// whatever happened while the feed was away is fetched again there
function feed(onMessage, onOpen) {
  let delay = 500;
  const open = () => {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/events");
    let first = true;
    ws.onmessage = (m) => {
      delay = 500;
      const msg = JSON.parse(m.data);
      onMessage(msg);
      if (first) { first = false; setLive("实时", false); if (onOpen) onOpen(); }
    };
    ws.onclose = (ev) => {
      // 1013: the engine dropped us for reading too slowly; anything else: connection lost
      setLive(ev.code === 1013 ? "实时数据落后，正在重新连接…" : "实时连接中断，数据可能过时，正在重新连接…", true);
      setTimeout(open, ev.code === 1013 ? 100 : delay);
      delay = Math.min(delay * 2, 5000);
    };
  };
  open();
}

function secondsSince(ts) { return Math.max(0, Math.round(Date.now() / 1000 - ts)); }
function fmt(s) { s = Math.round(s); return s < 60 ? s + "秒" : Math.floor(s / 60) + "分" + (s % 60) + "秒"; }
// keyword flags of what a caller said (queues/keywords.toml); an unknown flag shows as is
const FLAG_ZH = {probable_emergency: "可能紧急", probable_non_emergency: "可能非紧急"};
function flagText(t) {
  return (t && t.flags || []).map((f) => (FLAG_ZH[f] || f)).join("、");
}
// how a request came in, and a dispatch order's state (the unit page, the wallboard)
const CHANNEL_ZH = {phone: "电话", web: "网站", wechat: "微信", forum: "论坛"};
const ORDER_STATE_ZH = {notified: "待签收", acknowledged: "已签收，待反馈", reported: "已反馈", escalated: "已超时转派"};
const STATE_ZH = {logged_out: "未登录", ready: "空闲", ringing: "振铃", on_call: "通话中", wrap_up: "话后处理",
                  paused: "暂停"};
// categories are shown to people by their Chinese label (GET /api/categories), never the
// slug; a slug the list does not know (or a role that may not read it) shows as it is
const CATEGORY_LABELS = {};
let CATEGORY_LIST = [];
async function loadCategories() {
  CATEGORY_LIST = await api("GET", "/api/categories");
  for (const c of CATEGORY_LIST) CATEGORY_LABELS[c.slug] = c.label;
  return CATEGORY_LIST;
}
function categoryLabel(slug) { return (slug && CATEGORY_LABELS[slug]) || slug || "–"; }

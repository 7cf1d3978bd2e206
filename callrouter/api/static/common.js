// Shared by both pages: the token, API calls, the live event feed.
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("callrouter-token", params.get("token"));
const TOKEN = sessionStorage.getItem("callrouter-token") || "";

async function api(method, path, body) {
  const resp = await fetch(path, {method, headers: {"Authorization": "Bearer " + TOKEN,
    "Content-Type": "application/json"}, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await resp.json();
  if (!resp.ok) throw new Error((data && data.details) || resp.statusText);
  return data;
}

function feed(onMessage) {
  let delay = 500;
  const open = () => {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                             "/api/events?token=" + encodeURIComponent(TOKEN));
    ws.onmessage = (m) => { delay = 500; onMessage(JSON.parse(m.data)); };
    ws.onclose = () => { setTimeout(open, delay); delay = Math.min(delay * 2, 5000); };
  };
  open();
}

function secondsSince(ts) { return Math.max(0, Math.round(Date.now() / 1000 - ts)); }
function fmt(s) { s = Math.round(s); return s < 60 ? s + "秒" : Math.floor(s / 60) + "分" + (s % 60) + "秒"; }
const STATE_ZH = {logged_out: "未登录", ready: "空闲", ringing: "振铃", on_call: "通话中", wrap_up: "话后处理",
                  paused: "暂停"};

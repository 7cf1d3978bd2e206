// A unit's page: its open dispatch orders with the ticket's facts (number dialled, category
// by its label, town, what the caller said, caller or contact); acknowledge, then report
// back (what was done, solved or not). Live: every change of this unit's orders comes over
// the feed and the list is read again. Everything from callers and units is inserted as
// text (el(), textContent), never as markup.
"use strict";
// in a function scope: the page's names never clash with common.js's globals
(() => {
  let me = null, orders = [];
  const drafts = {};  // a report being typed survives the list being read again
  const $ = (id) => document.getElementById(id);

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString("zh-CN", {hour12: false});
  }

  // time left to acknowledge (or how long overdue), from the order's deadline
  function dueText(o) {
    if (o.state !== "notified" || !o.ack_due_at) return "";
    const left = (new Date(o.ack_due_at).getTime() - Date.now()) / 1000;
    return left >= 0 ? "签收时限还剩 " + fmt(left) : "已超过签收时限 " + fmt(-left);
  }

  function transcriptText(t) {
    if (!t) return "–";
    if (typeof t === "string") return t || "–";
    return t.text || "–";
  }

  const th = (text) => el("th", {}, text);
  const td = (text, cls) => el("td", cls ? {className: cls} : {}, text);

  function card(o) {
    const t = o.ticket || {};
    const contact = t.channel && t.channel !== "phone" ? (CHANNEL_ZH[t.channel] || t.channel) + "：" + (t.contact || "–")
                                                       : (t.caller || t.contact || "未知");
    const label = o.category_label || t.category_label;  // what the order was given for
    const late = o.overdue || (o.state === "notified" && o.ack_due_at && new Date(o.ack_due_at) < new Date());
    const node = el("div", {className: "panel order" + (late ? " overdue" : ""), data: {order: o.id, state: o.state}},
      el("h2", {}, el("span", {className: "o-label"}, label || "未分类"), " · ",
         el("span", {className: "o-town"}, t.town_name || "乡镇未知"),
         me.role === "unit" ? "" : " · " + (o.unit_name || o.unit), " ",
         el("span", {className: "o-state muted"}, ORDER_STATE_ZH[o.state] || o.state), " ",
         el("span", {className: "o-due" + (late ? " stale" : " muted")}, dueText(o))),
      el("table", {},
        el("tr", {}, th("拨打号码"), td(t.dialled || "–", "o-dialled"), th("线路"), td(t.line || o.line || "–", "o-line")),
        el("tr", {}, th("类别"), td(label || "–", "o-category"), th("乡镇"), td(t.town_name || "–", "o-town-name")),
        el("tr", {}, th("来电/联系方式"), td(contact, "o-contact"), th("下达时间"), td(when(o.created_at))),
        el("tr", {}, th("来电者所述"), el("td", {colSpan: 3, className: "o-transcript"}, transcriptText(t.transcript))),
        el("tr", {}, th("指令"), td(o.id), th("工单"), td(o.ticket_id || t.id || "–", "o-ticket"))));
    if (me.role !== "unit") {
      // a supervisor looking on: acknowledging and reporting are the unit's own acts
    } else if (o.state === "notified") {
      const ack = el("button", {className: "ack"}, "签收");
      ack.onclick = () => act(o, "ack", {}, "已签收");
      node.append(ack);
    } else if (o.state === "acknowledged") {
      const text = el("textarea", {className: "result-text", maxLength: 2000, rows: 3, placeholder: "处置情况（必填）"});
      const solved = el("select", {className: "solved"}, el("option", {value: "true"}, "已解决"),
                        el("option", {value: "false"}, "未解决"));
      const draft = drafts[o.id] || {};
      text.value = draft.text || "";
      solved.value = draft.solved || "true";
      text.oninput = solved.onchange = () => { drafts[o.id] = {text: text.value, solved: solved.value}; };
      const send = el("button", {className: "report"}, "反馈处置结果");
      send.onclick = () => {
        if (!text.value.trim()) { $("result").textContent = "请填写处置情况"; return; }
        act(o, "report", {result: text.value, solved: solved.value === "true"}, "已反馈").then((ok) => { if (ok) delete drafts[o.id]; });
      };
      node.append(el("div", {className: "report-form"}, text, el("br"), solved, send));
    }
    if (o.result) {
      node.append(el("p", {className: "o-result muted"}, "反馈：" + o.result + (o.solved ? "（已解决）" : "（未解决）")));
    }
    return node;
  }

  // an order's card is built again only when the order changed: a report being typed keeps
  // its focus while other orders (or the echo of this page's own action) come and go
  const cards = new Map();  // order id -> {key, node}
  function render() {
    $("clock").textContent = new Date().toLocaleTimeString("zh-CN");
    $("count").textContent = "未完成指令 " + orders.length;
    const nodes = orders.map((o) => {
      const key = JSON.stringify(o), had = cards.get(o.id);
      if (had && had.key === key) return had.node;
      const node = card(o);
      cards.set(o.id, {key, node});
      return node;
    });
    for (const id of [...cards.keys()]) if (!orders.some((o) => o.id === id)) cards.delete(id);
    const box = $("orders");
    if (nodes.length && nodes.length === box.children.length && nodes.every((n, i) => box.children[i] === n)) return;
    box.replaceChildren(...(nodes.length ? nodes
      : [el("div", {className: "panel empty muted", id: "no-orders"}, "暂无未完成的指令")]));
  }

  async function refresh() {
    orders = await api("GET", "/api/orders");
    render();
  }

  async function act(o, what, body, done) {
    let ok = false;
    try {
      await api("POST", `/api/orders/${encodeURIComponent(o.id)}/${what}`, body);
      $("result").textContent = done + "：" + o.id;
      ok = true;
    } catch (e) { $("result").textContent = "失败：" + e.message; }
    await refresh().catch((e) => { $("result").textContent = e.message; });
    return ok;
  }

  async function start() {
    me = await api("GET", "/api/me");
    $("unit").textContent = me.name || me.unit || "(" + me.role + ")";
    if (me.role !== "unit") $("result").textContent = "本页供处置单位使用（role unit）；监督人员可在此查看全部指令";
    await refresh();
    feed((msg) => {
      // this unit's orders only reach this page; read the list again on any change
      if (msg.type && msg.type.startsWith("order_") && (me.role !== "unit" || (msg.data || {}).unit === me.unit)) {
        refresh().catch((e) => { $("result").textContent = e.message; });
      }
    }, () => refresh().catch(() => {}));
    // the deadlines count down without waiting for a change
    setInterval(() => {
      for (const o of orders) {
        const node = (cards.get(o.id) || {}).node;
        if (!node) continue;
        const late = o.overdue || (o.state === "notified" && o.ack_due_at && new Date(o.ack_due_at) < new Date());
        node.classList.toggle("overdue", Boolean(late));
        const due = node.querySelector(".o-due");
        due.textContent = dueText(o);
        due.className = "o-due " + (late ? "stale" : "muted");
      }
      $("clock").textContent = new Date().toLocaleTimeString("zh-CN");
    }, 1000);
  }
  start().catch((e) => { $("result").textContent = e.message; });
})();

// routeid balancer-manager: the live view. Polls the JSON API of the page's own origin
// (/balancer-manager/api/pools) every two seconds and redraws the overview and the member
// tables; sorts by any column, pages long pools, and sends changes with the manager token,
// typed once per page and kept only in this page's memory. No external script, style or
// request: it works offline and under the page's Content-Security-Policy (default-src 'self').
"use strict";
(function () {
  const API = "/balancer-manager/api/pools";
  const POLL_MS = 2000;
  const PAGE_ROWS = 50;
  const STATUSES = ["Ok", "Drain", "Disabled", "HotStandby", "Stopped"];
  let token = null;
  let data = null;
  let editing = null; // {ns, pool, route}
  const sort = {}; // pool key -> {col, desc}
  const page = {}; // pool key -> page index
  const root = document.getElementById("live");
  if (!root) return;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  const pct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + "%");
  const ms = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms");
  const rate = (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0));
  const key = (p) => p.namespace + "/" + p.name;
  function ago(iso) {
    if (!iso) return "–";
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  function change(c) {
    const parts = [];
    if (c.status) parts.push("status " + c.status);
    if (c.loadFactor !== null && c.loadFactor !== undefined) parts.push("loadFactor " + c.loadFactor);
    if (c.lbSet !== null && c.lbSet !== undefined) parts.push("lbSet " + c.lbSet);
    return parts.join(", ");
  }

  // Columns of the member table: header, sort value, cell text, optional class.
  const COLUMNS = [
    ["Route", (m) => m.route, (m) => m.route],
    ["Address", (m) => m.address, (m) => m.address],
    ["State", (m) => m.state, (m) => m.state, (m) => "state " + m.state],
    ["Status", (m) => m.status, (m) => m.status],
    ["Weight", (m) => m.loadFactor, (m) => String(m.loadFactor)],
    ["Set", (m) => m.lbSet, (m) => String(m.lbSet)],
    ["Req/s", (m) => m.requestsPerSecond, (m) => rate(m.requestsPerSecond), () => "num rps"],
    ["Share", (m) => m.share ?? -1, (m) => pct(m.share), () => "num"],
    ["New sessions", (m) => m.newSessionShare ?? -1, (m) => pct(m.newSessionShare), () => "num"],
    ["In flight", (m) => m.inFlight, (m) => String(m.inFlight), () => "num"],
    ["p50", (m) => m.p50Ms ?? -1, (m) => ms(m.p50Ms), () => "num"],
    ["p99", (m) => m.p99Ms ?? -1, (m) => ms(m.p99Ms), () => "num"],
    ["Errors", (m) => m.errorRatio ?? -1, (m) => pct(m.errorRatio), (m) => "num" + (m.errorRatio > 0 ? " bad" : "")],
    ["5xx", (m) => m.fiveXxRatio ?? -1, (m) => pct(m.fiveXxRatio), (m) => "num" + (m.fiveXxRatio > 0 ? " bad" : "")],
    ["Check", (m) => m.healthCheck, (m) => m.healthCheck, (m) => "check " + m.healthCheck],
    ["Since", (m) => m.stateSince || "", (m) => ago(m.stateSince)],
    ["Override", (m) => (m.override ? m.override.madeAt : ""),
      (m) => (m.override ? change(m.override.set) + " (" + ago(m.override.madeAt) + ", " + m.override.madeBy + ")" : "–"),
      (m) => (m.override ? "override" : "")],
  ];

  function signin() {
    if (data && data.readOnly) return el("p", { id: "signin", class: "notice", text: "Read-only: no manager token is configured." });
    if (token !== null) {
      return el("p", { id: "signin" }, "Signed in for changes (the token stays in this page). ",
        el("button", { id: "signout", type: "button", onclick: () => { token = null; draw(); } }, "Sign out"));
    }
    const input = el("input", { id: "token", type: "password", placeholder: "manager token", autocomplete: "off" });
    return el("form", { id: "signin", onsubmit: (e) => { e.preventDefault(); if (input.value) { token = input.value; draw(); } } },
      "Sign in to make changes: ", input, " ", el("button", { id: "signin-button", type: "submit" }, "Sign in"));
  }

  function overview() {
    const t = el("table", { id: "overview", class: "overview" },
      el("tr", {}, ...["Pool", "Members usable", "Req/s", "5xx", "p99", "Sticky hits", "State"].map((h) => el("th", { text: h }))));
    for (const p of data.pools) {
      const s = p.summary;
      t.append(el("tr", { id: "o-" + p.namespace + "-" + p.name },
        el("td", {}, el("a", { href: "#p-" + p.namespace + "-" + p.name, text: key(p) })),
        el("td", { class: "num", text: s.membersUsable + "/" + s.members }),
        el("td", { class: "num rps", text: rate(s.requestsPerSecond) }),
        el("td", { class: "num", text: pct(s.fiveXxRatio) }),
        el("td", { class: "num", text: ms(s.p99Ms) }),
        el("td", { class: "num", text: pct(s.stickyHitRatio) }),
        el("td", { class: "pool-state " + s.state, text: s.state })));
    }
    return t;
  }

  function memberTable(p) {
    const k = key(p);
    const order = sort[k] || { col: -1, desc: false };
    const rows = p.members.slice();
    if (order.col >= 0) {
      const f = COLUMNS[order.col][1];
      rows.sort((a, b) => { const x = f(a), y = f(b); return (x < y ? -1 : x > y ? 1 : 0) * (order.desc ? -1 : 1); });
    }
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    const at = Math.min(page[k] || 0, pages - 1);
    const head = el("tr", {}, ...COLUMNS.map((c, i) => el("th", {
      class: "sortable" + (order.col === i ? (order.desc ? " desc" : " asc") : ""),
      title: "sort by " + c[0],
      onclick: () => { sort[k] = { col: i, desc: order.col === i ? !order.desc : false }; drawBoard(); },
    }, c[0])));
    if (!data.readOnly) head.append(el("th", { text: "" }));
    const t = el("table", { class: "members live-members", id: "t-" + p.namespace + "-" + p.name }, head);
    for (const m of rows.slice(at * PAGE_ROWS, (at + 1) * PAGE_ROWS)) {
      const tr = el("tr", { id: "r-" + p.namespace + "-" + p.name + "-" + m.route });
      COLUMNS.forEach((c) => tr.append(el("td", { class: c[3] ? c[3](m) : null, text: c[2](m) })));
      if (!data.readOnly) {
        tr.append(el("td", {}, el("button", { type: "button", class: "edit",
          onclick: () => { editing = { ns: p.namespace, pool: p.name, route: m.route }; draw(); } }, "Change…")));
      }
      t.append(tr);
    }
    const pager = pages > 1 ? el("p", { class: "pager", id: "pager-" + p.namespace + "-" + p.name },
      el("button", { type: "button", disabled: at === 0, onclick: () => { page[k] = at - 1; drawBoard(); } }, "‹ previous"),
      " page " + (at + 1) + " of " + pages + " (" + rows.length + " members) ",
      el("button", { type: "button", disabled: at >= pages - 1, onclick: () => { page[k] = at + 1; drawBoard(); } }, "next ›")) : null;
    return [t, pager];
  }

  function editor() {
    if (!editing || !data || data.readOnly) return null;
    const p = data.pools.find((x) => x.namespace === editing.ns && x.name === editing.pool);
    const m = p && p.members.find((x) => x.route === editing.route);
    if (!m) { editing = null; return null; }
    const what = editing.ns + "/" + editing.pool + " member " + editing.route;
    const status = el("select", { id: "edit-status" }, ...STATUSES.map((s) => el("option", { value: s, selected: s === m.status }, s)));
    const lf = el("input", { id: "edit-lf", type: "number", min: 1, max: 100, value: m.loadFactor });
    const set = el("input", { id: "edit-set", type: "number", min: 0, max: 99, value: m.lbSet });
    const box = el("div", { id: "editor", class: "editor" }, el("strong", { text: "Change " + what }), " ",
      el("label", {}, "status ", status), " ", el("label", {}, "weight ", lf), " ", el("label", {}, "lbSet ", set), " ");
    const body = () => {
      const c = {};
      if (status.value !== m.status) c.status = status.value;
      if (Number(lf.value) !== m.loadFactor) c.loadFactor = Number(lf.value);
      if (Number(set.value) !== m.lbSet) c.lbSet = Number(set.value);
      return c;
    };
    box.append(el("button", { id: "edit-apply", type: "button", onclick: () => {
      const c = body();
      if (!Object.keys(c).length) return note("Nothing to change for " + what + ".", true);
      confirmThen("Set " + change(c) + " on " + what + "?", () => send("PATCH", memberUrl(), JSON.stringify(c), what + ": " + change(c)));
    } }, "Apply…"));
    if (m.override) {
      box.append(" ", el("button", { id: "edit-clear", type: "button", onclick: () =>
        confirmThen("Clear the override of " + what + " (" + change(m.override.set) + ")?",
          () => send("DELETE", memberUrl() + "/override", null, what + ": override cleared")) }, "Clear override…"));
    }
    box.append(" ", el("button", { type: "button", onclick: () => { editing = null; draw(); } }, "Close"));
    return box;
  }
  const memberUrl = () => API + "/" + [editing.ns, editing.pool, "members", editing.route].map(encodeURIComponent).join("/");

  let pending = null;
  function confirmThen(question, action) {
    if (token === null) return note("Sign in first (the manager token, once for this page).", true);
    pending = { question, action };
    draw();
  }
  function confirmBar() {
    if (!pending) return null;
    return el("p", { id: "confirm", class: "confirm" }, pending.question, " ",
      el("button", { id: "confirm-yes", type: "button", onclick: () => { const a = pending.action; pending = null; a(); draw(); } }, "Confirm"), " ",
      el("button", { id: "confirm-no", type: "button", onclick: () => { pending = null; draw(); } }, "Cancel"));
  }

  const log = [];
  function note(text, bad) {
    log.unshift({ at: new Date().toLocaleTimeString(), text, bad });
    log.length = Math.min(log.length, 20);
    draw();
  }
  async function send(method, url, body, what) {
    try {
      const r = await fetch(url, { method, body, cache: "no-store",
        headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" } });
      const j = await r.json().catch(() => ({}));
      if (r.status === 401) token = null;
      if (r.ok) editing = null;
      if (r.ok) note(what + " — done (" + (j.changesGoTo || j.result || "saved") + ")", false);
      else note(what + " — refused: " + (j.error || r.status), true);
    } catch (e) {
      note(what + " — failed: " + e, true);
    }
    poll();
  }

  // The controls (sign-in, confirmation, editor, activity) are redrawn only on the user's
  // actions, so a poll never wipes what is being typed; the board is redrawn on every poll.
  const controls = el("div", { id: "controls" });
  const board = el("div", { id: "board" });
  root.append(controls, board);
  function draw() {
    if (!data) return;
    const kids = [signin(), confirmBar(), editor()];
    if (log.length) kids.push(el("ul", { id: "activity", class: "activity" },
      ...log.map((l) => el("li", { class: l.bad ? "bad" : "good", text: l.at + " " + l.text }))));
    controls.replaceChildren(...kids.filter((k) => k !== null));
    drawBoard();
  }
  function drawBoard() {
    const kids = [el("p", { id: "updated", class: "updated",
      text: "Live: updated " + new Date(Date.parse(data.generatedAt)).toLocaleTimeString() + ", every " + POLL_MS / 1000 +
        " s. Rates over " + data.rateWindowSeconds + " s, latency over " + data.latencyWindowSeconds + " s." })];
    kids.push(overview());
    for (const p of data.pools) {
      const s = p.summary;
      kids.push(el("h2", { id: "p-" + p.namespace + "-" + p.name }, "Pool " + key(p) + " ",
        el("span", { class: "pool-state " + s.state, text: s.state })));
      kids.push(el("p", { class: "settings", text: p.lbMethod + " · hosts " + (p.hosts.length ? p.hosts.join(", ") : "any") +
        " · prefix " + p.pathPrefix + " · sticky " + (p.stickyNames ? p.stickyNames.join(" | ") : "off") +
        (p.routeCookie ? " · cookie " + p.routeCookie : "") }));
      kids.push(...memberTable(p).filter((k) => k !== null));
    }
    board.replaceChildren(...kids);
  }

  let timer = null;
  let first = true;
  async function poll() {
    try {
      const r = await fetch(API + "?compact=1", { cache: "no-store" });
      if (r.ok) {
        data = await r.json();
        document.body.classList.add("live-on");
        if (first) draw(); else drawBoard();
        first = false;
      }
    } catch (e) {
      const u = document.getElementById("updated");
      if (u) u.textContent = "Not updating: " + e;
    }
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }
  poll();
})();

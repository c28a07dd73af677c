/* The status page's operator panel: dead letters (filter, select, replay or discard, behind
   a login with the status token), the audit trail, the day's reconciliation and the
   container search. Served as /ops/panel.js; it reads and writes only the JSON APIs
   (api/dead-letters, api/audit, api/reconciliation, api/containers/ID, api/auth).
   With the page's tabs (window.GatewayPage.registerTab) it fills the "dead-letters",
   "reconciliation" and "containers" tabs; without them it adds its own section. */
"use strict";
(function () {
  const TOKEN_KEY = "wh-status-token";
  const esc = s => String(s ?? "").replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const pad = n => String(n).padStart(2, "0");
  function when(epoch) {
    if (epoch == null) return "—";
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const today = () => new Date().toISOString().slice(0, 10);
  const FILTERS = ["sink", "kind", "reason", "device", "type"];

  // -- the login -----------------------------------------------------------------------
  const auth = {
    token: sessionStorage.getItem(TOKEN_KEY),
    who: null,
    headers() {
      const h = {"X-Gateway-Client": "status-page"};
      if (this.token) h.Authorization = `Bearer ${this.token}`;
      return h;
    },
  };
  async function request(url, opts = {}) {
    const r = await fetch(url, {...opts, headers: {...auth.headers(), ...(opts.headers || {})}});
    const text = await r.text();
    if (!r.ok) throw new Error(`${r.status}: ${text.slice(0, 300)}`);
    return text ? JSON.parse(text) : null;
  }
  async function login(token) {
    const r = await fetch("api/auth", {headers: {Authorization: `Bearer ${token}`}});
    const doc = r.ok ? await r.json() : {};
    if (doc.enabled === false) throw new Error("replay and discard are disabled: no " +
      "status.token_file is configured");
    if (!doc.who) throw new Error("wrong token");
    auth.token = token;
    auth.who = doc.who;
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  function logout() {
    auth.token = null; auth.who = null;
    sessionStorage.removeItem(TOKEN_KEY);
  }

  // -- dead letters --------------------------------------------------------------------
  function deadLetterView(el) {
    const selected = new Set();
    let rows = [], matching = 0, armed = null;
    el.innerHTML = `
      <div class="ops-login" data-role="login"></div>
      <form class="ops-filters" data-role="filters">
        <label>sink <input name="sink" size="8"></label>
        <label>kind <select name="kind"><option value="">any</option><option>sink</option>
          <option>ingest</option></select></label>
        <label>reason <input name="reason" size="10" placeholder="e.g. 422"></label>
        <label>device <input name="device" size="10"></label>
        <label>type <input name="type" size="8"></label>
        <button type="submit">Filter</button>
      </form>
      <div class="ops-actions">
        <button data-act="replay-selected" disabled>Replay selected</button>
        <button data-act="discard-selected" disabled>Discard selected</button>
        <button data-act="replay-all" disabled>Replay all matching</button>
        <button data-act="discard-all" disabled>Discard all matching</button>
        <span data-role="message" class="ops-message" role="status"></span>
      </div>
      <div class="scroll"><table class="ops-table" data-role="table"></table></div>
      <h3>Audit trail</h3>
      <div class="scroll"><table class="ops-table" data-role="audit"></table></div>`;
    const part = r => el.querySelector(`[data-role="${r}"]`);
    const message = (text, bad) => {
      const m = part("message"); m.textContent = text; m.classList.toggle("ops-bad", !!bad);
    };
    function filter() {
      const f = {}, form = part("filters");
      for (const k of FILTERS) { const v = form.elements[k].value.trim(); if (v) f[k] = v; }
      return f;
    }
    function renderLogin() {
      const box = part("login");
      if (auth.who) {
        box.innerHTML = `logged in as <b data-role="who">${esc(auth.who)}</b>
          <button data-role="logout">Log out</button>`;
        box.querySelector("[data-role=logout]").onclick = () => { logout(); renderLogin(); };
      } else {
        box.innerHTML = `<form data-role="login-form">To replay or discard, log in with the
          status token: <input type="password" name="token" autocomplete="current-password"
          aria-label="status token"> <button type="submit">Log in</button></form>`;
        box.querySelector("form").onsubmit = async ev => {
          ev.preventDefault();
          try { await login(ev.target.elements.token.value.trim()); message(""); }
          catch (e) { message(e.message, true); }
          renderLogin();
        };
      }
      renderButtons();
    }
    function renderButtons() {
      const can = !!auth.who;
      const b = a => el.querySelector(`[data-act="${a}"]`);
      b("replay-selected").disabled = b("discard-selected").disabled = !can || !selected.size;
      b("replay-all").disabled = b("discard-all").disabled = !can || !matching;
      b("replay-selected").textContent = `Replay selected (${selected.size})`;
      b("discard-selected").textContent = `Discard selected (${selected.size})`;
      for (const act of ["replay", "discard"]) {
        b(`${act}-all`).textContent = armed === act
          ? `Confirm: ${act} ${matching}?` : `${act[0].toUpperCase()}${act.slice(1)} all matching (${matching})`;
      }
    }
    function renderTable() {
      const t = part("table");
      if (!rows.length) { t.innerHTML = `<tr><td class="muted">no dead letters</td></tr>`; return; }
      t.innerHTML = `<tr><th><input type="checkbox" data-role="all" aria-label="select all"></th>
        <th>time</th><th>device</th><th>sink</th><th>type</th><th>container / code</th>
        <th>reason</th><th>category</th></tr>` + rows.map(d => `<tr data-id="${d.id}">
        <td><input type="checkbox" data-id="${d.id}" ${selected.has(d.id) ? "checked" : ""}
          aria-label="select dead letter ${d.id}"></td>
        <td>${when(d.created)}</td><td>${esc(d.device)}</td><td>${esc(d.sink ?? "—")}</td>
        <td>${esc(d.type ?? "—")}</td><td>${esc(d.container ?? "—")}</td>
        <td class="ops-reason">${esc(d.reason)}</td>
        <td><span class="ops-cat ops-cat-${esc(d.category)}">${esc(d.category)}</span></td></tr>`).join("");
      t.querySelector("[data-role=all]").onchange = ev => {
        for (const d of rows) ev.target.checked ? selected.add(d.id) : selected.delete(d.id);
        renderTable(); renderButtons();
      };
      for (const box of t.querySelectorAll("input[data-id]")) {
        box.onchange = () => {
          const id = Number(box.dataset.id);
          box.checked ? selected.add(id) : selected.delete(id);
          renderButtons();
        };
      }
    }
    async function renderAudit() {
      const doc = await request("api/audit?limit=20");
      const a = doc.audit;
      part("audit").innerHTML = a.length ? `<tr><th>time</th><th>who</th><th>via</th>
        <th>action</th><th>count</th><th>filter</th><th>ids</th></tr>` + a.map(r => `<tr>
        <td>${when(r.at)}</td><td>${esc(r.who)}</td><td>${esc(r.via)}</td><td>${esc(r.action)}</td>
        <td>${r.count}</td><td>${esc(Object.entries(r.filter || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "—")}</td>
        <td>${esc(r.ids.slice(0, 12).join(", "))}${r.ids.length > 12 ? ` … (${r.ids.length})` : ""}</td></tr>`).join("")
        : `<tr><td class="muted">no replays or discards yet</td></tr>`;
    }
    async function refresh() {
      const f = filter();
      const q = new URLSearchParams({...f, bodies: "0", limit: "200"});
      const [page, count] = await Promise.all([request(`api/dead-letters?${q}`),
        request(`api/dead-letters/count?${new URLSearchParams(f)}`)]);
      rows = page.dead_letters; matching = count.count;
      const ids = new Set(rows.map(d => d.id));
      for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
      renderTable(); renderButtons();
      await renderAudit();
    }
    async function act(action, body) {
      try {
        const r = await request(`api/dead-letters/${action}`, {method: "POST",
          headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
        message(action === "replay" ? `replayed ${r.replayed}` : `discarded ${r.discarded} (archived)`);
        selected.clear();
      } catch (e) { message(`${action} failed: ${e.message}`, true); }
      armed = null;
      await refresh();
    }
    part("filters").onsubmit = ev => { ev.preventDefault(); selected.clear(); refresh(); };
    for (const action of ["replay", "discard"]) {
      el.querySelector(`[data-act="${action}-selected"]`).onclick = () =>
        act(action, {ids: [...selected]});
      el.querySelector(`[data-act="${action}-all"]`).onclick = () => {
        if (armed !== action) { armed = action; renderButtons(); return; }
        act(action, {all: true, filter: filter()});
      };
    }
    renderLogin();
    if (auth.token && !auth.who) login(auth.token).then(renderLogin, () => { logout(); renderLogin(); });
    return refresh;
  }

  // -- reconciliation ------------------------------------------------------------------
  function reconciliationView(el) {
    el.innerHTML = `<form data-role="day"><label>day (UTC) <input type="date" name="day"
      value="${today()}"></label> <button type="submit">Show</button>
      <a data-role="csv" href="#">CSV</a></form>
      <div class="scroll"><table class="ops-table" data-role="table"></table></div>
      <p class="muted small">Counts of the day the gateway did it (UTC); pending: events
      accepted that day and not yet past the sink's cursor.</p>`;
    const form = el.querySelector("form");
    async function refresh() {
      const day = form.elements.day.value || today();
      el.querySelector("[data-role=csv]").href = `api/reconciliation?day=${day}&format=csv`;
      const doc = await request(`api/reconciliation?day=${encodeURIComponent(day)}`);
      const cols = ["delivered", "rejected", "replayed", "discarded", "pending"];
      const body = doc.types.flatMap(r => Object.entries(r.sinks).map(([sink, c]) => `<tr>
        <td>${esc(r.type)}</td><td>${esc(sink)}</td><td>${r.accepted}</td>
        ${cols.map(k => `<td class="${k === "pending" && c[k] ? "ops-bad" : ""}">${c[k]}</td>`).join("")}</tr>`));
      el.querySelector("[data-role=table]").innerHTML = body.length
        ? `<tr><th>type</th><th>sink</th><th>accepted</th>${cols.map(k => `<th>${k}</th>`).join("")}</tr>` +
          body.join("") + `<tr class="ops-total"><td>total</td><td></td><td>${doc.totals.accepted}</td>` +
          cols.map(k => `<td>${doc.totals[k]}</td>`).join("") + "</tr>"
        : `<tr><td class="muted">nothing on ${esc(day)}</td></tr>`;
    }
    form.onsubmit = ev => { ev.preventDefault(); refresh(); };
    return refresh;
  }

  // -- container search ----------------------------------------------------------------
  function containerView(el) {
    el.innerHTML = `<form data-role="search"><label>container or code
      <input name="id" size="16" placeholder="TOTE-000123" aria-label="container or code"></label>
      <button type="submit">Search</button></form><div data-role="result"></div>`;
    const form = el.querySelector("form"), out = el.querySelector("[data-role=result]");
    async function refresh() {
      const id = form.elements.id.value.trim();
      if (!id) return;
      const doc = await request(`api/containers/${encodeURIComponent(id)}`);
      const where = w => Object.entries(w).map(([s, v]) =>
        `<span class="ops-where ops-where-${esc(v.split(" ")[0])}">${esc(s)}: ${esc(v)}</span>`).join(" ");
      const data = d => esc(Object.entries(d || {}).filter(([, v]) => v != null)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "));
      out.innerHTML = (doc.events.length ? `<div class="scroll"><table class="ops-table"><tr>
        <th>seq</th><th>stored</th><th>occurred</th><th>type</th><th>device</th><th>data</th>
        <th>where</th></tr>${doc.events.map(e => `<tr><td>${e.seq}</td><td>${when(e.stored_at)}</td>
        <td>${esc(e.occurred_at)}</td><td>${esc(e.type)}</td><td>${esc(e.device)}</td>
        <td>${data(e.data)}</td><td>${where(e.where)}</td></tr>`).join("")}</table></div>`
        : `<p class="muted">no stored event names ${esc(id)}</p>`) +
        (doc.dead_letters_only.length ? `<p>dead letters whose event left the store:
          ${doc.dead_letters_only.map(d => `#${d.dead_letter} (${esc(d.sink)}: ${esc(d.reason)})`).join(", ")}</p>` : "");
    }
    form.onsubmit = ev => { ev.preventDefault(); refresh().catch(e => { out.textContent = e.message; }); };
    return refresh;
  }

  // -- wiring --------------------------------------------------------------------------
  const VIEWS = {"dead-letters": deadLetterView, reconciliation: reconciliationView,
                 containers: containerView};
  function mount(name, el) {
    // Built once (inputs and selections survive the refreshes); again if something else
    // replaced the view's content (e.g. a "could not load" line).
    if (!el.opsRefresh || !el.querySelector("form")) {
      el.opsRefresh = VIEWS[name](el); el.dataset.filled = "1";
    }
    return el.opsRefresh();
  }
  const style = document.createElement("style");
  style.textContent = `#ops-panel .scroll{overflow-x:auto;max-width:100%}.ops-filters,.ops-actions,.ops-login{display:flex;flex-wrap:wrap;gap:.3rem .6rem;
    align-items:center;margin:.4rem 0}.ops-filters input,.ops-filters select{max-width:9rem}
    .ops-message{font-weight:600}.ops-bad{color:#b00020;font-weight:600}.ops-reason{overflow-wrap:anywhere}
    .ops-table{border-collapse:collapse;font-size:.85rem}.ops-table td,.ops-table th{padding:.2rem .45rem;
    border-bottom:1px solid #ddd;text-align:left;vertical-align:top}.ops-cat{padding:0 .3rem;border-radius:.2rem;
    background:#eee}.ops-cat-business{background:#fff2d6}.ops-cat-auth{background:#fde7e9}
    .ops-cat-transient{background:#e8f0fb}.ops-where{white-space:nowrap;padding:0 .25rem;border-radius:.2rem;
    background:#eee}.ops-where-delivered{background:#e3f4e4}.ops-where-dead-lettered{background:#fde7e9}
    .ops-where-pending{background:#fff2d6}.ops-total td{font-weight:600}`;
  document.head.appendChild(style);
  if (window.GatewayPage && window.GatewayPage.registerTab) {
    for (const name of Object.keys(VIEWS)) window.GatewayPage.registerTab(name, el => mount(name, el));
    return;
  }
  // A page without tabs: one section of its own, refreshed every 10 s.
  const section = document.createElement("section");
  section.id = "ops-panel";
  section.innerHTML = `<h2>Dead letters</h2><div id="dead-letters-view"></div>
    <h2>Reconciliation</h2><div id="reconciliation-view"></div>
    <h2>Container trace</h2><div id="containers-view"></div>`;
  document.body.appendChild(section);
  const refreshAll = () => { for (const name of Object.keys(VIEWS)) {
    mount(name, document.getElementById(`${name}-view`)).catch(() => {}); } };
  refreshAll();
  setInterval(refreshAll, 10000);
})();

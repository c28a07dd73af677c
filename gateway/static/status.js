/* The status page: polls api/status every 2 s and api/history every 10 s; draws its charts
   as SVG itself (no library, no CDN: it works offline). When the gateway stops answering
   the whole page greys out and says since when it has no data.
   Tabs other than the overview are filled by renderers: GatewayPage.registerTab(name, fn),
   fn(element) is called when the tab is shown and every 10 s while it stays shown. */
"use strict";
(function () {
  const POLL_MS = 2000, HISTORY_MS = 10000, TIMEOUT_MS = 3000;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const $ = id => document.getElementById(id);
  const esc = s => String(s ?? "").replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const pad = n => String(n).padStart(2, "0");
  function clock(epoch) {
    if (epoch == null) return "—";
    const d = new Date(epoch * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function age(s) {
    if (s == null) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
  }
  function bytes(n) {
    if (n == null) return "—";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  const num = (v, digits = 1) => v == null ? "—" : Number(v).toFixed(digits);

  let last = null, lastAt = null, lastOkWall = null, history = null, failing = false;

  async function getJson(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(url, {signal: ctl.signal, cache: "no-store"});
      if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
      return await r.json();
    } finally { clearTimeout(timer); }
  }

  // -- alerts ---------------------------------------------------------------------------
  function renderAlerts(alerts) {
    $("alerts").innerHTML = alerts.map(a => `
      <div class="alert ${esc(a.severity)}" data-kind="${esc(a.kind)}" data-subject="${esc(a.subject)}">
        <div class="msg">${esc(a.message)}</div>
        <div class="meta">${esc(a.severity)} · since ${clock(a.since)} (${age(Date.now() / 1000 - (a.since ?? Date.now() / 1000))})
          · what to do: ${esc(a.action)} · runbook: <code>docs/${esc(a.runbook)}</code></div>
        ${a.detail ? `<details><summary>raw detail</summary><code>${esc(a.detail)}</code></details>` : ""}
      </div>`).join("");
  }
  function worstFor(alerts, subject) {
    const mine = alerts.filter(a => a.subject === subject);
    for (const s of ["critical", "warning", "info"]) if (mine.some(a => a.severity === s)) return s;
    return null;
  }

  // -- sinks ----------------------------------------------------------------------------
  function renderSinks(s) {
    $("sinks").innerHTML = Object.entries(s.sinks).map(([id, k]) => {
      const worst = worstFor(s.alerts, `sink:${id}`);
      const ok = k.state === "ok" && worst !== "critical";
      const rows = [
        ["state", `<span class="${ok ? "state-ok" : "state-bad"}">${esc(k.state)}</span>`],
        ["rate out", `${num(k.rate_out_per_s)} events/s`],
        ["backlog", `${k.backlog_events ?? "—"} events`],
        ["oldest waiting", k.backlog_events ? age(k.oldest_undelivered_age_s) : "nothing waits"],
        ["drains in", k.backlog_events ? (k.drain_estimate_s == null ? "not draining" : age(k.drain_estimate_s)) : "—"],
        ["down since", k.down_since ? clock(k.down_since) : "—"],
        ["last success", k.last_success ? `${clock(k.last_success)} (${age(Date.now() / 1000 - k.last_success)} ago)` : "none yet"],
        ["events in", k.events_in ?? "—"],
        ["delivered", k.events_delivered ?? k.delivered],
        ["dead letters", k.dead_letters ?? 0],
      ];
      if (k.type === "http") rows.push(["last reply", k.last_status == null ? "none (no reply)" : `HTTP ${k.last_status}`]);
      const err = k.last_error ? `<p class="small"><b>last error:</b> ${esc(k.last_error)}</p>` +
        (k.last_error_raw && k.last_error_raw !== k.last_error ?
          `<details class="small"><summary>raw error</summary><code>${esc(k.last_error_raw)}</code></details>` : "") : "";
      return `<article class="card sink" data-sink="${esc(id)}" data-state="${esc(k.state)}">
        <h3><span class="dot ${ok ? "" : worst || "critical"}"></span>${esc(id)}
          <span class="muted small">${esc(k.type)} ${esc(k.url ?? k.broker ?? "")}</span></h3>
        <dl>${rows.map(([a, b]) => `<dt>${esc(a)}</dt><dd>${b}</dd>`).join("")}</dl>${err}</article>`;
    }).join("");
  }

  // -- store ----------------------------------------------------------------------------
  function renderStore(s) {
    const st = s.store || {};
    const used = st.used_bytes || 0, max = st.max_bytes || 0;
    const pct = max ? 100 * used / max : 0;
    const cls = st.full || pct >= 95 ? "bad" : pct >= 80 ? "warn" : "";
    let trend = "";
    if (history && history.store_used_bytes.length > 1) {
      const u = history.store_used_bytes, t = history.t;
      const span = t[t.length - 1] - t[0];
      const per_h = span > 0 ? (u[u.length - 1] - u[0]) / span * 3600 : 0;
      trend = `${per_h >= 0 ? "+" : "−"}${bytes(Math.abs(per_h))}/h over the last ${age(span)}`;
      if (per_h > 0 && max > used) trend += ` · full in ${age((max - used) / per_h * 3600)}`;
    }
    const dl = st.dead_letters || {};
    $("store").innerHTML = `<article class="card" id="store-card">
      <h3>Store <span class="muted small">${esc(st.path ?? "")}</span></h3>
      <div class="bar ${cls}" title="${pct.toFixed(1)} %"><div style="width:${Math.min(100, pct).toFixed(1)}%"></div></div>
      <dl><dt>used</dt><dd>${bytes(used)} of ${bytes(max)} (${pct.toFixed(1)} %)</dd>
        <dt>trend</dt><dd id="store-trend">${trend || "—"}</dd>
        <dt>events held</dt><dd>${st.events ?? "—"}</dd>
        <dt>file</dt><dd>${bytes(st.file_bytes)}</dd>
        <dt>dead letters</dt><dd>${dl.sink ?? 0} rejected by upstream · ${dl.ingest ?? 0} unreadable inputs</dd></dl>
    </article>`;
  }

  // -- devices --------------------------------------------------------------------------
  const SHOWN = new Set(["driver", "role", "connected", "messages", "events", "last_error", "last_seen_s_ago", "open_fault"]);
  function renderDevices(s, dt) {
    $("devices").innerHTML = Object.entries(s.devices).map(([id, d]) => {
      const worst = worstFor(s.alerts, `device:${id}`);
      const dot = !d.connected ? "critical" : worst === "info" ? "" : (worst || "");
      const prev = last && last.devices[id];
      const rate = prev && dt > 0 && d.events != null && prev.events != null ? (d.events - prev.events) / dt : null;
      const faults = s.alerts.filter(a => a.subject === `device:${id}` && a.severity !== "info")
        .map(a => `<div class="fault">${esc(a.message)} · since ${clock(a.since)}</div>`).join("");
      const rest = Object.fromEntries(Object.entries(d).filter(([k]) => !SHOWN.has(k)));
      return `<div class="device" data-device="${esc(id)}" data-dot="${esc(dot || "ok")}">
        <div class="head"><span class="dot ${dot}"></span><span class="name">${esc(id)}</span>
          <span class="muted small">${esc(d.driver)} · ${esc(d.role ?? "")}</span>
          <span class="small">${rate == null ? "…" : num(rate)} events/s</span>
          <span class="muted small">${d.last_seen_s_ago == null ? "never seen" : `seen ${d.last_seen_s_ago} s ago`}</span></div>
        ${!d.connected && d.last_error ? `<div class="fault">not connected: ${esc(d.last_error)}</div>` : ""}
        ${faults}
        <details><summary>details</summary><pre>${esc(JSON.stringify(rest, null, 1))}</pre></details>
      </div>`;
    }).join("") || `<p class="muted">no devices configured</p>`;
  }

  // -- charts ---------------------------------------------------------------------------
  function chart(el, t, series, unit) {
    const W = 600, H = 170, L = 44, R = 8, T = 8, B = 22;
    if (!t.length) { el.innerHTML = `<p class="muted small">collecting samples…</p>`; return; }
    const t1 = t[t.length - 1], t0 = Math.max(t[0], t1 - 3600);
    const span = Math.max(1, t1 - t0);
    let top = 0;
    for (const s of series) for (const v of s.values) if (v > top) top = v;
    top = top > 0 ? top * 1.1 : 1;
    const x = ti => L + (ti - t0) / span * (W - L - R);
    const y = v => T + (1 - v / top) * (H - T - B);
    const lines = series.map(s => {
      const pts = s.values.map((v, i) => t[i] >= t0 ? `${x(t[i]).toFixed(1)},${y(v).toFixed(1)}` : null)
        .filter(Boolean).join(" ");
      return `<polyline fill="none" stroke="${s.color}" stroke-width="1.6" points="${pts}"><title>${esc(s.name)}</title></polyline>`;
    }).join("");
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(series.map(s => s.name).join(", "))}">
      <line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/>
      <line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>
      <text x="${L - 4}" y="${T + 9}" text-anchor="end">${esc(num(top / 1.1, top > 10 ? 0 : 1))}</text>
      <text x="${L - 4}" y="${H - B}" text-anchor="end">0</text>
      <text x="${L}" y="${H - 6}">−${esc(age(span))}</text>
      <text x="${W - R}" y="${H - 6}" text-anchor="end">now ${esc(unit)}</text>${lines}</svg>
      <div class="legend">${series.map(s => `<span style="--c:${s.color}">${esc(s.name)}</span>`).join("")}</div>`;
  }
  function renderCharts() {
    if (!history) return;
    const sinks = Object.keys(history.sinks);
    chart($("chart-rates"), history.t, [
      {name: "in", color: "#222", values: history.rate_in},
      ...sinks.map((s, i) => ({name: `out ${s}`, color: COLORS[i % COLORS.length], values: history.sinks[s].rate_out}))],
      "(events/s)");
    chart($("chart-backlog"), history.t,
      sinks.map((s, i) => ({name: s, color: COLORS[i % COLORS.length], values: history.sinks[s].backlog})), "(events)");
  }

  // -- the loop -------------------------------------------------------------------------
  function markStale() {
    failing = true;
    document.body.classList.add("stale");
    const banner = $("stale");
    banner.hidden = false;
    banner.textContent = lastOkWall == null ? "the gateway does not answer: no data yet"
      : `the gateway does not answer: no data since ${clock(lastOkWall)}`;
  }
  function markFresh() {
    failing = false;
    document.body.classList.remove("stale");
    $("stale").hidden = true;
  }

  async function tick() {
    let s;
    try { s = await getJson("api/status"); } catch (e) { markStale(); return; }
    const now = performance.now();
    const dt = lastAt == null ? 0 : (now - lastAt) / 1000;
    lastOkWall = Date.now() / 1000;
    markFresh();
    $("site").textContent = s.site;
    const sum = s.summary || {state: s.ready ? "ok" : "not_ready", text: ""};
    const pill = $("summary");
    pill.className = `pill pill-${sum.state}`;
    pill.dataset.state = sum.state;
    pill.textContent = sum.text;
    $("updated").textContent = `updated ${clock(lastOkWall)}`;
    renderAlerts(s.alerts);
    renderSinks(s);
    renderStore(s);
    renderDevices(s, dt);
    $("process").textContent = `pid ${s.pid} · up ${age(s.uptime_s)} · RSS ${bytes(s.rss_bytes)} · ` +
      `${s.committer.events} events committed since start`;
    last = s; lastAt = now;
  }
  async function tickHistory() {
    if (failing) return;
    try { history = await getJson("api/history"); } catch (e) { return; }
    renderCharts();
  }

  // -- tabs -----------------------------------------------------------------------------
  const renderers = {};
  let shown = "overview";
  function showTab(name) {
    shown = name;
    for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
    for (const sec of document.querySelectorAll("section.tab")) sec.hidden = sec.id !== `tab-${name}`;
    refreshTab();
  }
  function refreshTab() {
    const fn = renderers[shown];
    if (fn && !failing) Promise.resolve(fn($(`${shown}-view`))).catch(e => {
      $(`${shown}-view`).textContent = `could not load: ${e.message}`;
    });
  }
  async function deadLetters(el) {
    const page = await getJson("api/dead-letters?bodies=0&limit=100");
    const rows = page.dead_letters;
    el.innerHTML = rows.length ? `<div class="scroll"><table><tr><th>id</th><th>time</th><th>kind</th><th>device</th>
      <th>sink</th><th>type</th><th>reason</th></tr>${rows.map(d => `<tr><td>${d.id}</td><td>${clock(d.created)}</td>
      <td>${esc(d.kind)}</td><td>${esc(d.device)}</td><td>${esc(d.sink)}</td><td>${esc(d.type)}</td>
      <td>${esc(d.reason)}</td></tr>`).join("")}</table></div>` : `<p class="muted">no dead letters</p>`;
  }
  window.GatewayPage = {
    registerTab(name, fn) { renderers[name] = fn; if (name === shown) refreshTab(); },
  };
  window.GatewayPage.registerTab("dead-letters", deadLetters);
  for (const name of ["reconciliation", "containers"]) {
    window.GatewayPage.registerTab(name, el => {
      if (!el.dataset.filled) el.innerHTML = `<p class="muted">Served by <code>${esc(el.dataset.api)}</code>.</p>`;
    });
  }
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

  tick().then(tickHistory);
  setInterval(tick, POLL_MS);
  setInterval(tickHistory, HISTORY_MS);
  setInterval(() => { if (shown !== "overview") refreshTab(); }, HISTORY_MS);
})();

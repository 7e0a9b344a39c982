// mwcharge live view (Apache-2.0, written for this project). Reads /events (server-sent
// events) pushed by the controller at 2-5 Hz; no library, nothing fetched from outside.
"use strict";
const GUN_COLORS = ["#3b8eea", "#27b376", "#c678dd", "#e5c07b", "#56b6c2", "#d19a66"];
const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("mwc-token") || "";
if (params.get("token")) sessionStorage.setItem("mwc-token", token);
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
let history = [];
const HISTORY_MAX = 1500;
let built = { guns: 0, modules: 0 };

const $ = (sel, root = document) => root.querySelector(sel);
const fmt = (v, unit, nd = 0) => v === null || v === undefined ? "–" : Number(v).toFixed(nd) + (unit ? " " + unit : "");
const kw = (w) => w === null || w === undefined ? "–" : (w / 1000).toFixed(1) + " kW";
const secs = (s) => s === null || s === undefined ? "no expiry" : s.toFixed(1) + " s";

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function buildGuns(n) {
  const root = $("#guns");
  root.replaceChildren();
  for (let g = 1; g <= n; g++) {
    const p = el("div", { class: "panel gun", id: "gun-" + g, "data-gun": String(g) });
    p.innerHTML = `<h2>Gun ${g} <span class="state">–</span></h2><dl>
      <dt>Voltage</dt><dd class="voltage">–</dd>
      <dt>Current</dt><dd class="current">–</dd>
      <dt>Power</dt><dd class="power">–</dd>
      <dt>Session energy</dt><dd class="energy">–</dd>
      <dt>SoC</dt><dd class="soc">–</dd>
      <dt>Vehicle request</dt><dd class="request">–</dd>
      <dt>Binding limit</dt><dd class="binding">–</dd>
      <dt>Modules</dt><dd class="mods">–</dd></dl>
      <table class="limits"></table>`;
    const b = el("button", { class: "clear-fault", type: "button", hidden: "" }, "Clear fault…");
    b.addEventListener("click", () => clearFault(g));
    p.appendChild(b);
    root.appendChild(p);
  }
  built.guns = n;
}

function buildModules(mods, guns) {
  const root = $("#modules");
  root.replaceChildren();
  for (const m of mods) {
    const t = el("div", { class: "tile", "data-n": String(m.n) });
    t.innerHTML = `<b>M${m.n}</b> <span class="mg"></span><br><span class="mi"></span><br><span class="mt"></span>`;
    root.appendChild(t);
  }
  const table = $("#matrix");
  table.replaceChildren();
  const head = el("tr");
  head.appendChild(el("th", {}, "gun"));
  for (const m of mods) head.appendChild(el("th", {}, String(m.n)));
  table.appendChild(head);
  for (let g = 1; g <= guns; g++) {
    const row = el("tr", { "data-gun": String(g) });
    row.appendChild(el("th", {}, String(g)));
    for (const m of mods) row.appendChild(el("td", { "data-n": String(m.n) }));
    table.appendChild(row);
  }
  built.modules = mods.length;
}

function render(s) {
  if (built.guns !== s.guns.length) buildGuns(s.guns.length);
  if (built.modules !== s.modules.length) buildModules(s.modules, s.guns.length);
  $("#station-id").textContent = s.station_id;
  $("#station-power").textContent = kw(s.station.power_w);
  $("#station-cap").textContent = kw(s.station.cap_w);
  $("#cap-source").textContent = s.station.cap_source;
  $("#cap-expiry").textContent = secs(s.station.cap_expires_in_s);
  $("#headroom").textContent = kw(s.station.headroom_w);
  $("#cycle").textContent = `#${s.seq} · ${fmt(s.work_ms, "ms", 1)}`;
  for (const g of s.guns) {
    const p = $("#gun-" + g.n);
    const st = $(".state", p);
    st.textContent = g.state; st.className = "state " + g.state;
    $(".voltage", p).textContent = fmt(g.voltage_v, "V");
    const cur = $(".current", p);
    cur.textContent = fmt(g.current_a, "A"); cur.dataset.value = g.current_a ?? "";
    $(".power", p).textContent = kw(g.power_w);
    $(".energy", p).textContent = g.session_energy_wh === null ? "–" : (g.session_energy_wh / 1000).toFixed(2) + " kWh";
    $(".soc", p).textContent = fmt(g.soc_pct, "%", 1);
    $(".request", p).textContent = `${fmt(g.request_a, "A")} (EV max ${fmt(g.ev_max_a, "A")})`;
    const b = $(".binding", p);
    const bv = g.binding_value === null ? "" : " · " + (g.binding === "STATION" ? kw(g.binding_value) : fmt(g.binding_value, "A"));
    b.textContent = `${g.binding} · ${g.binding_source}${bv} · ${secs(g.binding_expires_in_s)}`;
    b.dataset.binding = g.binding; b.dataset.source = g.binding_source;
    $(".mods", p).textContent = g.modules.length ? g.modules.join(", ") : "none";
    const lt = $(".limits", p);
    lt.replaceChildren();
    for (const l of g.limits) {
      const tr = el("tr", l.source === g.binding_source ? { class: "bound" } : {});
      tr.appendChild(el("td", {}, l.source));
      tr.appendChild(el("td", {}, fmt(l.value, "A")));
      tr.appendChild(el("td", {}, secs(l.expires_in_s)));
      lt.appendChild(tr);
    }
    $("button.clear-fault", p).hidden = g.state !== "Faulted";
  }
  for (const m of s.modules) {
    const t = $(`.tile[data-n="${m.n}"]`);
    let cls = "tile" + (m.gun ? " g" + m.gun : "");
    if (m.derated) cls += " derated";
    if (m.fault) cls += " fault";
    if (m.draining) cls += " draining";
    t.className = cls;
    t.title = m.fault ? "fault: " + m.fault : (m.derated ? `derated to ${m.available_a} A` : "");
    $(".mg", t).textContent = m.gun ? "gun " + m.gun : "idle";
    $(".mi", t).textContent = fmt(m.current_a, "A");
    $(".mt", t).textContent = `${fmt(m.inlet_c, "", 0)}/${fmt(m.outlet_c, "°C", 0)}`;
    for (let g = 1; g <= s.guns.length; g++) {
      const c = $(`#matrix tr[data-gun="${g}"] td[data-n="${m.n}"]`);
      const fb = m.closed.includes(g), coil = m.commanded.includes(g);
      c.className = fb && coil ? "on" : coil ? "pending" : fb ? "stuck" : "";
      c.title = fb ? (coil ? "closed" : "closed but not commanded") : (coil ? "commanded, not closed yet" : "");
    }
  }
  const ev = $("#events");
  ev.replaceChildren();
  for (const e of [...s.events].reverse()) {
    ev.appendChild(el("li", {}, `${e.wall_time.slice(11, 19)} ${e.gun ? "gun " + e.gun + ": " : ""}${e.text}`));
  }
  for (const v of s.violations) ev.prepend(el("li", { class: "violation" }, "safety: " + v));
  history.push(s.point);
  if (history.length > HISTORY_MAX) history.splice(0, history.length - HISTORY_MAX);
  drawChart(s.guns.length);
}

function drawChart(guns) {
  const c = $("#chart"), ctx = c.getContext("2d");
  const W = c.width, H = c.height, L = 50, B = 18;
  ctx.clearRect(0, 0, W, H);
  if (history.length < 2) return;
  let max = 1;
  for (const p of history) for (let i = 1; i < p.length; i++) if (p[i] !== null && p[i] > max && (i !== 2 || p[i] < 1e9)) max = p[i];
  max *= 1.1;
  const x = (i) => L + (W - L - 4) * i / (history.length - 1);
  const y = (v) => H - B - (H - B - 6) * v / max;
  ctx.strokeStyle = "#2a313b"; ctx.fillStyle = "#8b95a3"; ctx.font = "11px sans-serif";
  for (let k = 0; k <= 4; k++) {
    const v = max * k / 4; ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W, y(v)); ctx.stroke();
    ctx.fillText((v / 1000).toFixed(0) + " kW", 2, y(v) + 4);
  }
  const series = [[2, "#e5534b", "cap", [6, 4]], [1, "#e6e9ee", "station", []]];
  for (let g = 0; g < guns; g++) series.push([3 + g, GUN_COLORS[g % 6], "gun " + (g + 1), []]);
  const legend = $("#legend"); legend.replaceChildren();
  for (const [i, color, name, dash] of series) {
    ctx.strokeStyle = color; ctx.setLineDash(dash); ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    history.forEach((p, k) => {
      const v = p[i];
      if (v === null || v === undefined) { pen = false; return; }
      if (pen) ctx.lineTo(x(k), y(Math.min(v, max))); else ctx.moveTo(x(k), y(Math.min(v, max)));
      pen = true;
    });
    ctx.stroke();
    const s = el("span", {}, "— " + name); s.style.color = color; legend.appendChild(s);
  }
  ctx.setLineDash([]);
  ctx.fillText(history[0][0].slice(11, 19), L, H - 4);
  ctx.fillText(history[history.length - 1][0].slice(11, 19), W - 60, H - 4);
}

async function clearFault(g) {
  if (!confirm(`Clear the latched fault of gun ${g}? Only when its cause has been removed.`)) return;
  const r = await fetch(withToken(`/api/guns/${g}/clear-fault`), {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ confirm: true }) });
  const body = await r.json();
  if (!r.ok) alert("clear fault failed: " + (body.error || r.status));
  else if (!body.cleared) alert(body.message);
}

function connect() {
  const es = new EventSource(withToken("/events"));
  es.addEventListener("history", (e) => { history = JSON.parse(e.data); });
  es.onmessage = (e) => { render(JSON.parse(e.data)); const c = $("#conn"); c.textContent = "live"; c.className = "conn up"; };
  es.onerror = () => { const c = $("#conn"); c.textContent = "reconnecting…"; c.className = "conn down"; };
}
connect();

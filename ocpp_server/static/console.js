// mwcharge CSMS console (Apache-2.0, written for this project): a client of /api/v1.
// The bearer token stays in this tab's sessionStorage; every call carries it.
"use strict";
const $ = (s, r = document) => r.querySelector(s);
let token = sessionStorage.getItem("csms-token") || "";
let stations = [];
let refreshing = false;
let profileSeq = Math.floor(Date.now() / 1000) % 100000;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function row(cells, attrs = {}) {
  const tr = el("tr", attrs);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else tr.appendChild(el("td", {}, c ?? "–"));
  }
  return tr;
}
const short = (ts) => ts ? ts.replace("T", " ").slice(0, 19) : "–";

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch("/api/v1" + path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401) { signOut("wrong or missing token"); }
  if (!r.ok) {
    const detail = data && data.detail !== undefined ? JSON.stringify(data.detail) : r.statusText;
    throw new Error(`${r.status} ${detail}`);
  }
  return data;
}

function result(label, ok, data) {
  const li = el("li", ok ? {} : { class: "err" },
    `${new Date().toISOString().slice(11, 19)} ${label}: ${ok ? JSON.stringify(data) : data}`);
  $("#results").prepend(li);
}

async function command(label, method, path, body) {
  try { const d = await api(method, path, body); result(label, true, d); await refresh(); return d; }
  catch (e) { result(label, false, e.message); return null; }
}

function signOut(why) {
  token = ""; sessionStorage.removeItem("csms-token");
  $("#main").hidden = true; $("#auth-state").textContent = why || "signed out";
}

async function refresh() {
  if (!token || refreshing) return;
  refreshing = true;
  try {
    stations = await api("GET", "/stations");
    $("#main").hidden = false; $("#auth-state").textContent = "signed in";
    await Promise.all([renderStations(), renderTransactions(), renderTokens()]);
  } catch (e) {
    $("#auth-state").textContent = "error: " + e.message;
  } finally { refreshing = false; }
}

async function renderStations() {
  const body = $("#stations tbody");
  const details = await Promise.all(stations.map((s) => api("GET", "/stations/" + encodeURIComponent(s.id))));
  body.replaceChildren();
  details.forEach((d, i) => {
    const s = stations[i], conn = d.connection || {};
    const online = el("span", { class: s.connected ? "online" : "offline" }, s.connected ? "online" : "offline");
    const evses = (d.evse_status || []).map((e) => `${e.evse_id}/${e.connector_id}: ${e.status}`).join(", ");
    body.appendChild(row([s.id, online, short(conn.last_message_at || s.last_boot_at),
      [s.vendor, s.model].filter(Boolean).join(" "), s.firmware_version, short(s.last_boot_at),
      s.security_profile, evses || "–"], { "data-station": s.id }));
  });
  const sel = $("#cmd-station"), keep = sel.value;
  sel.replaceChildren(...stations.map((s) => el("option", { value: s.id }, s.id)));
  if (keep) sel.value = keep;
}

function seqGaps(events) {
  const seqs = [...new Set(events.map((e) => e.seq_no).filter((n) => n !== null && n !== undefined))].sort((a, b) => a - b);
  const missing = [];
  for (let i = 1; i < seqs.length; i++) for (let n = seqs[i - 1] + 1; n < seqs[i] && missing.length < 10; n++) missing.push(n);
  return missing;
}

function latest(mvs, measurand) {
  for (let i = mvs.length - 1; i >= 0; i--) if (mvs[i].measurand === measurand && !mvs[i].phase) return mvs[i];
  return null;
}

async function renderTransactions() {
  const txs = await api("GET", "/transactions?limit=25");
  const details = await Promise.all(txs.map((t) => api("GET", "/transactions/" + t.id)));
  const body = $("#transactions tbody");
  body.replaceChildren();
  details.forEach((t) => {
    const gaps = seqGaps(t.events || []);
    const mvs = t.meter_values || [];
    const p = t.active ? latest(mvs, "Power.Active.Import") : null;  // an ended one draws none
    const state = t.active ? "running" : "ended";
    let stop = el("span");
    if (t.active) {
      stop = el("button", { type: "button", class: "remote-stop" }, "Remote stop");
      stop.addEventListener("click", () => command(`remote stop ${t.transaction_id}`, "POST",
        `/stations/${encodeURIComponent(t.station_id)}/remote-stop`, { transaction_id: t.transaction_id }));
    }
    const tr = row([t.id, t.station_id, t.evse_id ?? t.connector_id, t.transaction_id, t.id_token,
      short(t.started_at), state, p ? `${(p.value / 1000).toFixed(1)} kW` : "–",
      t.energy_wh === null ? "–" : `${(t.energy_wh / 1000).toFixed(2)} kWh`, t.stop_reason,
      gaps.length ? "gap: " + gaps.join(",") : "ok", stop],
      { class: (t.active ? "running" : "ended") + (gaps.length ? " gap" : ""), "data-tx": t.transaction_id, "data-state": state });
    tr.children[10].className = "seq";
    body.appendChild(tr);
  });
}

async function renderTokens() {
  const toks = await api("GET", "/tokens");
  const body = $("#tokens tbody");
  body.replaceChildren();
  for (const t of toks) {
    const blocked = t.status === "Blocked";
    const b = el("button", { type: "button", class: blocked ? "unblock" : "block" }, blocked ? "Unblock" : "Block");
    b.addEventListener("click", () => command(`${blocked ? "unblock" : "block"} ${t.id_token}`, "POST",
      `/tokens/${encodeURIComponent(t.id_token)}/${blocked ? "unblock" : "block"}`));
    body.appendChild(row([t.id_token, t.type, t.status, t.expiry, b], { "data-token": t.id_token, "data-status": t.status }));
  }
}

function target() {
  const id = $("#cmd-station").value;
  const st = stations.find((s) => s.id === id);
  const evse = parseInt($("#cmd-evse").value || "0", 10);
  return { id, path: "/stations/" + encodeURIComponent(id), v16: st && st.protocol === "ocpp1.6", evse };
}

function limitProfile(amps, v16) {
  const id = ++profileSeq;
  const period = [{ startPeriod: 0, limit: amps }];
  if (v16) return { id, body: { chargingProfileId: id, stackLevel: 9, chargingProfilePurpose: "TxDefaultProfile",
    chargingProfileKind: "Relative", chargingSchedule: { chargingRateUnit: "A", chargingSchedulePeriod: period } } };
  return { id, body: { id, stackLevel: 9, chargingProfilePurpose: "TxDefaultProfile", chargingProfileKind: "Absolute",
    chargingSchedule: [{ id: 1, chargingRateUnit: "A", startSchedule: new Date(Date.now() - 60000).toISOString(),
      chargingSchedulePeriod: period }] } };
}

function wire() {
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault(); token = $("#token").value.trim(); sessionStorage.setItem("csms-token", token);
    $("#token").value = ""; refresh();
  });
  $("#logout").addEventListener("click", () => signOut());
  $("#token-add").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#new-token").value.trim();
    if (!id) return;
    command(`add token ${id}`, "POST", "/tokens", { id_token: id, type: $("#new-token-type").value })
      .then(() => { $("#new-token").value = ""; });
  });
  $("#cmd-start").addEventListener("click", () => {
    const t = target(), tok = $("#cmd-start-token").value.trim();
    if (!tok) { result("remote start", false, "give an id token"); return; }
    command(`remote start ${t.id} EVSE ${t.evse}`, "POST", t.path + "/remote-start", { id_token: tok, evse_id: t.evse || null });
  });
  $("#cmd-set-limit").addEventListener("click", () => {
    const t = target(), amps = parseFloat($("#cmd-limit").value);
    if (!(amps >= 0)) { result("set limit", false, "give a limit in A (0 or more)"); return; }
    const p = limitProfile(amps, t.v16);
    command(`set limit ${amps} A on ${t.id} EVSE ${t.evse} (profile ${p.id})`, "POST", t.path + "/charging-profile",
      { evse_id: t.evse, charging_profile: p.body });
  });
  $("#cmd-clear-limit").addEventListener("click", () => {
    const t = target();
    command(`clear limits on ${t.id} EVSE ${t.evse}`, "POST", t.path + "/charging-profile/clear",
      { evse_id: t.evse, purpose: "TxDefaultProfile", stack_level: 9 });
  });
  $("#cmd-reset").addEventListener("click", () => {
    const t = target(), type = $("#cmd-reset-type").value;
    if (!confirm(`Reset ${t.id} (${type})? Running sessions end.`)) return;
    command(`reset ${t.id} ${type}`, "POST", t.path + "/reset", { type: t.v16 ? (type === "Immediate" ? "Hard" : "Soft") : type });
  });
  for (const [btn, operative] of [["#cmd-operative", true], ["#cmd-inoperative", false]]) {
    $(btn).addEventListener("click", () => {
      const t = target();
      command(`${operative ? "operative" : "inoperative"} ${t.id} EVSE ${t.evse}`, "POST", t.path + "/availability",
        { operative, evse_id: t.evse || null });
    });
  }
  $("#cmd-trigger").addEventListener("click", () => {
    const t = target(), msg = $("#cmd-trigger-msg").value;
    command(`trigger ${msg} on ${t.id}`, "POST", t.path + "/trigger-message",
      { requested_message: msg, evse_id: t.evse || null });
  });
}

wire();
if (token) refresh(); else signOut();
setInterval(refresh, 2000);

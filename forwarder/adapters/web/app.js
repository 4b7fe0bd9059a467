// The forwarder's operator page.  Every piece of data reaches the DOM through textContent
// (no HTML parsing of data), so PV names, topics and values are shown as text whatever they hold.
"use strict";

const COLUMNS = [
  ["channel", "Channel"], ["protocol", "Protocol"], ["schema", "Schema"], ["topic", "Topic"],
  ["state", "State"], ["age", "Last update"], ["rate", "Rate"], ["forwarded", "Forwarded"],
  ["dropped", "Dropped"], ["severity", "Alarm"], ["preview", "Last value"],
];
const REFRESH_MS = 1000;

const view = { filter: "", topic: "", state: "", sort: "channel", order: "asc", page: 1, pageSize: 100 };
let writable = false;
let clustered = false;  // a member of a --group cluster: its share, and a shard column
let refreshTimer = null;
let generation = 0;  // answers to superseded requests are ignored

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never";
  if (s < 10) return s.toFixed(1) + " s ago";
  if (s < 120) return Math.round(s) + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  return (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + "/s";
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return d + " d " + h + " h";
  if (h) return h + " h " + m + " min";
  if (m) return m + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s) + " s";
}

function setList(dl, pairs) {
  const nodes = [];
  for (const [term, value, cls] of pairs) {
    nodes.push(el("dt", term));
    nodes.push(el("dd", value, cls));
  }
  dl.replaceChildren(...nodes);
}

function showError(message) {
  const banner = $("error-banner");
  banner.textContent = message;
  banner.hidden = false;
}

function clearError() { $("error-banner").hidden = true; }

async function getJson(url) {
  const reply = await fetch(url, { cache: "no-store", headers: { "Accept": "application/json" } });
  let body = null;
  try { body = await reply.json(); } catch (_e) { body = null; }
  if (!reply.ok) {
    const why = body && typeof body.error === "string" ? body.error : reply.statusText;
    throw new Error("HTTP " + reply.status + ": " + why);
  }
  return body;
}

function streamsUrl() {
  const q = new URLSearchParams();
  if (view.filter) q.set("filter", view.filter);
  if (view.topic) q.set("topic", view.topic);
  if (view.state) q.set("state", view.state);
  q.set("sort", view.sort);
  q.set("order", view.order);
  q.set("page", String(view.page));
  q.set("page_size", String(view.pageSize));
  return "/api/streams?" + q.toString();
}

function renderSummary(s) {
  $("service-id").textContent = s.service_id + " @ " + s.host;
  const broker = s.broker_reachable === null ? ["checking…", ""] :
    s.broker_reachable ? ["reachable", "ok"] : ["UNREACHABLE", "bad"];
  setList($("sum-service"), [
    ["Version", s.version], ["Service id", s.service_id], ["Uptime", fmtDuration(s.uptime_s)],
    ["Broker", broker[0], broker[1]],
    ["Producer queue", s.producer_queue_length, s.producer_queue_length > 10000 ? "bad" : ""],
  ]);
  const st = s.streams;
  setList($("sum-streams"), [
    ["Configured", st.configured], ["Connected", st.connected, "ok"],
    ["Disconnected", st.disconnected, st.disconnected ? "bad" : ""],
    ["Never connected", st.never_connected, st.never_connected ? "bad" : ""],
    ["PVs", s.pvs],
  ]);
  const r = s.rates;
  setList($("sum-rates"), r ? [
    ["Received", fmtRate(r.updates_received)], ["Forwarded", fmtRate(r.updates_forwarded)],
    ["Messages", fmtRate(r.messages_produced)], ["Re-sends", fmtRate(r.resends)],
  ] : [["", "measuring…"]]);
  const drops = [];
  if (r) {
    for (const [reason, rate] of Object.entries(r.dropped)) {
      const total = s.counters.dropped[reason];
      drops.push([reason.replace(/_/g, " "), fmtRate(rate) + " (" + total + " total)", rate > 0 ? "bad" : ""]);
    }
  }
  setList($("sum-drops"), drops.length ? drops : [["", "measuring…"]]);
  const c = s.cluster || null;
  $("cluster-card").hidden = c === null;
  if (c !== null) {
    setList($("sum-cluster"), [
      ["Group", c.group], ["This member", s.service_id], ["Group member id", c.member_id],
      ["Shards owned", c.shards.length + " of " + c.shard_count + (c.shards.length ? " (" + c.shards.join(", ") + ")" : "")],
      ["Streams here", st.configured + " of " + (c.streams_configured === undefined ? "?" : c.streams_configured) + " in the cluster"],
      ["Rebalances", c.rebalances],
      ["Last hand-over", c.last_handover_s === null ? "–" : c.last_handover_s.toFixed(2) + " s"],
    ].concat(clusterView(c.view)));
  }
  if (s.writable !== writable || (c !== null) !== clustered) {
    writable = s.writable;
    clustered = c !== null;
    $("admin").hidden = !writable;
    renderHeader();
  }
  $("config-topic").textContent = s.config_topic;
  fillSelect($("add-protocol"), s.protocols);
  fillSelect($("add-schema"), s.schemas);
}

// The members as the status topic shows them (read in the background; null until then).
function clusterView(v) {
  if (v === null || v === undefined) return [["Members", "reading the status topic…"]];
  if (v.error) return [["Members", v.error, "bad"]];
  const rows = v.members.map((m) => ["Member " + m.service_id,
    "shards " + (m.shards.length ? m.shards.join(", ") : "none") + " · " + m.streams + " streams"]);
  if (v.stale.length) rows.push(["Not reporting", v.stale.join(", "), "bad"]);
  if (v.unowned_shards.length) {
    rows.push(["Unowned shards", v.unowned_shards.join(", ") + " (" + v.unforwarded_streams + " streams not forwarded)", "bad"]);
  }
  if (v.doubly_owned.length) rows.push(["Claimed twice", v.doubly_owned.join(", "), "bad"]);
  return rows;
}

function fillSelect(select, values) {
  if (select.options.length === values.length) return;
  select.replaceChildren(...values.map((v) => { const o = el("option", v); o.value = v; return o; }));
}

function columns() {
  return clustered ? COLUMNS.concat([["shard", "Shard"]]) : COLUMNS;
}

function renderHeader() {
  const cells = columns().map(([id, label]) => {
    const th = el("th");
    th.dataset.col = id;
    if (view.sort === id) th.setAttribute("aria-sort", view.order === "asc" ? "ascending" : "descending");
    const b = el("button", label);
    b.type = "button";
    b.title = "sort by " + label.toLowerCase();
    b.addEventListener("click", () => {
      if (view.sort === id) view.order = view.order === "asc" ? "desc" : "asc";
      else { view.sort = id; view.order = "asc"; }
      view.page = 1;
      renderHeader();
      refreshSoon(0, false);
    });
    th.appendChild(b);
    return th;
  });
  if (writable) cells.push(el("th", ""));
  $("header-row").replaceChildren(...cells);
}

function renderRows(result) {
  const rows = result.rows.map((r) => {
    const tr = el("tr");
    tr.dataset.channel = r.channel;
    tr.dataset.state = r.state;
    if (r.problem) tr.className = "problem-" + r.problem;
    tr.append(
      el("td", r.channel, "channel"), el("td", r.protocol), el("td", r.schema),
      el("td", r.topic, "topic"), el("td", r.state, "state state-" + r.state),
      el("td", fmtAge(r.age_s), "num"), el("td", fmtRate(r.rate), "num"),
      el("td", r.forwarded, "num"), el("td", r.dropped, r.dropped ? "num bad" : "num"),
      el("td", r.severity === null ? "–" : r.severity + (r.alarm_status ? " " + r.alarm_status : ""),
        r.severity ? "sev-" + r.severity : ""),
      el("td", r.preview, "preview"),
    );
    if (clustered) tr.appendChild(el("td", r.shard, "num"));
    if (writable) {
      const td = el("td");
      const b = el("button", "Remove", "remove");
      b.type = "button";
      b.addEventListener("click", () => removeStream(r));
      td.appendChild(b);
      tr.appendChild(td);
    }
    return tr;
  });
  $("rows").replaceChildren(...rows);
  $("empty").hidden = result.matched !== 0;
  $("page-info").textContent = "page " + result.page + " of " + result.pages + " · " +
    result.matched + " of " + result.total + " streams match";
  $("prev").disabled = result.page <= 1;
  $("next").disabled = result.page >= result.pages;
}

async function refresh(withSummary) {
  const mine = ++generation;
  let next = REFRESH_MS;
  try {
    // A filter, sort or page change asks for the table only: it answers sooner.
    const [summary, streams] = await Promise.all([
      withSummary ? getJson("/api/summary") : Promise.resolve(null), getJson(streamsUrl())]);
    if (mine !== generation) return;
    if (summary !== null) renderSummary(summary);
    if (streams.pages < view.page) { view.page = streams.pages; next = 0; return; }  // shrank
    renderRows(streams);
    clearError();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (mine !== generation) return;
    // Keep the last data on screen; say what went wrong and since when.
    showError("Cannot refresh: " + err.message + " — showing data as of " +
      ($("updated").textContent.replace("updated ", "") || "never"));
  } finally {
    if (mine === generation) refreshSoon(next, next !== 0);
  }
}

function refreshSoon(ms, withSummary = true) {
  if (refreshTimer !== null) clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(withSummary); }, ms);
}

async function postChange(path, body) {
  const message = $("admin-message");
  message.className = "";
  message.textContent = "sending…";
  try {
    const reply = await fetch(path, {
      method: "POST",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + $("token").value },
      body: JSON.stringify(body),
    });
    let doc = null;
    try { doc = await reply.json(); } catch (_e) { doc = null; }
    if (!reply.ok) throw new Error((doc && doc.error) || ("HTTP " + reply.status));
    message.className = "done";
    message.textContent = "Sent " + doc.sent + " (" + doc.count + ") to the config topic.";
    refreshSoon(300);
    return true;
  } catch (err) {
    message.className = "error";
    message.textContent = "Not changed: " + err.message;
    return false;
  }
}

function removeStream(r) {
  if (!window.confirm("Remove " + r.channel + " → " + r.topic + " [" + r.schema + "]?")) return;
  postChange("/api/streams/remove", { filters: [{ channel: r.channel, schema: r.schema, topic: r.topic }] });
}

function setup() {
  renderHeader();
  let debounce = null;
  const onFilter = () => {
    if (debounce !== null) clearTimeout(debounce);
    debounce = setTimeout(() => {
      view.filter = $("filter").value.trim();
      view.topic = $("topic-filter").value.trim();
      view.page = 1;
      refreshSoon(0, false);
    }, 150);
  };
  $("filter").addEventListener("input", onFilter);
  $("topic-filter").addEventListener("input", onFilter);
  $("state-filter").addEventListener("change", () => { view.state = $("state-filter").value; view.page = 1; refreshSoon(0, false); });
  $("page-size").addEventListener("change", () => { view.pageSize = Number($("page-size").value); view.page = 1; refreshSoon(0, false); });
  $("prev").addEventListener("click", () => { if (view.page > 1) { view.page -= 1; refreshSoon(0, false); } });
  $("next").addEventListener("click", () => { view.page += 1; refreshSoon(0, false); });
  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const stream = {
      channel: $("add-channel").value.trim(), protocol: $("add-protocol").value,
      schema: $("add-schema").value, topic: $("add-topic").value.trim(),
      periodic: $("add-periodic").checked,
    };
    if (await postChange("/api/streams", { streams: [stream] })) $("add-channel").value = "";
  });
  $("remove-matching").addEventListener("click", () => {
    const channel = $("filter").value.trim(), topic = $("topic-filter").value.trim();
    if (!channel && !topic) { $("admin-message").textContent = "Type a channel or topic filter first."; return; }
    if (!window.confirm("Remove every stream matching channel '" + (channel || "*") + "' and topic '" + (topic || "*") + "'?")) return;
    postChange("/api/streams/remove", { filters: [{ channel: channel, topic: topic }] });
  });
  refresh(true);
}

document.addEventListener("DOMContentLoaded", setup);

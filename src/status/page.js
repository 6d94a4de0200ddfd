// rrproxy status page: fetch status.json about once a second and redraw
// the tables with the markup the server renders (src/status/html.rs).
"use strict";
(function () {
  const PAGE = 100;
  const params = new URLSearchParams(location.search);
  const view = {
    filter: params.get("filter") || "",
    state: params.get("state") || "",
    page: Math.max(1, parseInt(params.get("page") || "1", 10) || 1),
    per_page: params.get("per_page") || String(PAGE),
  };
  let updates = 0;
  let lastOk = 0;
  let inFlight = false;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }
  function rate(r) {
    return r === null || r === undefined ? "–" : r.toFixed(1);
  }
  function bytes(n) {
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if (n < 1024) return n + " B";
    let v = n / 1024, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return v.toFixed(1) + " " + units[u];
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  function duration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24,
      m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (d > 0) return d + "d " + h + "h " + pad(m) + "m";
    if (h > 0) return h + "h " + pad(m) + "m " + pad(s) + "s";
    if (m > 0) return m + "m " + pad(s) + "s";
    return s + "s";
  }
  function time(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + "Z";
  }
  function query(over) {
    const q = new URLSearchParams();
    const v = Object.assign({}, view, over || {});
    if (v.filter) q.set("filter", v.filter);
    if (v.state) q.set("state", v.state);
    if (v.page > 1) q.set("page", String(v.page));
    if (v.per_page !== String(PAGE)) q.set("per_page", v.per_page);
    return q.toString();
  }

  function meta(r) {
    return "version <b>" + esc(r.version) + "</b> · build " + esc(r.build.slice(0, 12)) +
      " · front pid " + r.pid + " · phase <b class=\"phase\">" + esc(r.phase) + "</b> · up " +
      duration(r.uptime_seconds) + " (since " + time(r.started_ms) + ") · " +
      (r.accepting ? "accepting" : "<b class=\"bad\">not accepting</b>");
  }
  function totals(t) {
    const items = [
      ["active", "active connections", String(t.active_connections)],
      ["pending", "waiting for a worker", String(t.pending_connections)],
      ["accepted", "accepted", t.accepted_total + " (" + rate(t.accepted_rate) + "/s)"],
      ["denied", "denied (access list)", String(t.denied_total)],
      ["refused", "refused (per-IP limit)", String(t.refused_per_ip_total)],
      ["failed", "failed (no backend)", String(t.failed_total)],
    ];
    return items.map(([id, label, v]) =>
      "<div><dt>" + label + "</dt><dd id=\"total-" + id + "\">" + esc(v) + "</dd></div>").join("");
  }
  function worker(w) {
    return "<tr data-slot=\"" + w.slot + "\" class=\"st-" + w.state + "\"><td>" + w.slot +
      "</td><td>" + (w.pid === null ? "-" : w.pid) + "</td><td class=\"state\">" + w.state +
      "</td><td class=\"active\">" + w.active + "</td><td class=\"conns\" data-value=\"" +
      w.connections_total + "\">" + w.connections_total + "</td><td>" + rate(w.connection_rate) +
      "</td><td>" + bytes(w.bytes_in_total) + "</td><td>" + bytes(w.bytes_out_total) + "</td><td>" +
      (w.byte_rate === null ? "–" : bytes(Math.floor(w.byte_rate))) + "</td><td>" + w.restarts +
      "</td><td>" + w.draining_pids.join(" ") + "</td></tr>";
  }
  function backend(b, queue) {
    const state = b.slow_start_percent === undefined ? b.state :
      b.state + " <small>(slow start " + b.slow_start_percent + "%)</small>";
    const name = b.name === b.address ? esc(b.name) :
      esc(b.name) + " <small>" + esc(b.address) + "</small>";
    const pct = (b.share * 100).toFixed(1);
    let health;
    if (b.health.checked) {
      health = "<span class=\"hc\">" + b.health.history.map((ok) =>
        ok ? "<i class=\"ok\"></i>" : "<i class=\"bad\"></i>").join("") + "</span> <small>" +
        esc(b.health.last === null ? "not checked yet" : b.health.last) + "</small>";
    } else {
      health = "<small>checks off</small>";
    }
    let row = "<tr data-backend=\"" + esc(b.name) + "\" class=\"st-" + b.state +
      "\"><td class=\"name\">" + name + "</td><td class=\"state\">" + state + "</td><td>" +
      b.weight + "</td><td class=\"active\">" + b.active + "</td><td class=\"conns\" data-value=\"" +
      b.connections_total + "\">" + b.connections_total + "</td><td>" + rate(b.connection_rate) +
      "</td><td class=\"share\"><span class=\"bar\"><span style=\"width:" + pct +
      "%\"></span></span> " + pct + "%</td><td class=\"health\">" + health + "</td><td>" +
      b.connect_failures_total + "</td><td>" + bytes(b.bytes_in_total) + "</td><td>" +
      bytes(b.bytes_out_total) + "</td>";
    if (queue) {
      const opt = (v) => (v === undefined || v === null ? "-" : v);
      row += "<td>" + opt(b.maxconn) + "</td><td>" + opt(b.queued) + "</td>";
    }
    return row + "</tr>";
  }
  function service(el, s) {
    el.querySelector(".policy").textContent = s.policy;
    el.querySelector(".listen").textContent = "listens on " + s.listen.join(", ") + " · " +
      s.active_connections + " active" +
      (s.max_connections ? " · " + s.limited_connections + " of max-conns " + s.max_connections : "") +
      " · " + rate(s.connection_rate) + " conn/s";
    for (const st of ["up", "down", "disabled", "draining"]) {
      const a = el.querySelector(".summary a[data-state=\"" + st + "\"] b");
      if (a) a.textContent = s.summary[st];
    }
    const queue = s.backends.some((b) => b.maxconn !== undefined || b.queued !== undefined);
    const head = el.querySelector("table.backends thead tr");
    if (queue && head.cells.length === 11) head.insertAdjacentHTML("beforeend", "<th>maxconn</th><th>queued</th>");
    if (!queue && head.cells.length > 11) { head.deleteCell(-1); head.deleteCell(-1); }
    el.querySelector("table.backends tbody").innerHTML = s.backends.map((b) => backend(b, queue)).join("");
    const shown = s.backends.length, per = view.per_page === "all" ? 0 : parseInt(view.per_page, 10);
    let p = "rows " + (shown ? s.offset + 1 : 0) + "–" + (s.offset + shown) + " of " + s.backends_matched + " matching";
    const pages = per ? Math.max(1, Math.ceil(s.backends_matched / per)) : 1;
    if (pages > 1) {
      p += " · page ";
      for (let i = 1; i <= pages; i++) {
        if (i === view.page) p += "<b>" + i + "</b> ";
        else if (i <= 3 || i + 2 >= pages || Math.abs(i - view.page) <= 2) p += "<a href=\"?" + esc(query({ page: i })) + "\">" + i + "</a> ";
        else if (i === 4 || i + 3 === pages) p += "… ";
      }
      p += "· <a href=\"?" + esc(query({ page: 1, per_page: "all" })) + "\">all rows</a>";
    }
    el.querySelector(".pager").innerHTML = p;
  }
  function events(list) {
    return list.map((e) => "<tr class=\"ev-" + e.kind + "\"><td>" + time(e.at_ms) + "</td><td>" +
      e.kind + "</td><td>" + esc(e.text) + "</td></tr>").join("");
  }

  function draw(r) {
    document.getElementById("meta").innerHTML = meta(r);
    document.getElementById("totals").innerHTML = totals(r.totals);
    document.querySelector("#workers tbody").innerHTML = r.workers.map(worker).join("");
    for (const s of r.services) {
      const el = document.querySelector(".service[data-service=\"" + CSS.escape(s.name) + "\"]");
      if (el) service(el, s);
    }
    document.querySelector("#events tbody").innerHTML = events(r.events);
  }

  async function tick() {
    if (inFlight || document.hidden) return;
    inFlight = true;
    const live = document.getElementById("live");
    try {
      const q = query({ per_page: view.per_page });
      const resp = await fetch("status.json?" + (q || "per_page=" + PAGE), { cache: "no-store" });
      if (!resp.ok) throw new Error(resp.status + " " + (await resp.text()).trim());
      draw(await resp.json());
      updates++;
      lastOk = Date.now();
      document.body.dataset.updates = String(updates);
      live.className = "on";
      live.textContent = "live: updated " + new Date().toLocaleTimeString();
    } catch (err) {
      live.className = "stale";
      live.textContent = "not updating: " + err.message + (lastOk ? " (last update " + new Date(lastOk).toLocaleTimeString() + ")" : "");
    } finally {
      inFlight = false;
    }
  }

  // The filter redraws as you type, without a reload.
  for (const form of document.querySelectorAll("form.filter")) {
    const apply = () => {
      view.filter = form.elements.filter.value.trim();
      view.state = form.elements.state.value;
      view.page = 1;
      history.replaceState(null, "", "?" + query());
      tick();
    };
    let timer = null;
    form.elements.filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 250); });
    form.elements.state.addEventListener("change", apply);
    form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  }
  document.addEventListener("visibilitychange", tick);
  tick();
  setInterval(tick, 1000);
})();

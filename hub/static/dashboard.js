// Dashboard behaviour: live SLA countdowns and live queue updates over server-sent events.
// No inline scripts anywhere: the CSP only allows files from /static.
"use strict";
(function () {
  // Every page carries its language's words on <body>: the lead page has no queue table.
  var units = (document.body.dataset.units || "d,h,m,s").split(",");
  var overdue = document.body.dataset.overdue || "overdue", left = document.body.dataset.left || "left";
  function fmt(ms) {
    var s = Math.floor(Math.abs(ms) / 1000), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60), sec = s % 60, pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (d) return d + units[0] + " " + h + units[1];
    if (h) return h + units[1] + " " + pad(m) + units[2];
    if (m) return m + units[2] + " " + pad(sec) + units[3];
    return sec + units[3];
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-due]").forEach(function (cell) {
      var due = Date.parse(cell.dataset.due), warn = cell.dataset.warn ? Date.parse(cell.dataset.warn) : null;
      var out = cell.querySelector(".countdown");
      if (!out || isNaN(due)) return;
      var ms = due - now;
      out.textContent = ms < 0 ? overdue + " " + fmt(ms) : fmt(ms) + " " + left;
      var row = cell.closest("tr") || cell;
      var state = ms < 0 ? "breached" : (warn !== null && now >= warn ? "warned" : "ok");
      row.classList.remove("state-ok", "state-warned", "state-breached");
      row.classList.add("state-" + state);
    });
  }
  function refreshRows(table, leadRef) {
    fetch(table.dataset.rowsUrl, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        // Signed out meanwhile: reloading the page leads to the sign-in page and back here.
        if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!r.ok) throw new Error(r.status);
        return r.text();
      })
      .then(function (html) {
        var body = document.getElementById("queue-rows");
        body.innerHTML = html;
        if (leadRef) {
          var row = body.querySelector('tr[data-lead="' + leadRef + '"]');
          if (row) row.classList.add("fresh");
        }
        tick();
      })
      .catch(function () { /* the next event or a reload will catch up */ });
  }
  // The lead page is not reloaded under the manager's hands (a reply being written would be
  // lost): it says that the lead changed and offers a reload.
  function leadChanged(status) {
    if (document.getElementById("lead-changed")) return;
    var note = document.createElement("p");
    note.id = "lead-changed";
    note.className = "notice";
    note.setAttribute("role", "status");
    note.appendChild(document.createTextNode(status.dataset.changed + " "));
    var link = document.createElement("a");
    // Without ?done= or ?error= (that news is old), with the page's ?lang=.
    var lang = new URLSearchParams(window.location.search).get("lang");
    link.href = window.location.pathname + (lang ? "?lang=" + encodeURIComponent(lang) : "");
    link.textContent = status.dataset.reload;
    note.appendChild(link);
    status.parentNode.insertBefore(note, status.nextSibling);
  }
  function connect() {
    var status = document.getElementById("live-status");
    var table = document.querySelector("table.queue");
    if (!status || !window.EventSource) return;
    var url = (table && table.dataset.eventsUrl) || status.dataset.eventsUrl;
    if (!url) return;
    var source = new EventSource(url);
    var timer = null;
    source.onopen = function () { status.textContent = status.dataset.ok; status.dataset.connected = "1"; };
    source.onerror = function () {
      status.textContent = status.dataset.off;
      status.dataset.connected = "0";
      // EventSource retries a dropped connection itself, but gives up for good on an answer
      // that is not a stream (a proxy's 502 during a restart, a 401 after signing out).
      if (source.readyState !== EventSource.CLOSED) return;
      setTimeout(function () {
        fetch(window.location.href, { method: "HEAD", credentials: "same-origin", redirect: "manual" })
          .then(function (r) {
            if (r.type === "opaqueredirect" || r.status === 401) window.location.reload();  // to sign-in
            else connect();
          })
          .catch(function () { connect(); });
      }, 5000);
    };
    source.addEventListener("lead", function (ev) {
      var data = {};
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (table) {
        clearTimeout(timer);
        timer = setTimeout(function () { refreshRows(table, data.lead); }, 150);
      } else if (status.dataset.lead) {
        if (data.lead === status.dataset.lead) leadChanged(status);
      } else if (status.dataset.reload && /^sla\.(breached|escalated)$/.test(data.type || "")) {
        // Only what this page lists, and once for a burst: a sweep breaching many leads at
        // once would otherwise reload the page under the manager's clicks again and again.
        if (!timer) timer = setTimeout(function () { window.location.reload(); }, 2000);
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    connect();
  });
})();

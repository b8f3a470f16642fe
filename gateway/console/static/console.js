/* Portcullis governance console: the decisions chart (uPlot) and the live stream (SSE).
   Progressive enhancement: every page renders and every form posts without this file. */
(function () {
  "use strict";

  var DECISIONS = ["allow", "deny", "rate_limited", "error", "bypass"];
  var COLOURS = { allow: "#1a7f37", deny: "#c5221f", rate_limited: "#9a4b00", error: "#7a3fd1", bypass: "#0b62c4" };
  var WINDOW_TEXT = { "1h": "the last hour", "1d": "the last day", "1w": "the last week" };

  // ---- overview: the decisions chart ---------------------------------------------------------
  function chart(el) {
    var plot = null;
    var buttons = document.querySelectorAll("[data-window]");

    function size() {
      return { width: Math.max(320, el.clientWidth - 8), height: 300 };
    }

    function draw(body) {
      var perMin = body.bucket_s / 60;  // the series are counts per bucket: plot requests per minute
      var data = [body.t].concat(DECISIONS.map(function (d) {
        return body.series[d].map(function (n) { return n / perMin; });
      }));
      var opts = {
        width: size().width, height: size().height,
        scales: { x: { time: true } },
        axes: [{}, { label: "requests / min", size: 60 }],
        series: [{ label: "time (UTC)" }].concat(DECISIONS.map(function (d) {
          return { label: d, stroke: COLOURS[d], width: 2, points: { show: false },
                   value: function (u, v) { return v == null ? "-" : v.toFixed(1); } };
        })),
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); }
      };
      if (plot) { plot.destroy(); }
      plot = new uPlot(opts, data, el);
      DECISIONS.forEach(function (d) {
        var cell = document.querySelector('[data-testid="total-' + d + '"]');
        if (cell) { cell.textContent = String(body.totals[d]); }
      });
      var caption = document.getElementById("totals-window");
      if (caption) { caption.textContent = WINDOW_TEXT[body.window] || body.window; }
      el.setAttribute("data-window", body.window);
      el.setAttribute("data-loaded", "true");
    }

    function load(w) {
      el.setAttribute("aria-busy", "true");
      fetch(el.getAttribute("data-series-url") + "?window=" + encodeURIComponent(w),
            { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/console/login"); throw new Error("logged out"); }
          return r.json();
        })
        .then(function (body) {
          draw(body);
          buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-window") === w)); });
        })
        .catch(function () {})
        .then(function () { el.removeAttribute("aria-busy"); });
    }

    buttons.forEach(function (b) {
      b.addEventListener("click", function () { load(b.getAttribute("data-window")); });
    });
    window.addEventListener("resize", function () { if (plot) { plot.setSize(size()); } });
    load("1h");
    // Keep the chart current without a reload: the selected window, once a minute.
    setInterval(function () { load(el.getAttribute("data-window") || "1h"); }, 60000);
  }

  // ---- live: the stream of decisions ----------------------------------------------------------
  var MAX_ROWS = 200;

  function fmtTime(ts) {
    return new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;  // textContent only: nothing from a row is ever parsed as HTML
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }

  function rowElement(r) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-testid", "live-row");
    tr.setAttribute("data-decision", r.decision || "");
    tr.setAttribute("data-agent", r.agent_id || "");
    tr.setAttribute("data-request", r.request_id || "");
    tr.setAttribute("data-ts", String(r.ts));
    cell(tr, fmtTime(r.ts), "when");
    cell(tr, r.agent_id || "-");
    cell(tr, r.action || "-");
    cell(tr, [r.resource_type, r.resource_name].filter(Boolean).join(" ") || "-");
    var dec = cell(tr, "");
    var badge = document.createElement("span");
    badge.className = "dec dec-" + (r.decision || "");
    badge.textContent = r.decision || "-";
    dec.appendChild(badge);
    cell(tr, (r.reasons || []).join("; "), "reasons");
    cell(tr, r.status == null ? "-" : String(r.status), "num");
    cell(tr, r.latency_ms == null ? "-" : Number(r.latency_ms).toFixed(1) + " ms", "num");
    return tr;
  }

  function live(tbody) {
    var form = document.getElementById("live-filter");
    var pause = document.getElementById("live-pause");
    var status = document.getElementById("live-status");
    var source = null;
    var paused = false;

    function query() {
      var params = new URLSearchParams();
      ["agent", "decision", "surface"].forEach(function (name) {
        var v = form.elements[name].value.trim();
        if (v) { params.set(name, v); }
      });
      return params.toString();
    }

    function connect() {
      if (source) { source.close(); }
      var q = query();
      source = new EventSource(tbody.getAttribute("data-stream-url") + (q ? "?" + q : ""));
      source.addEventListener("open", function () { status.textContent = "Live"; tbody.setAttribute("data-connected", "true"); });
      source.addEventListener("row", function (ev) {
        if (paused) { return; }
        var row = JSON.parse(ev.data);
        if (row.request_id && tbody.querySelector('tr[data-request="' + CSS.escape(row.request_id) + '"]')) { return; }
        // Newest on top, in time order even for a backlog sent after a pause or a reconnect.
        var before = tbody.firstChild;
        while (before && Number(before.getAttribute("data-ts")) > row.ts) { before = before.nextSibling; }
        tbody.insertBefore(rowElement(row), before);
        while (tbody.children.length > MAX_ROWS) { tbody.removeChild(tbody.lastChild); }
      });
      source.addEventListener("logout", function () { source.close(); window.location.assign("/console/login"); });
      source.addEventListener("unavailable", function () { source.close(); status.textContent = "This audit store has no live query."; });
      source.addEventListener("error", function () { status.textContent = paused ? "Paused" : "Reconnecting…"; });
    }

    function disconnect() {
      if (source) { source.close(); source = null; }
      tbody.removeAttribute("data-connected");
    }

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();  // keep the rows; only the stream changes
      history.replaceState(null, "", "/console/live" + (query() ? "?" + query() : ""));
      tbody.textContent = "";
      if (!paused) { connect(); }
    });
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume" : "Pause";
      status.textContent = paused ? "Paused" : "Connecting…";
      tbody.setAttribute("data-paused", String(paused));
      if (paused) { disconnect(); } else { connect(); }  // resuming keeps the filter in the form
    });
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var el = document.querySelector('[data-testid="decisions-chart"]');
    if (el && window.uPlot) { chart(el); }
    var tbody = document.querySelector('[data-testid="live-rows"]');
    if (tbody) { live(tbody); }
  });
})();

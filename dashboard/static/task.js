// A task's detail page: polls /api/tasks/NAME/state every second and redraws what changed, without a reload.
// Every string from the platform goes into the page as text (textContent), never as HTML.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var POLL_MS = 1000, IDLE_POLL_MS = 5000;
  var ICONS = { CREATED: "○", STARTED: "▶", COMPLETE: "✓", FAILED: "✕" };
  var lastKey = null, clustersDrawn = false, timer = null;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }
  function fmt(value, digits) {
    return (typeof value === "number") ? value.toFixed(digits === undefined ? 4 : digits) : "";
  }
  // plotly reads a few HTML-like tags in labels: give it names as plain text
  function plain(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function setStatus(state) {
    var holder = document.getElementById("task-status");
    var badge = el("span", null, "badge status-" + state.status.toLowerCase());
    badge.dataset.status = state.status;
    var icon = el("span", ICONS[state.status] || "?");
    icon.setAttribute("aria-hidden", "true");
    badge.appendChild(icon);
    badge.appendChild(document.createTextNode(" " + state.status));
    holder.replaceChildren(badge);
    var reason = document.getElementById("task-reason");
    reason.textContent = state.reason || "";
    reason.hidden = !state.reason;
  }

  function setProgress(state) {
    document.getElementById("round-counter").textContent = "Round " + state.round + " of " + state.rounds;
    var bar = document.getElementById("round-progress");
    bar.max = state.rounds || 1;
    bar.value = state.round;
    document.getElementById("joined-counter").textContent = state.joined + " joined of quorum " + state.quorum +
      " (at most " + state.max_participants + ")";
    var eps = document.getElementById("epsilon");
    if (state.epsilon && typeof state.epsilon.spent === "number") {
      eps.hidden = false;
      document.getElementById("epsilon-value").textContent = fmt(state.epsilon.spent, 3) +
        (state.epsilon.budget ? " of budget " + state.epsilon.budget : "") +
        (state.epsilon.delta ? " at δ " + state.epsilon.delta : "");
    }
    var runs = document.getElementById("runs");
    var items = Object.keys(state.runs).map(function (role) {
      var p = state.runs[role];
      var text = role + ": " + p.status;
      if (p.rounds && p.round) { text += ", round " + p.round + " of " + p.rounds; }
      if (p.epochs) { text += ", epoch " + (p.epoch || 0) + " of " + p.epochs; }
      if (p.dataset) { text += " (dataset " + p.dataset + ")"; }
      if (p.message) { text += " · " + p.message; }
      if (p.error) { text += " · " + p.error; }
      return el("li", text, p.status === "failed" ? "error-text" : "");
    });
    runs.replaceChildren.apply(runs, items.length ? items : [el("li", "nothing", "muted")]);
  }

  function setActions(state) {
    var any = false;
    document.querySelectorAll("#actions [data-action]").forEach(function (node) {
      var name = node.dataset.action, shown;
      if (name.indexOf("stop-") === 0) {
        shown = state.actions.stop.indexOf(name.slice(5)) >= 0;
      } else {
        shown = !!state.actions[name];
      }
      node.hidden = !shown;
      any = any || shown;
    });
    document.getElementById("no-actions").hidden = any;
  }

  function setMembers(state) {
    var body = document.querySelector("#members tbody");
    if (!state.role) { return; }
    var rows = state.members.map(function (m) {
      var tr = el("tr");
      tr.appendChild(el("td", m.user));
      tr.appendChild(el("td", m.org || ""));
      tr.appendChild(el("td", m.state + (m.reason ? ": " + m.reason : "")));
      tr.appendChild(el("td", (m.rows === null || m.rows === undefined) ? "hidden" : m.rows));
      return tr;
    });
    if (!rows.length) {
      var tr = el("tr"), td = el("td", "No one has joined yet.", "muted");
      td.colSpan = 4; tr.appendChild(td); rows = [tr];
    }
    body.replaceChildren.apply(body, rows);
  }

  function setRounds(state) {
    var body = document.querySelector("#rounds tbody");
    var metric = state.metric;
    document.getElementById("rounds-metric").textContent = metric ? "Combined " + metric : "Combined";
    var rows = state.history.map(function (r) {
      var tr = el("tr");
      var rejected = Object.keys(r.rejected).map(function (p) { return p + ": " + r.rejected[p]; }).join("; ");
      [r.round, r.reported.join(", "), rejected, r.missing.join(", "),
       metric ? fmt(r.metrics[metric]) : "", fmt(r.metrics.loss), fmt(r.epsilon, 3), fmt(r.duration_s, 1)
      ].forEach(function (value) { tr.appendChild(el("td", value)); });
      return tr;
    });
    if (!rows.length) {
      var tr = el("tr"), td = el("td", "No round recorded yet.", "muted");
      td.colSpan = 8; tr.appendChild(td); rows = [tr];
    }
    body.replaceChildren.apply(body, rows);
  }

  var CONFIG = { displaylogo: false, displayModeBar: false, responsive: true };
  var LAYOUT = { margin: { l: 56, r: 16, t: 36, b: 44 }, height: 300, font: { size: 12 },
                 legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
                 xaxis: { title: { text: "round" }, dtick: 1 } };
  function layout(ytitle, extra) {
    var out = JSON.parse(JSON.stringify(LAYOUT));
    out.yaxis = { title: { text: ytitle } };
    return Object.assign(out, extra || {});
  }
  function emptyChart(id, text) {
    var node = document.getElementById(id);
    node.dataset.points = "0";
    if (!node.querySelector(".chart-empty")) {
      node.replaceChildren(el("div", text, "chart-empty"));
    }
  }
  function curves(state, metric) {
    var rounds = state.history.map(function (r) { return r.round; });
    var traces = [];
    var combined = state.history.map(function (r) { return r.metrics[metric] === undefined ? null : r.metrics[metric]; });
    if (combined.some(function (v) { return v !== null; })) {
      traces.push({ x: rounds, y: combined, name: "all participants", mode: "lines+markers",
                    line: { width: 3, color: "#16202c" } });
    }
    var names = {};
    state.history.forEach(function (r) { Object.keys(r.participants).forEach(function (n) { names[n] = true; }); });
    Object.keys(names).sort().forEach(function (n) {
      traces.push({ x: rounds, name: plain(n), mode: "lines+markers", line: { dash: "dot" },
                    y: state.history.map(function (r) { var p = r.participants[n] || {}; return p[metric] === undefined ? null : p[metric]; }) });
    });
    var held = state.history.map(function (r) { return r.aggregator[metric] === undefined ? null : r.aggregator[metric]; });
    if (held.some(function (v) { return v !== null; })) {
      traces.push({ x: rounds, y: held, name: "aggregator held-out", mode: "lines+markers", line: { dash: "dash" } });
    }
    return traces;
  }
  function drawLine(id, state, metric, ytitle) {
    var node = document.getElementById(id);
    var traces = metric ? curves(state, metric) : [];
    if (!traces.length) { emptyChart(id, "No round recorded yet."); return; }
    if (node.querySelector(".chart-empty")) { node.replaceChildren(); }
    window.Plotly.react(node, traces, layout(ytitle), CONFIG);
    node.dataset.points = String(state.history.length);
  }
  function drawCharts(state) {
    if (!window.Plotly) {
      ["chart-metric", "chart-loss"].forEach(function (id) { emptyChart(id, "Charts need plotly; see the tables."); });
      return;
    }
    var metric = state.metric;
    document.getElementById("chart-metric-caption").textContent =
      metric ? "Test " + metric + " per round, combined and per participant" : "Test metric per round";
    drawLine("chart-metric", state, metric, metric ? "test " + metric : "");
    var hasLoss = state.history.some(function (r) {
      return r.metrics.loss !== undefined || Object.keys(r.participants).some(function (n) { return r.participants[n].loss !== undefined; });
    });
    document.getElementById("loss-figure").hidden = metric === "loss";  // the first chart is the loss then
    drawLine("chart-loss", state, hasLoss ? "loss" : null, "test loss");
    var eps = state.history.filter(function (r) { return typeof r.epsilon === "number"; });
    document.getElementById("epsilon-figure").hidden = !eps.length;
    if (eps.length) {
      window.Plotly.react("chart-epsilon", [{ x: eps.map(function (r) { return r.round; }), y: eps.map(function (r) { return r.epsilon; }),
        mode: "lines+markers", name: "ε spent" }], layout("ε"), CONFIG);
    }
    var c = state.confusion;
    document.getElementById("confusion-figure").hidden = !c;
    if (c) {
      var labels = c.classes.map(plain);
      document.getElementById("confusion-caption").textContent = "Confusion matrix of all participants' test rows, round " + c.round;
      window.Plotly.react("chart-confusion", [{ type: "heatmap", z: c.matrix, x: labels, y: labels, colorscale: "Blues", reversescale: true,
        hovertemplate: "true %{y}, predicted %{x}: %{z}<extra></extra>" }],
        { margin: { l: 60, r: 16, t: 12, b: 52 }, height: 320, xaxis: { title: { text: "predicted" }, type: "category" },
          yaxis: { title: { text: "true" }, type: "category", autorange: "reversed" } }, CONFIG);
    }
  }

  function drawClusters() {
    if (clustersDrawn || !window.Plotly) { return; }
    clustersDrawn = true;
    fetch(live.dataset.clustersUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        document.getElementById("clusters-figure").hidden = false;
        var traces = [];
        if (data.points.length) {
          traces.push({ type: "scatter", mode: "markers", name: "your rows", x: data.points.map(function (p) { return p[0]; }),
            y: data.points.map(function (p) { return p[1]; }), marker: { size: 5, opacity: 0.5, color: data.labels, colorscale: "Viridis" } });
        }
        var biggest = Math.max.apply(null, (data.sizes || [1]).concat([1]));
        traces.push({ type: "scatter", mode: "markers+text", name: "centroids", text: data.centroids.map(function (_, i) { return String(i); }),
          textposition: "top right", x: data.centroids.map(function (p) { return p[0]; }), y: data.centroids.map(function (p) { return p[1]; }),
          marker: { symbol: "star", size: data.centroids.map(function (_, i) { return data.sizes ? 12 + 18 * data.sizes[i] / biggest : 18; }),
                    color: data.centroids.map(function (_, i) { return i; }), colorscale: "Viridis", line: { color: "#000", width: 1 } } });
        window.Plotly.react("chart-clusters", traces, { margin: { l: 52, r: 16, t: 12, b: 44 }, height: 320,
          xaxis: { title: { text: plain(data.axes[0]) } }, yaxis: { title: { text: plain(data.axes[1]) } } },
          CONFIG);
      })
      .catch(function () { clustersDrawn = false; });
  }

  function render(state) {
    setStatus(state);
    setProgress(state);
    setActions(state);
    var key = JSON.stringify([state.history, state.members, state.status, state.confusion]);
    if (key !== lastKey) {
      lastKey = key;
      setMembers(state);
      setRounds(state);
      drawCharts(state);
    }
    if (state.status === "COMPLETE" && live.dataset.algorithm === "kmeans" && state.role) { drawClusters(); }
    live.dataset.status = state.status;
  }

  function poll() {
    fetch(live.dataset.stateUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (state) {
        var busy = true;
        if (state) {
          render(state);
          var runs = Object.keys(state.runs).some(function (k) { return state.runs[k].status === "running" || state.runs[k].status === "stopping"; });
          busy = runs || state.status === "CREATED" || state.status === "STARTED";
        }
        timer = window.setTimeout(poll, busy ? POLL_MS : IDLE_POLL_MS);
      })
      .catch(function () { timer = window.setTimeout(poll, IDLE_POLL_MS); });
  }
  function start() { poll(); }
  if (document.readyState === "complete") { start(); } else { window.addEventListener("load", start); }
}());

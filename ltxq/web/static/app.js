// ltxq dashboard: one EventSource per page turns the server's spool events into htmx
// triggers ("ltxq:queue", "ltxq:job-ID"); charts read metrics by byte offset. No polling.
(function () {
  "use strict";
  const live = document.getElementById("live");

  function connect() {
    const source = new EventSource("/events");
    source.onopen = () => live && live.classList.add("on");
    source.onerror = () => live && live.classList.remove("on");
    source.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (event.queue) document.body.dispatchEvent(new Event("ltxq:queue"));
      for (const id of event.jobs || []) {
        document.body.dispatchEvent(new Event("ltxq:job-" + id));
      }
    };
  }
  connect();

  // A live refresh must not wipe what a person is typing (a priority, a caption): hold it
  // while a field inside the refreshed part has the focus, and refresh when it leaves.
  document.body.addEventListener("htmx:beforeRequest", (e) => {
    const target = e.detail.elt;
    const active = document.activeElement;
    const trigger = (target && target.getAttribute("hx-trigger")) || "";
    if (trigger.startsWith("ltxq:") && active && active !== document.body &&
        target.contains(active) && /INPUT|TEXTAREA|SELECT/.test(active.tagName)) {
      e.preventDefault();
      const name = trigger.split(" ")[0];
      active.addEventListener("blur", () => document.body.dispatchEvent(new Event(name)),
                              { once: true });
    }
  });

  // Once an action from such a field is sent (Enter in a priority box), let go of the focus
  // so the held refresh runs.
  document.body.addEventListener("htmx:afterRequest", (e) => {
    const elt = e.detail.elt;
    const active = document.activeElement;
    if (elt && elt.hasAttribute("hx-post") && active && elt.contains(active)) active.blur();
  });

  // Show refusals (4xx) in the flash area instead of dropping them.
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    const status = e.detail.xhr.status;
    if (status >= 400 && status < 500) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
      if (!e.detail.xhr.getResponseHeader("content-type").startsWith("text/html")) {
        e.detail.serverResponse = '<div class="flash error"></div>';
        setTimeout(() => {
          const box = document.querySelector("#flash .flash.error");
          if (box) box.textContent = e.detail.xhr.responseText;
        });
      }
    }
  });

  // --- curves ---------------------------------------------------------------------------
  function ema(values, alpha) {
    const out = new Array(values.length);
    let last = null;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined) { out[i] = last; continue; }
      last = last === null ? v : alpha * last + (1 - alpha) * v;
      out[i] = last;
    }
    return out;
  }
  function size(el, height) {
    return { width: Math.max(300, el.clientWidth || 800), height: height };
  }
  const smoothing = document.getElementById("smoothing");
  const smoothingValue = document.getElementById("smoothing-value");
  function alpha() { return smoothing ? Number(smoothing.value) : 0; }

  const charts = document.getElementById("charts");
  if (charts) jobCharts(charts.dataset.job);
  const compare = document.getElementById("compare-chart");
  if (compare) compareChart(compare);

  function jobCharts(jobId) {
    const lossEl = document.getElementById("loss-chart");
    const lrEl = document.getElementById("lr-chart");
    const points = document.getElementById("points");
    const data = { step: [], loss: [], lr: [] };
    let offset = 0, busy = false, again = false;
    const lossPlot = new uPlot({ ...size(lossEl, 260), scales: { x: { time: false } },
      series: [{ label: "step" }, { label: "loss", stroke: "#c8d3e6", width: 1 },
               { label: "smoothed", stroke: "#2b6cb0", width: 2 }] },
      [[], [], []], lossEl);
    const lrPlot = new uPlot({ ...size(lrEl, 140), scales: { x: { time: false } },
      axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => v.toExponential(2)) }],
      series: [{ label: "step" }, { label: "lr", stroke: "#b7791f", width: 2 }] },
      [[], []], lrEl);
    window.ltxqCharts = { loss: lossPlot, lr: lrPlot, data: data };
    function draw() {
      lossPlot.setData([data.step, data.loss, ema(data.loss, alpha())]);
      lrPlot.setData([data.step, data.lr]);
      if (points) points.textContent = data.step.length + " points";
      lossEl.dataset.points = String(data.step.length);
    }
    async function load() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const r = await fetch("/jobs/" + jobId + "/metrics?offset=" + offset);
        if (r.ok) {
          const m = await r.json();
          offset = m.offset;
          for (let i = 0; i < m.step.length; i++) {
            data.step.push(m.step[i]); data.loss.push(m.loss[i]); data.lr.push(m.lr[i]);
          }
          if (m.step.length) draw();
        }
      } finally {
        busy = false;
        if (again) { again = false; load(); }
      }
    }
    load();
    document.body.addEventListener("ltxq:job-" + jobId, () => { load(); followLog(jobId); });
    document.body.addEventListener("ltxq:queue", () => load());
    if (smoothing) smoothing.addEventListener("input", () => {
      smoothingValue.textContent = smoothing.value; draw();
    });
    window.addEventListener("resize", () => {
      lossPlot.setSize(size(lossEl, 260)); lrPlot.setSize(size(lrEl, 140));
    });
  }

  let logBusy = false;
  async function followLog(jobId) {
    const log = document.getElementById("log");
    const follow = document.getElementById("follow");
    if (!log || logBusy) return;
    logBusy = true;
    try {
      const r = await fetch("/jobs/" + jobId + "/log?offset=" + log.dataset.offset);
      if (r.ok) {
        const m = await r.json();
        log.dataset.offset = m.offset;
        if (m.text) {
          log.appendChild(document.createTextNode(m.text));
          if (follow && follow.checked) log.scrollTop = log.scrollHeight;
        }
      }
    } finally { logBusy = false; }
  }

  async function compareChart(el) {
    const r = await fetch("/compare/metrics?jobs=" + encodeURIComponent(el.dataset.jobs));
    if (!r.ok) return;
    const all = await r.json();
    const ids = Object.keys(all);
    const steps = Array.from(new Set(ids.flatMap((i) => all[i].step))).sort((a, b) => a - b);
    const index = new Map(steps.map((s, k) => [s, k]));
    const raw = ids.map((i) => {
      const col = new Array(steps.length).fill(null);
      all[i].step.forEach((s, k) => { col[index.get(s)] = all[i].loss[k]; });
      return col;
    });
    const colors = ["#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#319795",
                    "#d53f8c", "#4a5568", "#dd6b20", "#38a169", "#805ad5", "#e53e3e"];
    const plot = new uPlot({ ...size(el, 300), scales: { x: { time: false } },
      series: [{ label: "step" }, ...ids.map((i, k) => ({ label: "job " + i,
        stroke: colors[k % colors.length], width: 2, spanGaps: true }))] },
      [steps, ...raw.map((c) => ema(c, alpha()))], el);
    el.dataset.points = String(steps.length);
    if (smoothing) smoothing.addEventListener("input", () => {
      smoothingValue.textContent = smoothing.value;
      plot.setData([steps, ...raw.map((c) => ema(c, alpha()))]);
    });
  }
})();

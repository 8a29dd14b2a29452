/* kilowatch device page: the 24-hour power chart (mean power per minute, Chart.js, vendored) and
   the device's events and debug-log lines, newest first, kept current over a server-sent stream
   (/api/v1/devices/{id}/stream). The page's lists are rendered by the server too: without this
   file they show what was stored when the page loaded. */
"use strict";

(() => {
  const KEEP = 200; // items a list keeps on the page (the API has the rest)
  const POWER_REFRESH_MS = 60000;
  const LEVELS = ["error", "warn", "info", "debug", "verbose"];
  const COLORS = ["#2563eb", "#9333ea", "#db2777", "#ea580c", "#65a30d", "#0891b2", "#4f46e5", "#a16207"];
  const TOTAL_COLOR = "#0f766e";

  // Times as the server writes them: "YYYY-MM-DD HH:MM:SS" and the zone's abbreviation, in the
  // site's zone (data-tz of #journals), or UTC when the browser does not know that zone.
  const journals = document.getElementById("journals");
  let stamp = null;
  try {
    stamp = new Intl.DateTimeFormat("en-CA", {
      timeZone: (journals && journals.dataset.tz) || "UTC", year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
      timeZoneName: "short",
    });
  } catch (err) {
    stamp = null;
  }

  function when(ts) {
    if (typeof ts !== "number" || !Number.isFinite(ts)) return "–";
    const d = new Date(ts * 1000);
    if (Number.isNaN(d.getTime())) return "–";
    if (stamp !== null) {
      const p = {};
      for (const part of stamp.formatToParts(d)) p[part.type] = part.value;
      return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
    }
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function timeEl(ts) {
    const t = el("time", "", when(ts));
    if (ts !== undefined) t.title = String(ts);
    return t;
  }

  function logItem(x) {
    const li = el("li", "lvl-" + (x.level === undefined ? "none" : x.level));
    li.append(timeEl(x.ts), " ");
    li.append(el("span", "lvl", x.level === undefined ? "" : (LEVELS[x.level] || String(x.level))), " ");
    if (x.source) li.append(el("span", "src", x.source), " ");
    li.append(el("span", "msg", x.message));
    return li;
  }

  function eventItem(e) {
    const li = el("li");
    li.append(timeEl(e.ts), " ", el("span", "comp", e.component), " ", el("strong", "ev", e.event));
    if (e.data && Object.keys(e.data).length) li.append(" ", el("code", "", JSON.stringify(e.data)));
    return li;
  }

  /* One list: a reset replaces it, new items go on top (they come newest first). */
  function journal(list, empty, render) {
    return (msg) => {
      if (msg.reset) list.replaceChildren();
      if (msg.gap && !msg.reset) list.prepend(el("li", "gap", "… more arrived than one read holds; some were skipped"));
      for (let i = msg.items.length - 1; i >= 0; i--) {
        const li = render(msg.items[i]);
        if (!msg.reset) li.classList.add("new");
        list.prepend(li);
      }
      while (list.children.length > KEEP) list.lastElementChild.remove();
      list.dataset.count = String(list.children.length);
      empty.hidden = list.children.length > 0;
    };
  }

  function liveJournals() {
    const box = document.getElementById("journals");
    if (!box || !window.EventSource) return;
    const state = document.getElementById("journal-state");
    const onLogs = journal(document.getElementById("log-list"), document.getElementById("log-empty"), logItem);
    const onEvents = journal(document.getElementById("event-list"), document.getElementById("event-empty"), eventItem);
    const es = new EventSource("/api/v1/devices/" + encodeURIComponent(box.dataset.device) + "/stream");
    const live = () => { state.textContent = "live"; state.dataset.state = "live"; };
    es.onopen = live;
    es.onerror = () => { state.textContent = "reconnecting…"; state.dataset.state = "reconnecting"; };
    es.addEventListener("logs", (ev) => { onLogs(JSON.parse(ev.data)); live(); });
    es.addEventListener("events", (ev) => { onEvents(JSON.parse(ev.data)); live(); });
  }

  function fmtW(w) {
    if (w === null || w === undefined) return "–";
    return Math.abs(w) >= 10000 ? (w / 1000).toFixed(2) + " kW" : w.toFixed(1) + " W";
  }

  /* The total, and the lines that say more than it: a device's channels when it has several
     (a Pro 4PM's switches), or the parts of its one whole (a Pro 3EM's phases), never a line
     that repeats the total. */
  function datasetsOf(data) {
    const names = Object.keys(data.channels);
    const whole = (n) => !n.includes("/") || !(n.split("/")[0] in data.channels);
    const wholes = names.filter(whole);
    const shown = wholes.length > 1 ? wholes : names.filter((n) => !whole(n));
    const line = (label, values, color, width) => ({
      label, data: values, borderColor: color, backgroundColor: color,
      borderWidth: width, pointRadius: 0, spanGaps: false,
    });
    return [line("Total", data.total_w, TOTAL_COLOR, 2)]
      .concat(shown.map((n, i) => line(n, data.channels[n], COLORS[i % COLORS.length], 1)));
  }

  function labelsOf(data, tz) {
    let fmt;
    try {
      fmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: tz });
    } catch (err) {
      fmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    }
    const out = [];
    for (let t = data.start; t < data.end; t += data.step_s) out.push(fmt.format(new Date(t * 1000)));
    return out;
  }

  async function powerChart() {
    const canvas = document.getElementById("power-chart");
    if (!canvas) return;
    const state = document.getElementById("power-state");
    const url = "/api/v1/devices/" + encodeURIComponent(canvas.dataset.device) + "/power?hours=" + canvas.dataset.hours;
    let chart = null;
    const load = async () => {
      let data;
      try {
        const r = await fetch(url, { headers: { Accept: "application/json" } });
        if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
        data = await r.json();
      } catch (err) {
        state.textContent = "could not load: " + err.message;
        state.dataset.state = "error";
        return;
      }
      // The drawn values, so people (and tests) can read exactly what the line shows.
      canvas.dataset.start = String(data.start);
      canvas.dataset.step = String(data.step_s);
      canvas.dataset.minutes = String(data.total_w.length);
      canvas.dataset.total = JSON.stringify(data.total_w);
      canvas.dataset.channels = JSON.stringify(Object.keys(data.channels));
      const measured = data.total_w.filter((w) => w !== null).length;
      state.textContent = measured ? "" : "no power measured in these 24 hours";
      state.dataset.state = "loaded";
      if (typeof Chart === "undefined") return;
      const labels = labelsOf(data, canvas.dataset.tz);
      const datasets = datasetsOf(data);
      if (chart) {
        chart.data.labels = labels;
        chart.data.datasets = datasets;
        chart.update();
      } else {
        chart = new Chart(canvas, {
          type: "line",
          data: { labels, datasets },
          options: {
            animation: false,
            responsive: true,
            maintainAspectRatio: false,
            normalized: true,
            interaction: { mode: "index", intersect: false },
            scales: {
              x: {
                grid: { display: false },
                ticks: { autoSkip: true, autoSkipPadding: 16, maxRotation: 0, maxTicksLimit: canvas.clientWidth < 500 ? 5 : 9 },
              },
              y: { beginAtZero: true, ticks: { callback: (v) => fmtW(v) } },
            },
            plugins: {
              legend: { display: datasets.length > 1, position: "bottom" },
              tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${fmtW(ctx.parsed.y)}` } },
            },
          },
        });
      }
      canvas.dataset.drawn = String(chart.data.labels.length);
    };
    await load();
    setInterval(load, POWER_REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    powerChart();
    liveJournals();
  });
})();

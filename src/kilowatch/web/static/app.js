/* kilowatch dashboard: energy chart (Chart.js, vendored), device search/sort, live values over SSE.
   No framework and no build step; every page also works without this file (tables hold the numbers). */
"use strict";

const PALETTE = ["#0f766e", "#2563eb", "#9333ea", "#db2777", "#ea580c", "#65a30d", "#0891b2", "#4f46e5",
  "#be123c", "#a16207", "#475569", "#059669"];
const EXPORT_COLOR = "#d97706";
const UNTRACKED_COLOR = "#94a3b8";

function fmtEnergy(wh) {
  const a = Math.abs(wh);
  if (a >= 10000) return (wh / 1000).toFixed(1) + " kWh";
  if (a >= 1000) return (wh / 1000).toFixed(2) + " kWh";
  return wh.toFixed(1) + " Wh";
}

function fmtPower(w) {
  if (w === null || w === undefined || Number.isNaN(w)) return "–";
  return Math.abs(w) >= 10000 ? (w / 1000).toFixed(2) + " kW" : w.toFixed(1) + " W";
}

/* A hatched fill marks bars that hold estimated energy (a gap spread by the ledger). */
function hatch(color) {
  const c = document.createElement("canvas");
  c.width = 8; c.height = 8;
  const g = c.getContext("2d");
  g.fillStyle = "#ffffff"; g.fillRect(0, 0, 8, 8);
  g.strokeStyle = color; g.lineWidth = 2.5;
  g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6); g.stroke();
  return g.createPattern(c, "repeat");
}

function drawEnergyChart() {
  const holder = document.getElementById("chart-data");
  const canvas = document.getElementById("energy-chart");
  if (!holder || !canvas) return;
  const data = JSON.parse(holder.textContent);
  // Expose the drawn values, so people (and tests) can read exactly what the bars show.
  canvas.dataset.labels = JSON.stringify(data.labels);
  canvas.dataset.import = JSON.stringify(data.total_import);
  canvas.dataset.export = JSON.stringify(data.total_export);
  canvas.dataset.estimated = JSON.stringify(data.estimated);
  canvas.dataset.titles = JSON.stringify(data.titles || data.labels);
  canvas.dataset.series = JSON.stringify(data.series.map((s) => s.name));
  canvas.dataset.untracked = JSON.stringify(data.untracked || null);
  if (typeof Chart === "undefined") return;
  const datasets = [];
  const hasExport = data.total_export.some((v) => v > 0);
  data.series.forEach((s, i) => {
    // Untracked energy (grid meter minus sub-meters) in grey: the part no sub-meter explains.
    const color = s.untracked ? UNTRACKED_COLOR : PALETTE[i % PALETTE.length];
    const pattern = hatch(color);
    // A series that only exports (a PV inverter) gets no empty import bars in the legend.
    if (!s.import.some((v) => v > 0) && s.export.some((v) => v > 0) && data.series.length > 1) {
      datasets.push({
        label: s.name + " Export", data: s.export.map((v) => -v), backgroundColor: EXPORT_COLOR,
        stack: "energy", kwEstimated: s.estimated, kwExport: true,
      });
      return;
    }
    datasets.push({
      label: data.series.length > 1 ? s.name : "Import",
      data: s.import,
      backgroundColor: s.import.map((_, j) => (s.estimated[j] ? pattern : color)),
      borderColor: color,
      borderWidth: s.estimated.map((e) => (e ? 1 : 0)),
      stack: "energy",
      kwEstimated: s.estimated,
      kwUntracked: Boolean(s.untracked),
    });
    if (hasExport && s.export.some((v) => v > 0)) {
      datasets.push({
        label: (data.series.length > 1 ? s.name + " " : "") + "Export",
        data: s.export.map((v) => -v),
        backgroundColor: EXPORT_COLOR,
        stack: "energy",
        kwEstimated: s.estimated,
        kwExport: true,
      });
    }
  });
  const chart = new Chart(canvas, {
    type: "bar",
    data: { labels: data.labels, datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { stacked: true, grid: { display: false } },
        y: { stacked: true, ticks: { callback: (v) => fmtEnergy(v) } },
      },
      plugins: {
        legend: { display: datasets.length > 1, position: "bottom" },
        tooltip: {
          callbacks: {
            // The axis says "3"; a tooltip names the bucket on its own ("Tue 3 Dec").
            title: (items) => (items.length ? (data.titles || data.labels)[items[0].dataIndex] : ""),
            label: (ctx) => {
              const ds = ctx.dataset;
              // export bars are drawn below the axis; untracked energy keeps its sign
              const v = ds.kwUntracked ? ctx.parsed.y : Math.abs(ctx.parsed.y);
              if (v === 0 && data.series.length > 4) return null;
              const est = ds.kwEstimated && ds.kwEstimated[ctx.dataIndex] ? " (estimated)" : "";
              return `${ds.label}: ${fmtEnergy(v)}${est}`;
            },
            footer: (items) => {
              if (!items.length) return "";
              const i = items[0].dataIndex;
              const grid = data.grid_meters && data.grid_meters.length;
              let s = (grid ? "Grid meter import " : "Total import ") + fmtEnergy(data.total_import[i]);
              if (data.total_export[i] > 0) s += " · export " + fmtEnergy(data.total_export[i]);
              return s;
            },
          },
        },
      },
    },
  });
  canvas.dataset.drawn = String(chart.data.datasets.length > 0 ? chart.data.labels.length : 0);
}

function barWidths() {
  document.querySelectorAll(".bar[data-w]").forEach((el) => { el.style.width = el.dataset.w + "%"; });
}

function deviceTable() {
  const table = document.getElementById("devices-table");
  if (!table) return;
  const body = table.tBodies[0];
  const search = document.getElementById("device-search");
  if (search) {
    search.addEventListener("input", () => {
      const q = search.value.trim().toLowerCase();
      for (const tr of body.rows) {
        if (!tr.dataset.search) continue;
        tr.hidden = q !== "" && !tr.dataset.search.includes(q);
      }
    });
  }
  table.querySelectorAll("th[data-sort]").forEach((th, col) => {
    th.addEventListener("click", () => {
      const asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      const numeric = th.dataset.sort === "num";
      const rows = Array.from(body.rows).filter((r) => r.dataset.device);
      rows.sort((a, b) => {
        const x = a.cells[col].dataset.v || "", y = b.cells[col].dataset.v || "";
        const r = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return asc ? r : -r;
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

/* Parts (em:0/a) are left out of a sum when their whole (em:0) is present, as the server does. */
function totalPower(byChannel) {
  let sum = null;
  for (const [key, w] of byChannel) {
    const [device, channel] = key.split("\u0000");
    if (channel.includes("/") && byChannel.has(device + "\u0000" + channel.split("/")[0])) continue;
    if (w === null || w === undefined) continue;
    sum = (sum || 0) + w;
  }
  return sum;
}

function fmtField(field, v) {
  if (v === undefined || v === null) return "–";
  if (field === "current_a") return v.toFixed(3);
  if (field === "frequency_hz" || field === "power_factor") return v.toFixed(2);
  return v.toFixed(1);
}

function liveDevice() {
  const table = document.getElementById("live-table");
  if (!table || !window.EventSource) return;
  const device = table.dataset.device;
  const state = document.getElementById("live-state");
  const total = document.getElementById("device-power");
  const power = new Map();
  table.querySelectorAll("tbody tr[data-channel]").forEach((tr) => {
    const cell = tr.querySelector('[data-field="power_w"]');
    const v = parseFloat(cell.textContent);
    power.set(device + "\u0000" + tr.dataset.channel, Number.isNaN(v) ? null : v);
  });
  const es = new EventSource("/api/v1/live?device=" + encodeURIComponent(device));
  es.onopen = () => { state.textContent = "live"; state.dataset.state = "live"; };
  es.onerror = () => { state.textContent = "reconnecting…"; state.dataset.state = "reconnecting"; };
  es.addEventListener("reading", (ev) => {
    const r = JSON.parse(ev.data);
    let tr = table.querySelector(`tbody tr[data-channel="${CSS.escape(r.channel)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.channel = r.channel;
      tr.innerHTML = "<td></td>" + ["power_w", "voltage_v", "current_a", "frequency_hz", "power_factor", "ts"]
        .map((f) => `<td class="num" data-field="${f}"></td>`).join("");
      tr.cells[0].textContent = r.channel;
      table.tBodies[0].appendChild(tr);
    }
    for (const f of ["power_w", "voltage_v", "current_a", "frequency_hz", "power_factor"]) {
      if (r[f] === undefined) continue;
      const td = tr.querySelector(`[data-field="${f}"]`);
      const text = fmtField(f, r[f]);
      if (td.textContent !== text) {
        td.textContent = text;
        td.classList.remove("flash"); void td.offsetWidth; td.classList.add("flash");
      }
    }
    tr.querySelector('[data-field="ts"]').textContent = new Date(r.ts * 1000).toLocaleTimeString();
    if (r.power_w !== undefined) power.set(r.device + "\u0000" + r.channel, r.power_w);
    const t = totalPower(power);
    total.textContent = fmtPower(t);
    total.dataset.powerW = t === null ? "" : String(t);
  });
}

function liveOverview() {
  const el = document.getElementById("total-power");
  if (!el || !window.EventSource) return;
  const power = new Map();
  const es = new EventSource("/api/v1/live");
  es.addEventListener("reading", (ev) => {
    const r = JSON.parse(ev.data);
    // Stale latest readings (devices offline for 15 min) do not count as power now.
    if (r.power_w === undefined || Date.now() / 1000 - r.ts > 900) return;
    power.set(r.device + "\u0000" + r.channel, r.power_w);
    const t = totalPower(power);
    el.textContent = fmtPower(t);
    el.dataset.powerW = t === null ? "" : String(t);
  });
}

function datePicker() {
  const picker = document.getElementById("date-picker");
  if (picker) picker.addEventListener("change", () => picker.form.submit());
  for (const id of ["device-filter", "view"]) {
    const el = document.getElementById(id);
    if (el) el.addEventListener("change", () => el.form.submit());
  }
}

document.addEventListener("DOMContentLoaded", () => {
  barWidths();
  drawEnergyChart();
  deviceTable();
  liveDevice();
  liveOverview();
  datePicker();
});

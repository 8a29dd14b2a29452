// The Fleet page: start a plan, an apply or a firmware rollout (admins), follow its job every
// second (GET /api/v1/fleet/jobs/{id}) and show the report; then refresh the devices' compliance.
(function () {
  "use strict";
  const actions = document.getElementById("fleet-actions");
  if (!actions) return;
  const csrf = document.body.dataset.csrf || "";
  const message = document.getElementById("fleet-message");
  const POLL_MS = 1000;
  let polling = null;

  function say(text) {
    message.textContent = text || "";
    message.hidden = !text;
  }

  function expressions(input) {
    return input.value.split(/[\s,]+/).filter(Boolean);
  }

  async function start(kind, body) {
    say("");
    let response;
    try {
      response = await fetch("/api/v1/fleet/" + kind, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
    } catch (err) {
      say("The server did not answer: " + err);
      return;
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      say(data.detail || data.title || "Refused (" + response.status + ")");
      return;
    }
    follow(data.job);
  }

  function follow(job) {
    show(job);
    if (polling) clearTimeout(polling);
    if (job.state !== "running") return;
    polling = setTimeout(async function poll() {
      try {
        const r = await fetch("/api/v1/fleet/jobs/" + encodeURIComponent(job.id), { credentials: "same-origin" });
        if (r.ok) {
          const data = await r.json();
          show(data.job);
          if (data.job.state !== "running") {
            finished();
            return;
          }
        }
      } catch (err) {
        /* a missed poll: the next one catches up */
      }
      polling = setTimeout(poll, POLL_MS);
    }, POLL_MS);
  }

  function show(job) {
    const box = document.getElementById("job");
    box.hidden = false;
    box.dataset.job = job.id;
    const verb = { plan: "Plan", apply: job.options.dry_run ? "Dry run" : "Apply", firmware: "Firmware rollout" }[job.kind] || job.kind;
    const what = job.options.profile ? " of " + job.options.profile : job.options.stage ? " to " + job.options.stage : "";
    document.getElementById("job-title").textContent = verb + what + " by " + job.actor;
    const bar = document.getElementById("job-progress");
    bar.max = Math.max(1, job.total);
    bar.value = job.done;
    const state = document.getElementById("job-state");
    state.dataset.state = job.state;
    state.textContent = job.state === "running"
      ? job.done + " of " + job.total + " devices" + (job.wave ? ", wave " + job.wave : "")
      : job.state === "done" ? "done" : "failed";
    const steps = document.getElementById("job-steps");
    steps.replaceChildren();
    if (job.state === "running") {
      for (const [device, step] of Object.entries(job.steps)) {
        const li = document.createElement("li");
        li.dataset.device = device;
        li.textContent = device + ": " + step;
        steps.append(li);
      }
    }
    const result = document.getElementById("job-result");
    result.textContent = job.state === "failed" ? "Failed: " + (job.error || "") : job.result || "";
    result.className = "big" + (job.state === "failed" ? " error" : "");
    const table = document.getElementById("job-report");
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const row of job.rows || []) {
      const tr = document.createElement("tr");
      tr.dataset.device = row.device;
      tr.dataset.status = row.status;
      for (const text of [row.device, row.status, row.detail]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      body.append(tr);
    }
    table.hidden = !(job.rows && job.rows.length);
  }

  // After a job: the compliance column from the API (the rest of the row is the intake's).
  async function finished() {
    try {
      const r = await fetch("/api/v1/fleet/devices", { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      for (const d of data.devices) {
        const cell = document.querySelector("#fleet-table tr[data-device='" + CSS.escape(d.device) + "'] [data-field='compliance']");
        if (cell) render(cell, d.compliance);
      }
    } catch (err) {
      /* the table stays as it was; a reload shows it */
    }
  }

  function badge(cls, text, title) {
    const span = document.createElement("span");
    span.className = "badge " + cls;
    span.textContent = text;
    if (title) span.title = title;
    return span;
  }

  function render(cell, c) {
    cell.replaceChildren();
    cell.dataset.state = c ? c.state : "never";
    if (!c) {
      const span = document.createElement("span");
      span.className = "hint";
      span.textContent = "never checked";
      cell.append(span);
    } else if (c.state === "in-sync") {
      cell.append(badge("on", "in sync", c.profile));
    } else if (c.state === "drifted") {
      const details = document.createElement("details");
      details.className = "drift";
      const summary = document.createElement("summary");
      summary.append(badge("drifted", "drifted (" + c.changes.length + ")", c.changes.join("\n")));
      const list = document.createElement("ul");
      for (const change of c.changes) {
        const li = document.createElement("li");
        li.textContent = change;
        list.append(li);
      }
      details.append(summary, list);
      cell.append(details);
    } else {
      cell.append(badge("off", "unreadable", c.error || ""));
    }
  }

  const profileForm = document.getElementById("profile-form");
  profileForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const kind = event.submitter && event.submitter.dataset.kind === "apply" ? "apply" : "plan";
    const body = { profile: document.getElementById("profile-select").value };
    const select = expressions(document.getElementById("profile-selection"));
    if (select.length) body.select = select;
    start(kind, body);
  });

  const firmwareForm = document.getElementById("firmware-form");
  firmwareForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = {
      stage: document.getElementById("firmware-stage").value,
      canary: parseInt(document.getElementById("firmware-canary").value, 10) || 1,
      max_failures: parseInt(document.getElementById("firmware-max-failures").value, 10) || 0,
    };
    const select = expressions(document.getElementById("firmware-selection"));
    if (select.length) body.select = select;
    start("firmware", body);
  });

  // A job started before this page loaded (by anyone): show it, follow it while it runs.
  const current = actions.dataset.job;
  if (current) {
    fetch("/api/v1/fleet/jobs/" + encodeURIComponent(current), { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => { if (data) follow(data.job); })
      .catch(() => {});
  }
})();

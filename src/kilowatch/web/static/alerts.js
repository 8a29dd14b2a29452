/* The Alerts page: refreshes the current states every few seconds; for admins, the rule and
   channel forms, enable/disable, delete and test. Every change sends the whole configuration
   (PUT /api/v1/alerts/config, with the page's CSRF token and the ETag of what it shows), as the
   page received it: secrets stay "***", which keeps the stored ones. The page reads fine without
   this file; only editing needs it. */
"use strict";

(function () {
  const holder = document.getElementById("alerts-data");
  if (!holder) return;
  const data = JSON.parse(holder.textContent);
  const csrf = document.body.dataset.csrf || "";
  const names = data.devices || {};
  const config = data.config;
  const REFRESH_MS = 5000;

  // The site's local time as the server writes it ("2026-03-15 10:30:00"; Sweden's locale is ISO's)
  let local;
  try {
    local = new Intl.DateTimeFormat("sv-SE", {
      timeZone: data.tz, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  } catch {
    local = null;
  }

  function when(ts) {
    if (typeof ts !== "number" || !Number.isFinite(ts)) return "–";
    const d = new Date(ts * 1000);
    if (Number.isNaN(d.getTime())) return "–";
    return local ? local.format(d) : d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function deviceCell(device) {
    const td = el("td", { "data-label": "Device" });
    if (!device) return td;
    if (names[device] && names[device] !== device) td.append(names[device] + " ");
    td.append(el("code", {}, device));
    return td;
  }

  /* -- the current states ------------------------------------------------------------------ */

  function renderCurrent(alerts) {
    const body = document.querySelector("#alerts-current tbody");
    const rows = alerts.map((a) =>
      el("tr", { "data-rule": a.rule, "data-device": a.device, "data-status": a.status },
        el("td", { "data-label": "State" }, el("span", { class: "badge st-" + a.status }, a.status)),
        el("td", { "data-label": "Rule" }, a.rule_name || a.rule),
        deviceCell(a.device),
        el("td", { "data-label": "Since" }, when(a.since)),
        el("td", { "data-label": "What" }, a.message || "")));
    if (!rows.length) {
      rows.push(el("tr", { class: "empty" },
        el("td", { colspan: "5", class: "hint" }, "Nothing is firing or pending.")));
    }
    body.replaceChildren(...rows);
    const firing = alerts.filter((a) => a.status === "firing").length;
    const pending = alerts.filter((a) => a.status === "pending").length;
    const count = document.getElementById("alerts-count");
    count.textContent = `${firing} firing, ${pending} pending`;
    count.dataset.firing = String(firing);
  }

  async function refresh() {
    const state = document.getElementById("alerts-refresh");
    try {
      const r = await fetch("/api/v1/alerts", { headers: { accept: "application/json" } });
      if (!r.ok) throw new Error("HTTP " + r.status);
      renderCurrent((await r.json()).alerts);
      state.dataset.state = "live";
      state.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      state.dataset.state = "failed";
      state.textContent = "not updated (" + err.message + ")";
    }
  }

  function schedule() {
    window.setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedule();
    }, REFRESH_MS);
  }
  schedule();

  const saved = new URLSearchParams(window.location.search).get("saved");
  if (saved) {
    const note = document.getElementById("alerts-saved");
    note.textContent = saved;
    note.hidden = false;
  }

  if (!data.admin) return;

  /* -- writing the configuration ------------------------------------------------------------ */

  function showError(box, form, problem) {
    box.textContent = problem.detail || problem.title || "the change was not saved";
    box.hidden = false;
    if (!form) return;
    form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
    // "rule 'x': threshold_w is required ..." names the key: mark its field
    const m = /^[^:]+: ([a-z_]+) /.exec(problem.detail || "");
    const field = m && form.elements.namedItem(m[1]);
    if (field && field.classList) {
      field.classList.add("invalid");
      field.focus();
    }
  }

  async function save(next, box, form, message) {
    box.hidden = true;
    let r;
    try {
      r = await fetch("/api/v1/alerts/config", {
        method: "PUT",
        headers: {
          "content-type": "application/json",
          accept: "application/json",
          "x-csrf-token": csrf,
          "if-match": data.etag,
        },
        body: JSON.stringify(next),
      });
    } catch (err) {
      showError(box, form, { detail: "not saved: the server did not answer (" + err.message + ")" });
      return;
    }
    if (r.ok) {
      window.location.assign("/alerts?saved=" + encodeURIComponent(message) + "#" + (form ? form.dataset.section : "rules"));
      return;
    }
    let problem;
    try {
      problem = await r.json();
    } catch {
      problem = { detail: "not saved: HTTP " + r.status };
    }
    if (r.status === 412) problem.detail += " (reload the page)";
    showError(box, form, problem);
  }

  function list(text) {
    return text.split(/[,\s]+/).map((s) => s.trim()).filter(Boolean);
  }

  function number(input) {
    return input.value.trim() === "" ? null : Number(input.value);
  }

  function showKind(form) {
    const kind = form.elements.kind.value;
    form.querySelectorAll("[data-kinds]").forEach((label) => {
      label.hidden = !label.dataset.kinds.split(" ").includes(kind);
    });
  }

  function openForm(form, title) {
    form.querySelector("h3").textContent = title;
    form.querySelector("[role=alert]").hidden = true;
    form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
    showKind(form);
    form.hidden = false;
    form.scrollIntoView({ block: "nearest" });
    form.elements[0].focus();
  }

  /* -- rules ---------------------------------------------------------------------------------- */

  const ruleForm = document.getElementById("rule-form");
  const ruleError = document.getElementById("rule-error");
  const pageError = document.getElementById("alerts-error");
  ruleForm.dataset.section = "rules";

  function fillRule(rule) {
    const f = ruleForm.elements;
    ruleForm.reset();
    f.original.value = rule ? rule.id : "";
    f.id.value = rule ? rule.id : "";
    f.name.value = rule ? rule.name || "" : "";
    f.kind.value = rule ? rule.kind : "power_above";
    f.devices.value = rule ? rule.devices.join(", ") : "";
    f.threshold_w.value = rule && rule.threshold_w != null ? rule.threshold_w : "";
    f.channel.value = rule && rule.channel ? rule.channel : "";
    f.budget_wh.value = rule && rule.budget_wh != null ? rule.budget_wh : "";
    f.for_s.value = rule && rule.for_s != null ? rule.for_s : "";
    f.repeat_s.value = rule && rule.repeat_s != null ? rule.repeat_s : "";
    f.enabled.checked = rule ? rule.enabled : true;
    ruleForm.querySelectorAll("input[name=notify]").forEach((box) => {
      box.checked = rule ? rule.notify.includes(box.value) : ruleForm.querySelectorAll("input[name=notify]").length === 1;
    });
  }

  function ruleFromForm() {
    const f = ruleForm.elements;
    const kind = f.kind.value;
    const rule = {
      id: f.id.value.trim(),
      kind,
      name: f.name.value.trim(),
      enabled: f.enabled.checked,
      devices: list(f.devices.value),
      notify: Array.from(ruleForm.querySelectorAll("input[name=notify]:checked"), (b) => b.value),
      repeat_s: number(f.repeat_s),
    };
    if (kind === "power_above") {
      rule.threshold_w = number(f.threshold_w);
      rule.channel = f.channel.value.trim() || null;
    }
    if (kind === "daily_energy_above") rule.budget_wh = number(f.budget_wh);
    if ((kind === "offline" || kind === "power_above") && f.for_s.value.trim() !== "") rule.for_s = number(f.for_s);
    return rule;
  }

  ruleForm.elements.kind.addEventListener("change", () => showKind(ruleForm));
  ruleForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const rule = ruleFromForm();
    const original = ruleForm.elements.original.value;
    const rules = config.rules.slice();
    const at = original ? rules.findIndex((r) => r.id === original) : -1;
    if (at >= 0) rules[at] = rule;
    else rules.push(rule);
    save({ ...config, rules }, ruleError, ruleForm, `Rule ${rule.id} saved.`);
  });

  function findRule(id) {
    return config.rules.find((r) => r.id === id);
  }

  /* -- channels ------------------------------------------------------------------------------- */

  const channelForm = document.getElementById("channel-form");
  const channelError = document.getElementById("channel-error");
  channelForm.dataset.section = "channels";
  const CHANNEL_FIELDS = ["url", "secret", "token", "smtp_host", "smtp_port", "username", "password", "sender"];

  function newSecret() {
    const bytes = new Uint8Array(32);
    window.crypto.getRandomValues(bytes);
    return "whsec_" + btoa(String.fromCharCode(...bytes));
  }

  function fillChannel(channel) {
    const f = channelForm.elements;
    channelForm.reset();
    f.original.value = channel ? channel.name : "";
    f.name.value = channel ? channel.name : "";
    f.name.readOnly = Boolean(channel); // a secret shown as *** belongs to the stored name
    f.kind.value = channel ? channel.kind : "webhook";
    f.kind.disabled = Boolean(channel);
    for (const key of CHANNEL_FIELDS) f[key].value = channel && channel[key] != null ? channel[key] : "";
    f.smtp_security.value = channel && channel.smtp_security ? channel.smtp_security : "starttls";
    f.recipients.value = channel && channel.recipients ? channel.recipients.join(", ") : "";
    if (!channel) f.secret.value = newSecret();
    document.getElementById("secret-hint").hidden = !channel;
  }

  function channelFromForm() {
    const f = channelForm.elements;
    const kind = f.kind.value;
    const channel = { name: f.name.value.trim(), kind };
    const text = (key) => f[key].value.trim() || null;
    if (kind === "webhook") Object.assign(channel, { url: text("url"), secret: text("secret") });
    if (kind === "ntfy") Object.assign(channel, { url: text("url"), token: text("token") });
    if (kind === "email") {
      Object.assign(channel, {
        smtp_host: text("smtp_host"),
        smtp_port: number(f.smtp_port),
        smtp_security: f.smtp_security.value,
        username: text("username"),
        password: text("password"),
        sender: text("sender"),
        recipients: list(f.recipients.value),
      });
    }
    return channel;
  }

  channelForm.elements.kind.addEventListener("change", () => showKind(channelForm));
  channelForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const channel = channelFromForm();
    const original = channelForm.elements.original.value;
    const channels = config.channels.slice();
    const at = original ? channels.findIndex((c) => c.name === original) : -1;
    if (at >= 0) channels[at] = channel;
    else channels.push(channel);
    save({ ...config, channels }, channelError, channelForm, `Channel ${channel.name} saved.`);
  });

  async function testChannel(button) {
    const name = button.dataset.name;
    const out = button.parentElement.querySelector(".test-result");
    out.className = "test-result";
    out.textContent = "sending…";
    button.disabled = true;
    try {
      const r = await fetch(`/api/v1/alerts/channels/${encodeURIComponent(name)}/test`, {
        method: "POST",
        headers: { accept: "application/json", "x-csrf-token": csrf },
      });
      const body = await r.json();
      const ok = r.ok && body.ok;
      out.classList.add(ok ? "ok" : "error");
      out.textContent = ok ? "✓ test sent" : "✗ " + (body.error || body.detail || "HTTP " + r.status);
    } catch (err) {
      out.classList.add("error");
      out.textContent = "✗ " + err.message;
    } finally {
      button.disabled = false;
    }
  }

  /* -- the buttons ---------------------------------------------------------------------------- */

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "add-rule") {
      fillRule(null);
      openForm(ruleForm, "Add rule");
    } else if (action === "edit-rule") {
      fillRule(findRule(button.dataset.id));
      openForm(ruleForm, "Edit rule " + button.dataset.id);
    } else if (action === "toggle-rule") {
      const rules = config.rules.map((r) => (r.id === button.dataset.id ? { ...r, enabled: !r.enabled } : r));
      const on = rules.find((r) => r.id === button.dataset.id).enabled;
      save({ ...config, rules }, pageError, null, `Rule ${button.dataset.id} ${on ? "enabled" : "disabled"}.`);
    } else if (action === "delete-rule") {
      if (!window.confirm(`Delete rule ${button.dataset.id}?`)) return;
      const rules = config.rules.filter((r) => r.id !== button.dataset.id);
      save({ ...config, rules }, pageError, null, `Rule ${button.dataset.id} deleted.`);
    } else if (action === "add-channel") {
      fillChannel(null);
      openForm(channelForm, "Add channel");
    } else if (action === "edit-channel") {
      fillChannel(config.channels.find((c) => c.name === button.dataset.name));
      openForm(channelForm, "Edit channel " + button.dataset.name);
    } else if (action === "delete-channel") {
      const name = button.dataset.name;
      const users = config.rules.filter((r) => r.notify.includes(name)).map((r) => r.id);
      const also = users.length ? ` Rules ${users.join(", ")} will no longer notify it.` : "";
      if (!window.confirm(`Delete channel ${name}?${also}`)) return;
      const rules = config.rules.map((r) => ({ ...r, notify: r.notify.filter((n) => n !== name) }));
      const channels = config.channels.filter((c) => c.name !== name);
      save({ rules, channels }, pageError, null, `Channel ${name} deleted.`);
    } else if (action === "test-channel") {
      testChannel(button);
    } else if (action === "new-secret") {
      channelForm.elements.secret.value = newSecret();
    } else if (action === "cancel") {
      button.closest("form").hidden = true;
    }
  });
})();

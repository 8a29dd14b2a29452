// kilowatch hourly energy script for Shelly Gen2+ meters (shipped with kilowatch).
//
// At every full UTC hour it publishes the energy of the hour that just ended, QoS 1, to
// /system/<device id>/status as
//   {"fw_ver","hourly_energy_usage","hourly_ret_energy_usage","id","mac","operational","timestamp",
//    "total_energy","total_ret_energy"}
// (Wh; timestamp = unix start of that hour; total_* = the meter's cumulative counters at the
// hour's end), computed from the cumulative counters of the meter (pm1:0, switch:0, emdata:0 or
// the em1data channels).
// Hours that cannot be published while MQTT is down are kept, in RAM and in KVS, and published
// oldest first when MQTT is back; the counters at the start of the current hour are kept in KVS,
// so a restart or reboot loses nothing. KVS use is bounded: CFG.maxKeys queue keys of at most 253
// characters plus one baseline key. Written for the device's Espruino: no arrow functions, no
// classes, functions defined before use.

let CFG = {
  topic: null, // null: "/system/<device id>/status"
  prefix: "kwh_", // KVS keys: kwh_base, kwh_q0 .. kwh_q<maxKeys-1>
  maxKeys: 10, // queue keys in KVS; 7 hours each at worst (35-character entries), so >= 70 hours
  maxHours: 96, // hours kept while MQTT is down; the oldest go first beyond this
  valueMax: 253, // KVS value length limit (shelly-api.md §15)
  resendS: 120, // hours published this recently before a disconnect are published again
  markWaitS: 90 // how long after a full hour to wait for the meter's report of it
};

let info = Shelly.getDeviceInfo();
let topic = CFG.topic || "/system/" + info.id + "/status";
let base = null; // {h: hour start, e: Wh, r: returned Wh, partial} when the current hour began
let queue = []; // [hour index, Wh, ret Wh, counter Wh, ret counter Wh] to publish, oldest first
let saved = []; // what each KVS queue key holds, to write only what changed
let sent = []; // [entry, time] of recent publishes, re-sent if MQTT drops soon after
let timer = null;
let ready = false;
let mark = null; // {h, e, r}: the counters pm1/switch reported as the hour h began
let waiting = false; // the hour turned; waiting (at most markWaitS) for its mark

// --- one RPC at a time, in order (KVS writes must not overtake each other) ------------------
let jobs = [];
let busy = false;

function pump() {
  if (busy || jobs.length === 0) return;
  let j = jobs.shift();
  busy = true;
  Shelly.call(j[0], j[1], function (res, code, msg) {
    busy = false;
    if (j[2]) j[2](res, code, msg);
    pump();
  });
}

function job(method, params, done) {
  jobs.push([method, params, done]);
  pump();
}

// --- the meter ----------------------------------------------------------------------------------
function total(prefix, n) {
  let e = 0;
  let r = 0;
  let found = false;
  for (let i = 0; i < n; i++) {
    let s = Shelly.getComponentStatus(prefix + ":" + i);
    if (!s) continue;
    found = true;
    if (prefix === "emdata") {
      e += s.total_act;
      r += s.total_act_ret || 0;
    } else if (prefix === "em1data") {
      e += s.total_act_energy;
      r += s.total_act_ret_energy || 0;
    } else {
      e += s.aenergy.total;
      r += s.ret_aenergy ? s.ret_aenergy.total : 0;
    }
  }
  return found ? {e: e, r: r} : null;
}

let source = null;

function meter() {
  if (source) return total(source[0], source[1]);
  let kinds = [["pm1", 1], ["switch", 1], ["emdata", 1], ["em1data", 3]];
  for (let i = 0; i < kinds.length; i++) {
    let m = total(kinds[i][0], kinds[i][1]);
    if (m) {
      source = kinds[i];
      return m;
    }
  }
  return null;
}

function now() {
  return Date.now() / 1000;
}

function hourOf(t) {
  return Math.floor(t / 3600) * 3600;
}

function r3(x) {
  return Math.round(x * 1000) / 1000;
}

// --- KVS encoding: "<hour index>:<mWh>:<mWh>:<counter mWh>:<counter mWh>" in base 36, joined
// by "|" (entries of an older version have no counters: they are published without them) ------
function b36(wh) {
  return Math.round(wh * 1000).toString(36);
}

function enc(q) {
  let s = q[0].toString(36) + ":" + b36(q[1]) + ":" + b36(q[2]);
  return q.length > 3 ? s + ":" + b36(q[3]) + ":" + b36(q[4]) : s;
}

function dec(s) {
  let p = s.split(":");
  let q = [parseInt(p[0], 36)];
  for (let i = 1; i < p.length; i++) q.push(parseInt(p[i], 36) / 1000);
  return q;
}

function chunks() {
  let out = [];
  let cur = "";
  for (let i = 0; i < queue.length; i++) {
    let e = enc(queue[i]);
    if (cur !== "" && cur.length + 1 + e.length > CFG.valueMax) {
      out.push(cur);
      cur = "";
    }
    cur = cur === "" ? e : cur + "|" + e;
  }
  if (cur !== "") out.push(cur);
  return out;
}

function persistQueue() {
  let c = chunks();
  while (c.length > CFG.maxKeys) {
    // Beyond what KVS may hold: drop the oldest hours (never silently).
    let n = c[0].split("|").length;
    print("kwh: backlog full, dropping " + n + " oldest hour(s)");
    queue.splice(0, n);
    c = chunks();
  }
  for (let i = 0; i < CFG.maxKeys; i++) {
    let want = i < c.length ? c[i] : null;
    if (want === saved[i]) continue;
    saved[i] = want;
    if (want === null) job("KVS.Delete", {key: CFG.prefix + "q" + i});
    else job("KVS.Set", {key: CFG.prefix + "q" + i, value: want});
  }
}

function persistBase() {
  let v = base.h + "," + base.e + "," + base.r + (base.partial ? ",p" : "");
  job("KVS.Set", {key: CFG.prefix + "base", value: v});
}

// --- publishing -----------------------------------------------------------------------------------
function message(q) {
  let m = {
    fw_ver: info.ver,
    hourly_energy_usage: q[1],
    hourly_ret_energy_usage: q[2],
    id: info.id,
    mac: info.mac,
    operational: true,
    timestamp: q[0] * 3600
  };
  if (q.length > 3) {
    m.total_energy = q[3];
    m.total_ret_energy = q[4];
  }
  return JSON.stringify(m);
}

function flush() {
  if (!ready) return;
  let t = now();
  while (sent.length > 0 && t - sent[0][1] > CFG.resendS) sent.shift();
  while (queue.length > 0 && MQTT.isConnected()) {
    if (!MQTT.publish(topic, message(queue[0]), 1, false)) break;
    sent.push([queue[0], t]);
    queue.shift();
  }
  persistQueue();
}

// A publish "succeeds" once queued; if the link dies before the broker has it (a half-open TCP
// connection is only noticed after 1.5 keep-alives, 90 s), it is gone. So hours published shortly
// before a disconnect go back to the queue: at least once (kilowatch drops the duplicates).
function lost() {
  let t = now();
  let back = [];
  for (let i = 0; i < sent.length; i++) {
    if (t - sent[i][1] <= CFG.resendS) back.push(sent[i][0]);
  }
  sent = [];
  if (back.length === 0) return;
  queue = back.concat(queue);
  persistQueue();
}

// Close the hour that began at base.h with the counters m; a counter that went down was reset
// (firmware update, factory reset), so it counts from zero.
function close(m) {
  let e = m.e >= base.e ? m.e - base.e : m.e;
  let r = m.r >= base.r ? m.r - base.r : m.r;
  let idx = base.h / 3600;
  if (queue.length > 0 && queue[queue.length - 1][0] === idx) queue.pop();
  queue.push([idx, r3(e), r3(r), r3(m.e), r3(m.r)]);
  while (queue.length > CFG.maxHours) {
    print("kwh: backlog full, dropping hour " + queue[0][0] * 3600);
    queue.shift();
  }
}

// pm1 and switch report their counters at every minute rollover, the full hour's with minute_ts
// = that hour: the counters at the hour itself, however late the timer fires. Without such a
// report (emdata, a device that was down at the hour) the counters when the timer fires count.
function onStatus(ev) {
  if (!source || source[0] === "emdata" || source[0] === "em1data") return;
  if (ev.component !== source[0] + ":0" || !ev.delta || !ev.delta.aenergy) return;
  let a = ev.delta.aenergy;
  if (typeof a.minute_ts !== "number" || a.minute_ts % 3600 !== 0) return;
  if (mark !== null && mark.h === a.minute_ts) return; // only the rollover's report
  let ret = ev.delta.ret_aenergy ? ev.delta.ret_aenergy.total : meter().r;
  mark = {h: a.minute_ts, e: a.total, r: ret};
  if (waiting) {
    Timer.clear(timer);
    tick();
  }
}

function arm() {
  let t = now();
  let ms = (hourOf(t) + 3600 - t) * 1000 + 1;
  timer = Timer.set(ms, false, tick);
}

function tick() {
  timer = null;
  let t = now();
  let h = hourOf(t);
  let m = meter();
  let marked = mark !== null && mark.h === h;
  let metered = source !== null && source[0] !== "emdata" && source[0] !== "em1data";
  if (m && metered && base !== null && h > base.h && !marked && !waiting &&
      t - h < CFG.markWaitS) {
    waiting = true;
    timer = Timer.set((h + CFG.markWaitS - t) * 1000, false, tick);
    return;
  }
  waiting = false;
  if (marked) m = {e: mark.e, r: mark.r};
  if (m && t > 1e9) {
    if (base === null || h < base.h) {
      base = {h: h, e: m.e, r: m.r, partial: true};
      persistBase();
    } else if (h > base.h) {
      // The first hour after a fresh install is partial: it is not reported as a full hour.
      if (!base.partial) close(m);
      base = {h: h, e: m.e, r: m.r};
      flush();
      persistBase();
    }
  }
  arm();
}

function loaded() {
  ready = true;
  meter(); // finds the source before the first report
  // Only pm1/switch report their counters at the full hour; a Pro 3EM's status changes many
  // times a minute, and handling each costs the device's CPU for nothing.
  if (!source || (source[0] !== "emdata" && source[0] !== "em1data")) {
    Shelly.addStatusHandler(onStatus);
  }
  MQTT.setConnectHandler(flush);
  MQTT.setDisconnectHandler(lost);
  tick();
  flush();
}

function load(i) {
  if (i === CFG.maxKeys) {
    loaded();
    return;
  }
  job("KVS.Get", {key: CFG.prefix + "q" + i}, function (res, code) {
    saved[i] = null;
    if (code === 0 && res && typeof res.value === "string") {
      saved[i] = res.value;
      let items = res.value.split("|");
      for (let k = 0; k < items.length; k++) queue.push(dec(items[k]));
    }
    load(i + 1);
  });
}

job("KVS.Get", {key: CFG.prefix + "base"}, function (res, code) {
  if (code === 0 && res && typeof res.value === "string") {
    let p = res.value.split(",");
    base = {h: Number(p[0]), e: Number(p[1]), r: Number(p[2]), partial: p[3] === "p"};
  }
  load(0);
});

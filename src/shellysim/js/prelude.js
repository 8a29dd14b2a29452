// The Shelly script API (shelly-api.md §14.2) on top of kilowatch's message bridge.
//
// Evaluated once in every script's own V8 context, before the script's code. mini-racer cannot call
// Python synchronously from JavaScript, so the bridge is a message queue:
//   - JavaScript -> Python: API functions push requests into an outbox that Python drains after
//     every evaluation (`__kw.run` returns it as JSON);
//   - Python -> JavaScript: `__kw.run(batch)` delivers timer fires, RPC results, status changes,
//     events, MQTT messages and connection changes, together with fresh copies of the device state
//     the script may read synchronously (component status/config, device info, clock, MQTT state).
// Only `__kw` is added to the global scope; it is not enumerable.
(function (g) {
  "use strict";

  var K = {
    id: 0,
    limits: null,
    now: 0,
    st: {},
    cfg: {},
    info: null,
    mqttConnected: false,
    out: [],
    touched: {st: {}, cfg: {}, info: false},
    newTouch: [],
    timers: {},
    timerCount: 0,
    nextTimer: 1,
    calls: {},
    callCount: 0,
    nextCall: 1,
    statusHandlers: {},
    statusCount: 0,
    eventHandlers: {},
    eventCount: 0,
    nextHandler: 1,
    subs: {},
    subCount: 0,
    onConnect: null,
    onDisconnect: null
  };

  function copy(v) {
    return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
  }

  function fail(msg) {
    throw new Error(msg);
  }

  function componentKey(typeOrKey, id) {
    var key = String(typeOrKey).toLowerCase();
    if (id !== undefined && id !== null && key.indexOf(":") < 0) key = key + ":" + id;
    return key;
  }

  function touch(kind, key) {
    if (!K.touched[kind][key]) {
      K.touched[kind][key] = true;
      K.newTouch.push([kind, key]);
    }
  }

  function text(args) {
    var parts = [];
    for (var i = 0; i < args.length; i++) {
      var a = args[i];
      parts.push(typeof a === "string" ? a : a === undefined ? "undefined" : JSON.stringify(a));
    }
    return parts.join(" ");
  }

  function splitKey(key) {
    var i = key.indexOf(":");
    if (i < 0) return {name: key, id: undefined};
    var n = Number(key.substring(i + 1));
    return {name: key.substring(0, i), id: isNaN(n) ? undefined : n};
  }

  // --- the clock: Date reads the device's simulated clock, not the host's -------------------
  var RealDate = Date;
  function SimDate(a, b, c, d, e, f, h) {
    if (!(this instanceof SimDate)) return new RealDate(K.now * 1000).toString();
    var n = arguments.length;
    if (n === 0) return new RealDate(K.now * 1000);
    if (n === 1) return new RealDate(a);
    return new RealDate(a, b, c === undefined ? 1 : c, d || 0, e || 0, f || 0, h || 0);
  }
  SimDate.prototype = RealDate.prototype;
  SimDate.now = function () { return Math.floor(K.now * 1000); };
  SimDate.UTC = RealDate.UTC;
  SimDate.parse = RealDate.parse;
  g.Date = SimDate;

  // --- Shelly ------------------------------------------------------------------------------
  var Shelly = {
    call: function (method, params, callback, userdata) {
      if (typeof method !== "string") fail("Shelly.call: method must be a string");
      if (K.callCount >= K.limits.calls) fail("Too many calls in progress");
      if (typeof params === "string") params = JSON.parse(params);
      var cid = K.nextCall++;
      K.calls[cid] = {cb: typeof callback === "function" ? callback : null, ud: userdata};
      K.callCount++;
      K.out.push(["call", cid, method, params === undefined ? null : params]);
    },
    getComponentStatus: function (typeOrKey, id) {
      var key = componentKey(typeOrKey, id);
      touch("st", key);
      var v = K.st[key];
      return v === undefined || v === null ? null : copy(v);
    },
    getComponentConfig: function (typeOrKey, id) {
      var key = componentKey(typeOrKey, id);
      touch("cfg", key);
      var v = K.cfg[key];
      return v === undefined || v === null ? null : copy(v);
    },
    getDeviceInfo: function () {
      if (!K.touched.info) {
        K.touched.info = true;
        K.newTouch.push(["info", ""]);
      }
      return copy(K.info);
    },
    addStatusHandler: function (callback, userdata) {
      if (typeof callback !== "function") fail("addStatusHandler: callback must be a function");
      if (K.statusCount >= K.limits.status_handlers) fail("Too many status handlers");
      var h = K.nextHandler++;
      K.statusHandlers[h] = {cb: callback, ud: userdata};
      K.statusCount++;
      K.out.push(["handlers", "status", K.statusCount]);
      return h;
    },
    removeStatusHandler: function (handle) {
      if (!K.statusHandlers[handle]) return false;
      delete K.statusHandlers[handle];
      K.statusCount--;
      K.out.push(["handlers", "status", K.statusCount]);
      return true;
    },
    addEventHandler: function (callback, userdata) {
      if (typeof callback !== "function") fail("addEventHandler: callback must be a function");
      if (K.eventCount >= K.limits.event_handlers) fail("Too many event handlers");
      var h = K.nextHandler++;
      K.eventHandlers[h] = {cb: callback, ud: userdata};
      K.eventCount++;
      K.out.push(["handlers", "event", K.eventCount]);
      return h;
    },
    removeEventHandler: function (handle) {
      if (!K.eventHandlers[handle]) return false;
      delete K.eventHandlers[handle];
      K.eventCount--;
      K.out.push(["handlers", "event", K.eventCount]);
      return true;
    },
    emitEvent: function (name, data) {
      K.out.push(["emit", String(name), data === undefined ? null : copy(data)]);
    },
    getCurrentScriptId: function () { return K.id; }
  };

  // --- MQTT --------------------------------------------------------------------------------
  function mqttEnabled() {
    var c = K.cfg.mqtt;
    return !!(c && c.enable);
  }

  var MQTT = {
    isConnected: function () { return K.mqttConnected; },
    publish: function (topic, message, qos, retain) {
      if (typeof topic !== "string" || topic === "") fail("MQTT.publish: topic must be a string");
      var msg = typeof message === "string" ? message : JSON.stringify(message);
      if (!K.mqttConnected) return false;
      K.out.push(["publish", topic, msg, qos ? Number(qos) : 0, !!retain]);
      return true;
    },
    subscribe: function (topic, callback, userdata) {
      if (!mqttEnabled()) fail("MQTT is not enabled");
      if (typeof topic !== "string" || topic === "") fail("MQTT.subscribe: bad topic filter");
      if (typeof callback !== "function") fail("MQTT.subscribe: callback must be a function");
      if (!K.subs[topic]) {
        if (K.subCount >= K.limits.mqtt_subscriptions) fail("Too many MQTT subscriptions");
        K.subCount++;
        K.out.push(["subscribe", topic]);
      }
      K.subs[topic] = {cb: callback, ud: userdata};
    },
    unsubscribe: function (topic) {
      if (!K.subs[topic]) return false;
      delete K.subs[topic];
      K.subCount--;
      K.out.push(["unsubscribe", topic]);
      return true;
    },
    setConnectHandler: function (callback, userdata) {
      K.onConnect = typeof callback === "function" ? {cb: callback, ud: userdata} : null;
    },
    setDisconnectHandler: function (callback, userdata) {
      K.onDisconnect = typeof callback === "function" ? {cb: callback, ud: userdata} : null;
    }
  };

  // --- Timer -------------------------------------------------------------------------------
  var Timer = {
    set: function (period, repeat, callback, userdata) {
      if (typeof callback !== "function") fail("Timer.set: callback must be a function");
      var ms = Number(period);
      if (isNaN(ms) || ms < 0) fail("Timer.set: bad period");
      if (K.timerCount >= K.limits.timers) fail("Too many timers");
      var h = K.nextTimer++;
      K.timers[h] = {cb: callback, ud: userdata, repeat: !!repeat, period: ms};
      K.timerCount++;
      K.out.push(["timer_set", h, ms, !!repeat]);
      return h;
    },
    clear: function (handle) {
      if (typeof handle !== "number") return undefined;
      if (!K.timers[handle]) return false;
      delete K.timers[handle];
      K.timerCount--;
      K.out.push(["timer_clear", handle]);
      return true;
    },
    getInfo: function (handle) {
      var t = K.timers[handle];
      if (!t) return undefined;
      return {interval: t.repeat ? t.period : 0, next: t.next};
    }
  };

  function print() {
    K.out.push(["log", text(arguments)]);
  }

  // --- delivery from Python ------------------------------------------------------------------
  function fire(item) {
    var kind = item[0], x, ev;
    if (kind === "timer") {
      x = K.timers[item[1]];
      if (!x) return;  // cleared after the host queued the fire
      x.next = item[2];
      if (!x.repeat) {
        delete K.timers[item[1]];
        K.timerCount--;
      }
      x.cb(x.ud);
    } else if (kind === "result") {
      x = K.calls[item[1]];
      if (!x) return;
      delete K.calls[item[1]];
      K.callCount--;
      if (x.cb) x.cb(item[2], item[3], item[4], x.ud);
    } else if (kind === "status") {
      var s = splitKey(item[1]);
      for (var hs in K.statusHandlers) {
        x = K.statusHandlers[hs];
        if (!x) continue;
        ev = {component: item[1], name: s.name, id: s.id, delta: copy(item[2])};
        x.cb(ev, x.ud);
      }
    } else if (kind === "event") {
      var info = item[1];
      var e = splitKey(String(info.component));
      for (var he in K.eventHandlers) {
        x = K.eventHandlers[he];
        if (!x) continue;
        ev = {component: info.component, name: e.name, id: e.id, now: K.now, info: copy(info)};
        x.cb(ev, x.ud);
      }
    } else if (kind === "mqtt") {
      x = K.subs[item[1]];
      if (x) x.cb(item[2], item[3], x.ud);
    } else if (kind === "connection") {
      x = item[1] ? K.onConnect : K.onDisconnect;
      if (x) x.cb(x.ud);
    }
  }

  function errorOf(e) {
    var type = e && e.name ? String(e.name) : "Error";
    var msg = e && e.message !== undefined ? String(e.message) : String(e);
    return {type: type, message: msg};
  }

  function refresh(state) {
    var k;
    if (state.now !== undefined) K.now = state.now;
    if (state.mqtt !== undefined) K.mqttConnected = state.mqtt;
    if (state.info !== undefined) K.info = state.info;
    if (state.st) for (k in state.st) K.st[k] = state.st[k];
    if (state.cfg) for (k in state.cfg) K.cfg[k] = state.cfg[k];
  }

  function reply(extra) {
    var r = {out: K.out, touch: K.newTouch};
    K.out = [];
    K.newTouch = [];
    for (var k in extra) r[k] = extra[k];
    return JSON.stringify(r);
  }

  var bridge = {
    init: function (state) {
      K.id = state.id;
      K.limits = state.limits;
      refresh(state);
      g.Script = {id: state.id};
      return reply({});
    },
    // Deliver a batch; the first callback that throws stops the batch (the script crashes).
    run: function (state, items) {
      refresh(state);
      for (var i = 0; i < items.length; i++) {
        try {
          fire(items[i]);
        } catch (e) {
          return reply({error: errorOf(e)});
        }
      }
      return reply({});
    },
    // Script.Eval: global-scope evaluation; a throw is reported, the script keeps running.
    evaluate: function (state, code) {
      refresh(state);
      var value;
      try {
        value = (0, eval)(code);
      } catch (e) {
        return reply({error: errorOf(e)});
      }
      if (typeof value === "function") value = "<function>";
      try {
        JSON.stringify(value);
      } catch (e) {
        value = String(value);
      }
      return reply({value: value === undefined ? null : value});
    }
  };

  Object.defineProperty(g, "__kw", {value: bridge, enumerable: false});
  g.Shelly = Shelly;
  g.MQTT = MQTT;
  g.Timer = Timer;
  g.print = print;
  g.console = {log: print, info: print, warn: print, error: print};
  // mini-racer installs a real-time setTimeout; devices have none (scripts use Timer).
  g.setTimeout = undefined;
  g.clearTimeout = undefined;
})(globalThis);

// fleet2ban console: live refresh over server-sent events, ban countdowns, confirmations.
// Served from /static (the CSP allows no inline script). Server-rendered HTML fragments are swapped in
// through DOMParser, which never runs scripts; every text the server sends is already escaped.
"use strict";

(function () {
  var body = document.body;
  var liveUrl = body.getAttribute("data-live-url") || "";
  var liveOn = (body.getAttribute("data-live-on") || "").split(",").filter(Boolean);
  var lastSeen = null;
  var lastOk = null;
  var inflight = false;
  var again = false;
  var seq = 0;

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  function formatDuration(seconds) {
    var s = Math.round(Math.abs(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 ? pad2(s % 60) + "s" : "");
    if (s < 86400) return Math.floor(s / 3600) + "h" + pad2(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d" + pad2(Math.floor((s % 86400) / 3600)) + "h";
  }

  function setBanner(text, down) {
    var el = document.getElementById("broker-banner");
    if (!el) return;
    el.textContent = text || "";
    el.classList.toggle("hidden", !text);
    el.classList.toggle("down", !!down);
  }

  function setLiveState(text) {
    var el = document.getElementById("live-state");
    if (el) el.textContent = text;
  }

  function refresh() {
    if (!liveUrl) return;
    if (inflight) { again = true; return; }
    inflight = true;
    var mine = ++seq;
    fetch(liveUrl + window.location.search, {
      credentials: "same-origin",
      headers: { "Accept": "text/html" },
      cache: "no-store"
    }).then(function (resp) {
      if (resp.status === 401) { window.location.reload(); return null; }
      return resp.ok ? resp.text() : null;
    }).then(function (html) {
      if (html === null || mine !== seq) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("live");
      var old = document.getElementById("live");
      if (fresh && old) {
        old.replaceWith(document.importNode(fresh, true));
        tick();
        body.setAttribute("data-refreshed", String(Date.now()));
      }
    }).catch(function () { /* the stream's status tells the user */ })
      .finally(function () {
        inflight = false;
        if (again) { again = false; refresh(); }
      });
  }

  function relevantChange(seen) {
    if (lastSeen === null) return false;
    for (var i = 0; i < liveOn.length; i++) {
      var k = liveOn[i];
      if (seen[k] !== lastSeen[k]) return true;
    }
    return false;
  }

  function onChange(ev) {
    var data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    setBanner(data.banner, !data.connected);
    setLiveState(data.ok ? "live" : (data.connected ? "loading…" : "disconnected"));
    var changed = relevantChange(data.seen) || (lastOk !== null && lastOk !== data.ok);
    lastSeen = data.seen;
    lastOk = data.ok;
    if (changed) refresh();
  }

  if (window.EventSource) {
    var es = new EventSource("/stream");
    es.addEventListener("change", onChange);
    es.onerror = function () { setLiveState("reconnecting…"); };
    es.onopen = function () { setLiveState("live"); };
  }

  var expiredSeen = false;
  function tick() {
    var now = Date.now();
    var nodes = document.querySelectorAll("[data-expires]");
    var expired = false;
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var left = (Date.parse(el.getAttribute("data-expires")) - now) / 1000;
      if (left > 0) {
        el.textContent = "in " + formatDuration(left);
      } else {
        if (!el.classList.contains("expired")) expired = true;
        el.textContent = "expired";
        el.classList.add("expired");
      }
    }
    if (expired && !expiredSeen) {
      expiredSeen = true;
      // the server drops expired bans from the list: ask for the list again, once per second at most
      window.setTimeout(function () { expiredSeen = false; refresh(); }, 1000);
    }
  }
  tick();
  window.setInterval(tick, 1000);

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("confirm")) {
      var form = t.form;
      if (form && !form.checkValidity()) return;
      if (!window.confirm(t.getAttribute("data-confirm") || "Are you sure?")) ev.preventDefault();
    }
  });
})();

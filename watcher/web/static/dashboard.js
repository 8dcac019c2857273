/* payment-watcher merchant dashboard: live statuses over the session's WebSocket
   (polling /dashboard/live.json when it cannot connect), the create form's switches and
   its payload check, copy buttons. No dependencies, no inline code (the CSP forbids it);
   text goes into the page only as textContent. */
(function () {
  "use strict";
  var PREFIX = "/dashboard";
  var POLL_MS = 5000;

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }
  function byAttr(name, value) { return all("[" + name + '="' + CSS.escape(value) + '"]'); }

  var dataNode = document.getElementById("dash-data");
  var data = dataNode ? JSON.parse(dataNode.textContent) : {};
  var LABELS = data.labels || {};

  /* ------------------------------------------------------------ live statuses */

  var indicator = document.getElementById("dash-live");
  var TEXTS = {
    connecting: "Connecting for live updates…",
    live: "Live updates",
    polling: "Live updates by polling every 5 s",
    ended: "Your session has ended: reload to sign in again"
  };
  var pollTimer = null;
  var retries = 0;
  var ended = false;

  function show(state) {
    if (!indicator) { return; }
    indicator.setAttribute("data-state", state);
    indicator.textContent = TEXTS[state];
  }

  function watchedIds() {
    var seen = {};
    return all("[data-live]").map(function (n) { return n.getAttribute("data-live"); })
      .filter(function (id) { if (seen[id]) { return false; } seen[id] = true; return true; });
  }

  function markStale(id) {
    var stale = document.getElementById("dash-stale");
    if (stale && stale.getAttribute("data-for") === id) { stale.hidden = false; }
  }

  function apply(id, status, paid) {
    byAttr("data-live", id).forEach(function (node) {
      if (node.getAttribute("data-status") === status) { return; }
      node.setAttribute("data-status", status);
      node.textContent = LABELS[status] || status;
      markStale(id);
    });
    if (typeof paid === "string") {
      byAttr("data-live-paid", id).forEach(function (node) { node.textContent = paid; });
    }
  }

  function end() {
    ended = true;
    stopPolling();
    show("ended");
  }

  function poll() {
    var ids = watchedIds();
    if (!ids.length || ended) { return; }
    fetch(PREFIX + "/live.json?ids=" + encodeURIComponent(ids.join(",")), {
      credentials: "same-origin", redirect: "manual", headers: { "Accept": "application/json" }
    }).then(function (resp) {
      if (resp.type === "opaqueredirect" || resp.status === 303) { end(); return null; }
      return resp.ok ? resp.json() : null;
    }).then(function (body) {
      if (!body || !body.data) { return; }
      Object.keys(body.data).forEach(function (id) { apply(id, body.data[id]); });
    }).catch(function () { /* offline for a moment: the next poll tries again */ });
  }

  function startPolling() {
    if (pollTimer !== null || ended) { return; }
    show("polling");
    pollTimer = setInterval(poll, POLL_MS);
    poll();
  }

  function stopPolling() {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    if (ended) { return; }
    if (!("WebSocket" in window)) { startPolling(); return; }
    var ws;
    try {
      ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                         PREFIX + "/ws");
    } catch (e) {
      startPolling();
      return;
    }
    ws.onopen = function () {
      retries = 0;
      stopPolling();
      show("live");
      poll(); /* what changed between the page and the socket */
    };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && typeof msg.id === "string" && typeof msg.status === "string") {
        apply(msg.id, msg.status, msg.amountPaid);
      }
      /* the customer chose (or switched) the payment method: the status stays PENDING,
         the page's method, address and amount are out of date */
      if (msg && typeof msg.id === "string" && msg.event === "invoice.method_selected") {
        markStale(msg.id);
      }
    };
    ws.onclose = function (ev) {
      if (ev.code === 4401) { end(); return; }
      startPolling();
      retries += 1;
      setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, retries)));
    };
  }

  if (typeof data.live === "boolean" && watchedIds().length) {
    show("connecting");
    if (data.live) { connect(); } else { startPolling(); }
  }

  /* ------------------------------------------------------------ copy buttons */

  all("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target) { return; }
      var text = target.getAttribute("href") || target.textContent;
      var done = function () {
        var before = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = before; }, 2000);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () { select(target); });
      } else {
        select(target);
      }
    });
  });

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  /* ------------------------------------------------------------ the create form */

  var form = document.getElementById("new-invoice");
  if (form) {
    var network = form.querySelector("#network");
    var asset = form.querySelector("#asset");
    var checked = function (name) {
      var node = form.querySelector('input[name="' + name + '"]:checked');
      return node ? node.value : "";
    };
    var syncAssets = function () {
      var chosen = null;
      all("optgroup", asset).forEach(function (group) {
        var on = group.getAttribute("data-network") === network.value;
        group.hidden = !on;
        group.disabled = !on;
      });
      var current = asset.options[asset.selectedIndex];
      if (!current || current.parentNode.disabled) {
        chosen = all("optgroup", asset).filter(function (g) { return !g.disabled; })[0];
        if (chosen && chosen.querySelector("option")) {
          chosen.querySelector("option").selected = true;
        }
      }
    };
    var syncSwitches = function () {
      /* several methods are always priced in a currency, and get their address when the
         customer chooses: the amount and the address inputs are for one asset only */
      var kind = checked("kind") || "one";
      var pricing = kind === "methods" ? "price" : checked("pricing");
      var mode = checked("address_mode");
      all("[data-when-pricing], [data-when-mode], [data-when-kind]", form).forEach(function (node) {
        var want = node.getAttribute("data-when-kind");
        var p = node.getAttribute("data-when-pricing");
        var m = node.getAttribute("data-when-mode");
        node.hidden = (want !== null && want !== kind) || (p !== null && p !== pricing) ||
          (m !== null && m !== mode);
      });
    };
    var payload = form.querySelector("#payload");
    var payloadCheck = form.querySelector("#payload-check");
    var checkPayload = function () {
      var text = payload.value.trim();
      var message = "";
      var ok = true;
      if (text) {
        try {
          var value = JSON.parse(text);
          if (value === null || typeof value !== "object" || Array.isArray(value)) {
            ok = false;
            message = "payload must be a JSON object, like {\"cart\": 42}";
          } else {
            message = "A valid JSON object.";
          }
        } catch (e) {
          ok = false;
          message = "payload is not valid JSON: " + e.message;
        }
      }
      payloadCheck.textContent = message;
      payloadCheck.setAttribute("data-ok", ok ? "yes" : "no");
      if (ok) { payload.removeAttribute("aria-invalid"); } else { payload.setAttribute("aria-invalid", "true"); }
    };
    network.addEventListener("change", syncAssets);
    all('input[name="pricing"], input[name="address_mode"], input[name="kind"]', form).forEach(function (node) {
      node.addEventListener("change", syncSwitches);
    });
    payload.addEventListener("input", checkPayload);
    syncAssets();
    syncSwitches();
    if (payload.value.trim()) { checkPayload(); }
  }
})();

/* payment-watcher checkout: live status over a WebSocket, polling /status when it cannot
   connect. No dependencies, no inline code (the page's CSP forbids it); text goes into
   the page only as textContent. */
(function () {
  "use strict";
  function el(id) { return document.getElementById(id); }
  var data = JSON.parse(el("pw-data").textContent);
  var T = data.texts;
  var FINAL = data.final;
  var view = data.view;
  var offset = Date.parse(view.serverTime) - Date.now(); /* the server's clock decides */
  var qrKind = "payment";
  var redirecting = false;
  var pollTimer = null;
  var retries = 0;

  function fmt(text, params) {
    return text.replace(/\{(\w+)\}/g, function (m, k) { return k in params ? String(params[k]) : m; });
  }
  /* confirmations as the customer sees them: counted up to what is required */
  function shown(n) { return Math.min(n, view.requiredConfirmations); }
  function isFinal(v) { return FINAL.indexOf(v.status) >= 0; }
  function dueOf(v) { return v.amountDue !== "0" ? v.amountDue : v.amount; }
  function expired(v) { return Date.parse(v.expireAt) <= Date.now() + offset; }
  function collecting(v) {
    if (expired(v)) { return false; }
    if (v.status === "PENDING" || v.status === "PARTIAL") { return true; }
    return v.status === "WAITING_FOR_CONFIRMATIONS" && v.amountDue !== "0";
  }

  function paymentItem(p) {
    var li = document.createElement("li");
    var hash = p.txHash.slice(0, 10) + "\u2026" + p.txHash.slice(-6);
    var ref;
    if (p.explorer) {
      ref = document.createElement("a");
      ref.href = p.explorer;
      ref.target = "_blank";
      ref.rel = "noopener noreferrer";
      ref.title = T.view_on_explorer;
    } else {
      ref = document.createElement("code");
    }
    ref.textContent = hash;
    var amt = document.createElement("span");
    amt.className = "amt";
    amt.textContent = p.amount + " " + view.asset;
    var meta = document.createElement("span");
    meta.className = "muted";
    meta.textContent = T.block + " " + p.block + " \u00b7 " + shown(p.confirmations) + " / " +
      view.requiredConfirmations;
    li.append(ref, " ", amt, " ", meta);
    return li;
  }

  function updateQr() {
    var img = el("pw-qr");
    var src = "/pay/" + view.id + "/qr.svg" +
      (qrKind === "address" ? "?kind=address" : "?due=" + encodeURIComponent(dueOf(view)));
    if (img.getAttribute("src") !== src) { img.setAttribute("src", src); }
    img.dataset.uri = qrKind === "address" ? view.to : view.paymentUri;
  }

  function render(v) {
    view = v;
    el("pw").dataset.status = v.status;
    el("pw-status").textContent = T["status_" + v.status];
    el("pw-detail").textContent = T["detail_" + v.status];
    var paid = v.payments.length > 0;
    el("pw-conf").hidden = !paid;
    el("pw-conf-n").textContent = String(shown(v.confirmations));
    var rest = v.amountDue !== "0" && v.amountDue !== v.amount;
    el("pw-amount-label").textContent = rest ? T.send_rest : T.send_exactly;
    el("pw-amount").textContent = dueOf(v);
    el("pw-pay").hidden = !collecting(v);
    updateQr();
    el("pw-payments-box").hidden = !paid;
    el("pw-payments").replaceChildren.apply(el("pw-payments"), v.payments.map(paymentItem));
    el("pw-paid").textContent = v.amountPaid;
    el("pw-due").textContent = v.amountDue;
    tick();
    if (v.status === "COMPLETED" && v.redirectUrl && !redirecting) { startRedirect(v.redirectUrl); }
  }

  function startRedirect(url) {
    if (!/^https?:\/\//i.test(url)) { return; }
    redirecting = true;
    var left = data.redirectDelay;
    el("pw-redirect").hidden = false;
    el("pw-redirect-link").href = url;
    (function step() {
      el("pw-redirect-text").textContent = fmt(T.redirecting, { seconds: left });
      if (left <= 0) { window.location.assign(url); return; }
      left -= 1;
      setTimeout(step, 1000);
    })();
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }
  function tick() {
    var timer = el("pw-timer");
    var node = el("pw-countdown");
    if (isFinal(view)) { timer.hidden = true; return; }
    timer.hidden = false;
    var ms = Date.parse(view.expireAt) - (Date.now() + offset);
    if (ms <= 0) {
      node.textContent = T.expired;
      timer.classList.add("late");
      el("pw-pay").hidden = !collecting(view);
      return;
    }
    var s = Math.floor(ms / 1000);
    var d = Math.floor(s / 86400);
    node.textContent = (d ? d + " d " : "") + two(Math.floor((s % 86400) / 3600)) + ":" +
      two(Math.floor((s % 3600) / 60)) + ":" + two(s % 60);
    timer.classList.toggle("late", ms < 5 * 60 * 1000);
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }
  function copy(btn) {
    var node = el(btn.dataset.copy);
    var text = node.textContent.trim();
    function done(ok) {
      btn.textContent = ok ? T.copied : T.copy_failed;
      btn.classList.toggle("done", ok);
      if (!ok) { selectText(node); }
      setTimeout(function () { btn.textContent = T.copy_label; btn.classList.remove("done"); }, 2000);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
    } else {
      done(false);
    }
  }

  function setLive(state) {
    var node = el("pw-live");
    node.dataset.state = state;
    node.textContent = T[state === "live" ? "live" : state === "polling" ? "polling" : "offline"];
  }
  function poll() {
    fetch("/pay/" + view.id + "/status", { cache: "no-store", credentials: "omit" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (v) { setLive("polling"); render(v); }, function () { setLive("offline"); });
  }
  function startPolling() {
    if (pollTimer !== null) { return; }
    setLive("polling");
    poll();
    pollTimer = setInterval(poll, 4000);
  }
  function stopPolling() {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
  }
  function connect() {
    if (!("WebSocket" in window)) { startPolling(); return; }
    var ws;
    try {
      ws = new WebSocket((location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host +
        "/pay/" + view.id + "/ws");
    } catch (e) {
      startPolling();
      return;
    }
    ws.onopen = function () { retries = 0; stopPolling(); setLive("live"); };
    ws.onmessage = function (ev) { render(JSON.parse(ev.data)); };
    ws.onclose = function (ev) {
      if (ev.code === 4404) { return; }
      startPolling();
      retries += 1;
      setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, retries)));
    };
  }

  Array.prototype.forEach.call(document.querySelectorAll(".copy"), function (btn) {
    btn.addEventListener("click", function () { copy(btn); });
  });
  Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (btn) {
    btn.addEventListener("click", function () {
      qrKind = btn.dataset.kind;
      Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (b) {
        b.setAttribute("aria-pressed", b === btn ? "true" : "false");
      });
      updateQr();
    });
  });
  render(view);
  setInterval(tick, 1000);
  connect();
})();

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
  /* the customer asked to see the payment methods again (a method is chosen) */
  var wantChange = !!data.change;
  var choosing = false; /* a choice is on its way to the server */
  var methodsShown = null; /* what the method list was last built from */

  function fmt(text, params) {
    return text.replace(/\{(\w+)\}/g, function (m, k) { return k in params ? String(params[k]) : m; });
  }
  /* confirmations as the customer sees them: counted up to what is required */
  function shown(n) { return Math.min(n, view.requiredConfirmations); }
  function isFinal(v) { return FINAL.indexOf(v.status) >= 0; }
  function chosen(v) { return v.method !== null && v.method !== undefined; }
  function dueOf(v) { return v.amountDue && v.amountDue !== "0" ? v.amountDue : (v.amount || ""); }
  function expired(v) { return Date.parse(v.expireAt) <= Date.now() + offset; }
  function collecting(v) {
    if (expired(v)) { return false; }
    if (v.status === "PENDING" || v.status === "PARTIAL") { return true; }
    return v.status === "WAITING_FOR_CONFIRMATIONS" && v.amountDue !== "0";
  }
  function canChange(v) { return !!(v.methods && v.canChangeMethod) && !expired(v); }
  /* "choose": the method list; "pay": the chosen method's payment view; "none": neither
     (e.g. it expired before a method was chosen) */
  function mode(v) {
    if (canChange(v) && (!chosen(v) || wantChange)) { return "choose"; }
    return chosen(v) ? "pay" : "none";
  }
  function statusKey(v) {
    return mode(v) === "choose" && v.status === "PENDING" ? "CHOOSE" : v.status;
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
    if (!chosen(view)) { img.removeAttribute("src"); return; }
    /* the method is in the URL too: two methods may ask for the same amount */
    var src = "/pay/" + view.id + "/qr.svg" +
      (qrKind === "address" ? "?kind=address" : "?due=" + encodeURIComponent(dueOf(view))) +
      "&m=" + encodeURIComponent(view.network + "." + view.asset);
    if (img.getAttribute("src") !== src) { img.setAttribute("src", src); }
    img.dataset.uri = qrKind === "address" ? view.to : view.paymentUri;
  }

  function setText(id, text) {
    var node = el(id);
    if (node !== null && node.textContent !== text) { node.textContent = text; }
  }

  /* ---- the method list (built from the view, every text as textContent) ---- */
  function methodItem(m, v) {
    var current = chosen(v) && v.method.network === m.network && v.method.asset === m.asset;
    var li = document.createElement("li");
    var form = document.createElement("form");
    form.className = "method-form";
    form.method = "post";
    form.action = data.action;
    [["network", m.network], ["asset", m.asset]].forEach(function (pair) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = pair[0];
      input.value = pair[1];
      form.append(input);
    });
    var btn = document.createElement("button");
    btn.type = "submit";
    btn.className = "method" + (current ? " current" : "");
    btn.dataset.network = m.network;
    btn.dataset.asset = m.asset;
    if (current) { btn.setAttribute("aria-current", "true"); }
    btn.disabled = m.amount === null;
    var head = document.createElement("span");
    head.className = "m-head";
    var asset = document.createElement("strong");
    asset.className = "m-asset";
    asset.textContent = m.asset;
    var sep = document.createElement("span");
    sep.className = "m-sep";
    sep.setAttribute("aria-hidden", "true");
    sep.textContent = "\u00b7";
    var net = document.createElement("span");
    net.className = "net m-net";
    net.textContent = m.network;
    head.append(asset, " ", sep, " ", net);
    if (current) {
      var cur = document.createElement("span");
      cur.className = "m-current";
      cur.textContent = T.method_current;
      head.append(" ", cur);
    }
    var amount = document.createElement("span");
    amount.className = "m-amount" + (m.amount === null ? " m-none" : "");
    amount.textContent = m.amount === null ? T.method_no_rate : m.amount + " " + m.asset;
    var token = document.createElement("span");
    if (m.tokenAddress) {
      token.className = "m-token";
      var label = document.createElement("span");
      label.className = "muted";
      label.textContent = T.token_contract;
      var code = document.createElement("code");
      code.className = "addr small";
      code.textContent = m.tokenAddress;
      token.append(label, " ", code);
    } else {
      token.className = "m-token muted";
      token.textContent = T.native_coin;
    }
    btn.append(head, amount, token);
    form.append(btn);
    li.append(form);
    return li;
  }
  function renderMethods(v) {
    var list = el("pw-method-list");
    if (list === null || !v.methods) { return; }
    var key = JSON.stringify([v.methods, v.method]);
    if (key !== methodsShown) { /* rebuilt only when it changed: keeps the focus */
      methodsShown = key;
      list.replaceChildren.apply(list, v.methods.map(function (m) { return methodItem(m, v); }));
    }
    Array.prototype.forEach.call(list.querySelectorAll("button.method"), function (b) {
      var m = v.methods.filter(function (x) {
        return x.network === b.dataset.network && x.asset === b.dataset.asset;
      })[0];
      b.disabled = choosing || !m || m.amount === null;
    });
    list.setAttribute("aria-busy", choosing ? "true" : "false");
    el("pw-keep").hidden = !chosen(v);
  }
  function methodError(text) {
    var node = el("pw-method-error");
    if (node === null) { return; }
    node.textContent = text || "";
    node.hidden = !text;
  }

  /* "Paying with {asset} on {network}", the network's name styled as everywhere else */
  function payingWith(v) {
    var node = el("pw-chosen-text");
    if (node === null) { return; }
    var parts = T.paying_with.split("{network}");
    var net = document.createElement("span");
    net.className = "net";
    net.textContent = v.network;
    var rest = parts.slice(1).join("{network}");
    node.replaceChildren(fmt(parts[0], { asset: v.asset }), net, fmt(rest, { asset: v.asset }));
  }

  function layout(v) {
    var m = mode(v);
    el("pw").dataset.mode = m;
    var box = el("pw-methods");
    if (box !== null) { box.hidden = m !== "choose"; }
    el("pw-pay").hidden = m !== "pay" || !collecting(v);
    var change = el("pw-change");
    if (change !== null) { change.hidden = !canChange(v); }
    var key = statusKey(v);
    setText("pw-status", T["status_" + key]);
    setText("pw-detail", T["detail_" + key]);
  }

  function render(v) {
    view = v;
    if (!canChange(v)) { wantChange = false; }
    el("pw").dataset.status = v.status;
    setText("pw-title", v.title || "");
    el("pw-title").hidden = !v.title;
    setText("pw-description", v.description || "");
    el("pw-description").hidden = !v.description;
    var paid = v.payments.length > 0;
    el("pw-conf").hidden = !paid;
    el("pw-conf-n").textContent = String(shown(v.confirmations));
    setText("pw-conf-req", String(v.requiredConfirmations));
    renderMethods(v);
    if (chosen(v)) {
      var rest = v.amountDue !== "0" && v.amountDue !== v.amount;
      el("pw-amount-label").textContent = rest ? T.send_rest : T.send_exactly;
      setText("pw-amount", dueOf(v));
      setText("pw-address", v.to);
      setText("pw-network", v.network);
      setText("pw-chain", String(v.chainId));
      setText("pw-token", v.tokenAddress || "");
      el("pw-asset-token").hidden = !v.tokenAddress;
      el("pw-asset-native").hidden = !!v.tokenAddress;
      setText("pw-warn", fmt(T.warning_send_only, { asset: v.asset, network: v.network }));
      setText("pw-amount-asset", v.asset);
      Array.prototype.forEach.call(document.querySelectorAll(".pw-asset-name"), function (n) {
        if (n.textContent !== v.asset) { n.textContent = v.asset; }
      });
      payingWith(v);
      document.title = fmt(T.page_title, { amount: dueOf(v), asset: v.asset });
    }
    layout(v);
    updateQr();
    el("pw-payments-box").hidden = !paid;
    el("pw-payments").replaceChildren.apply(el("pw-payments"), v.payments.map(paymentItem));
    el("pw-paid").textContent = v.amountPaid || "0";
    el("pw-due").textContent = v.amountDue || "0";
    tick();
    if (v.status === "COMPLETED" && v.redirectUrl && !redirecting) { startRedirect(v.redirectUrl); }
  }

  /* ---- choosing: JSON to POST /pay/{id}/method; the form posts it without script ---- */
  var ERRORS = { 409: "error_method_conflict", 422: "error_method_invalid", 503: "error_method_rate" };
  function focusOn(id) {
    var node = el(id);
    if (node !== null) { node.focus({ preventScroll: false }); }
  }
  function choose(network, asset) {
    if (choosing) { return; }
    if (chosen(view) && view.method.network === network && view.method.asset === asset) {
      wantChange = false; /* the one already chosen: back to paying it */
      methodError("");
      render(view);
      focusOn("pw-chosen");
      return;
    }
    choosing = true;
    methodError("");
    renderMethods(view);
    fetch("/pay/" + view.id + "/method", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ network: network, asset: asset }),
      cache: "no-store",
      credentials: "omit"
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, status: r.status, body: body }; },
        function () { return { ok: false, status: r.status, body: null }; });
    }).then(function (res) {
      choosing = false;
      if (res.ok) {
        wantChange = false;
        render(res.body);
        focusOn("pw-chosen");
        return;
      }
      methodError(T[ERRORS[res.status] || "error_method_other"]);
      renderMethods(view);
      if (res.status === 409) { poll(); } /* it changed meanwhile: show what it is now */
    }, function () {
      choosing = false;
      methodError(T.error_method_other);
      renderMethods(view);
    });
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
      layout(view);
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
    var live = false;  // live once the first view arrived (a socket may open, then close 1013)
    ws.onmessage = function (ev) {
      if (!live) { live = true; retries = 0; stopPolling(); setLive("live"); }
      render(JSON.parse(ev.data));
    };
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
  var methodList = el("pw-method-list");
  if (methodList !== null) {
    methodList.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var form = ev.target;
      choose(form.elements.network.value, form.elements.asset.value);
    });
  }
  var changeLink = el("pw-change");
  if (changeLink !== null) {
    changeLink.addEventListener("click", function (ev) {
      ev.preventDefault();
      wantChange = true;
      methodError("");
      render(view);
      focusOn("pw-methods-h");
    });
  }
  var keepLink = el("pw-keep-link");
  if (keepLink !== null) {
    keepLink.addEventListener("click", function (ev) {
      ev.preventDefault();
      wantChange = false;
      methodError("");
      render(view);
      focusOn("pw-chosen");
    });
  }
  render(view);
  setInterval(tick, 1000);
  connect();
})();

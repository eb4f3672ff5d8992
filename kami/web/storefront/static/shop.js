// Progressive behaviour for the storefront. Every value from the server is set with
// textContent, never innerHTML: keys and buyer input are untrusted.
(function () {
  "use strict";
  var T = {};
  try { T = JSON.parse(document.getElementById("i18n").textContent); } catch (e) { T = {}; }
  var lang = document.documentElement.lang || "zh-CN";
  function fill(text, values) {
    return String(text || "").replace(/%\((\w+)\)s/g, function (_, k) { return values[k]; });
  }
  function money(minor, currency) {
    var digits = { JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, BHD: 3, KWD: 3, OMR: 3, JOD: 3, TND: 3 }[currency];
    if (digits === undefined) digits = 2;
    try {
      return new Intl.NumberFormat(lang, { style: "currency", currency: currency }).format(minor / Math.pow(10, digits));
    } catch (e) { return (minor / Math.pow(10, digits)).toFixed(digits) + " " + currency; }
  }
  async function call(method, url, token, payload) {
    var headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    var res = await fetch(url, init);
    var body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      var err = new Error((body && body.detail) || ("HTTP " + res.status));
      err.status = res.status;
      throw err;
    }
    return body;
  }
  function tokenKey(orderNo) { return "kami:t:" + orderNo; }
  function remember(orderNo, token) {
    try { localStorage.setItem(tokenKey(orderNo), token); } catch (e) { /* private mode */ }
  }
  function recall(orderNo) {
    try { return localStorage.getItem(tokenKey(orderNo)); } catch (e) { return null; }
  }
  function tokenFromHash() {
    var m = /(?:^|[#&])t=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  // Choosing an option on the product page reloads it with that option (plain GET form).
  document.querySelectorAll("form.choose input[type=radio]").forEach(function (radio) {
    radio.addEventListener("change", function () { radio.form.submit(); });
  });

  // Forms that lead to the order page keep the token fragment: a redirect without a fragment
  // inherits the one of the URL the form was posted to.
  document.querySelectorAll("form.keep-fragment").forEach(function (form) {
    if (location.hash) form.setAttribute("action", form.getAttribute("action") + location.hash);
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
    });
  });
  document.querySelectorAll("form.checkout").forEach(function (form) {
    form.addEventListener("submit", function () {
      setTimeout(function () { form.querySelector("button[type=submit]").disabled = true; }, 0);
    });
  });

  var sandbox = document.getElementById("sandbox-pay");
  if (sandbox) {
    var st = tokenFromHash();
    if (st) remember(sandbox.dataset.order, st);
  }
  var payPage = document.getElementById("pay-page");
  if (payPage) {
    var pm = /#t=([^&]+)/.exec(payPage.dataset.link || "");
    if (pm) remember(payPage.dataset.order, decodeURIComponent(pm[1]));
  }

  var page = document.getElementById("order-page");
  if (!page) return;
  var orderNo = page.dataset.order;
  var token = tokenFromHash() || recall(orderNo);
  var errorBox = document.getElementById("order-error");
  var revealed = null;
  var downloads = {};
  var OPEN = { pending: 1, paid: 1, awaiting_stock: 1 };
  var PART_OPEN = { waiting: 1, pending: 1, processing: 1 };

  function showError(e) {
    errorBox.textContent = (e && e.message) || T.error || "Error";
  }
  async function revealAll() {
    if (!revealed) {
      var r = await call("POST", "/api/v1/orders/" + encodeURIComponent(orderNo) + "/reveal", token);
      revealed = {};
      downloads = {};
      r.items.forEach(function (it) {
        revealed[it.position] = it.password ? it.card + "  " + it.password : it.card;
        if (it.kind === "download") { downloads[it.position] = it; }
      });
    }
    return revealed;
  }
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  function itemRow(it) {
    var li = document.createElement("li");
    li.className = "item";
    li.dataset.position = it.position;
    var code = document.createElement("code");
    code.className = "secret";
    code.textContent = it.masked;
    var label = fill(T.item || "Item %(n)s", { n: it.position });
    var reveal = document.createElement("button");
    reveal.type = "button";
    reveal.className = "reveal";
    reveal.textContent = T.reveal || "Reveal";
    reveal.setAttribute("aria-label", (T.reveal || "Reveal") + " · " + label);
    var copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy secondary";
    copy.textContent = T.copy || "Copy";
    copy.setAttribute("aria-label", (T.copy || "Copy") + " · " + label);
    copy.hidden = true;
    var shown = false;
    reveal.addEventListener("click", async function () {
      errorBox.textContent = "";
      try {
        if (shown) {
          code.textContent = it.masked;
          reveal.textContent = T.reveal || "Reveal";
          copy.hidden = true;
          shown = false;
          return;
        }
        var all = await revealAll();
        var file = downloads[it.position];
        if (file) {
          // A download is a link to follow, not a key to copy: shown as an element, never HTML.
          var link = document.createElement("a");
          link.className = "button";
          link.rel = "noreferrer";
          link.href = file.card;
          link.textContent = (T.download || "Download") + " · " + (file.name || it.masked);
          var note = document.createElement("small");
          note.textContent = " " + fill(T.downloadsLeft || "%(n)s left, until %(until)s", {
            n: file.downloads_left, until: new Date(file.expires_at).toLocaleString()
          });
          code.replaceChildren(link, note);
        } else {
          code.textContent = all[it.position] || "";
          copy.hidden = false;
        }
        reveal.textContent = T.hide || "Hide";
        shown = true;
      } catch (e) { showError(e); }
    });
    copy.addEventListener("click", async function () {
      try {
        var all = await revealAll();
        await copyText(all[it.position] || "");
        copy.textContent = T.copied || "Copied";
        setTimeout(function () { copy.textContent = T.copy || "Copy"; }, 2000);
      } catch (e) { showError(e); }
    });
    li.append(code, " ", reveal, " ", copy);
    if (it.valid_until) {
      var until = document.createElement("small");
      until.className = "valid-until";
      until.textContent = " " + fill(T.validUntil || "valid until %(date)s", {
        date: new Date(it.valid_until).toLocaleDateString()
      });
      li.append(until);
    }
    if (it.kind !== "download") { li.append(" ", reportForm(it, label)); }
    return li;
  }
  // After-sales: "key invalid / redemption failed" with a note, for this one item.
  function reportForm(it, label) {
    var box = document.createElement("details");
    box.className = "report";
    var summary = document.createElement("summary");
    summary.textContent = T.report || "Report a problem";
    summary.setAttribute("aria-label", (T.report || "Report a problem") + " · " + label);
    var form = document.createElement("form");
    var problem = document.createElement("select");
    problem.name = "problem";
    problem.id = "problem-" + it.position;
    [["key_invalid", T.keyInvalid || "Key invalid"],
     ["redemption_failed", T.redemptionFailed || "Redemption failed"]].forEach(function (o) {
      var opt = document.createElement("option");
      opt.value = o[0];
      opt.textContent = o[1];
      problem.appendChild(opt);
    });
    var problemLabel = document.createElement("label");
    problemLabel.htmlFor = problem.id;
    problemLabel.textContent = T.problem || "Problem";
    var note = document.createElement("textarea");
    note.name = "note";
    note.maxLength = 1000;
    note.id = "note-" + it.position;
    var noteLabel = document.createElement("label");
    noteLabel.htmlFor = note.id;
    noteLabel.textContent = T.note || "What went wrong (optional)";
    var send = document.createElement("button");
    send.type = "submit";
    send.textContent = T.sendReport || "Send report";
    var result = document.createElement("p");
    result.setAttribute("role", "status");
    form.append(problemLabel, problem, noteLabel, note, send, result);
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      send.disabled = true;
      try {
        var r = await call("POST", "/api/v1/orders/" + encodeURIComponent(orderNo) + "/reports", token, {
          position: it.position, problem: problem.value, note: note.value || null
        });
        var notice = r.status === "replaced" ? (T.replaced || "Replaced") : (T.underReview || "Sent for review");
        document.getElementById("order-notice").textContent = notice;
        box.open = false;
        if (r.status === "replaced") {
          revealed = null;  // the replacement shows on the next reveal
          shownItems = "";
          refresh();
        }
      } catch (e) { result.textContent = e.message; send.disabled = false; }
    });
    box.append(summary, form);
    return box;
  }
  var shownItems = "";
  function render(o) {
    document.getElementById("order-status").textContent = (T.status && T.status[o.status]) || o.status;
    document.getElementById("order-title").textContent = o.title + " × " + o.quantity;
    document.getElementById("order-amount").textContent = money(o.amount_minor, o.currency);
    var parts = document.getElementById("order-parts");
    if (o.parts && o.parts.length > 1) {
      parts.replaceChildren();
      o.parts.forEach(function (p) {
        var li = document.createElement("li");
        li.textContent = p.sku + " × " + p.quantity + ": " + ((T.part && T.part[p.status]) || p.status);
        parts.appendChild(li);
      });
      parts.hidden = false;
    }
    var key = JSON.stringify(o.items);
    if (key !== shownItems) {
      shownItems = key;
      var list = document.getElementById("order-items");
      list.replaceChildren();
      o.items.forEach(function (it) { list.appendChild(itemRow(it)); });
      document.getElementById("items-heading").hidden = o.items.length === 0;
    }
    var box = document.getElementById("redemption-box");
    if (o.items.length && (o.redemption || o.validity_days)) {
      document.getElementById("redemption").textContent = o.redemption || "";
      document.getElementById("validity").textContent = o.validity_days ? fill(T.validity, { n: o.validity_days }) : "";
      box.hidden = false;
    }
  }
  function stillOpen(o) {
    if (OPEN[o.status]) return true;
    return (o.parts || []).some(function (p) { return PART_OPEN[p.status]; });
  }
  async function refresh() {
    try {
      var o = await call("GET", "/api/v1/orders/" + encodeURIComponent(orderNo), token);
      errorBox.textContent = "";
      render(o);
      var open = stillOpen(o);
      document.getElementById("waiting-note").hidden = !open;
      if (open) setTimeout(refresh, 2000);
    } catch (e) {
      showError(e);
      if (!e.status || e.status >= 500) setTimeout(refresh, 5000);
    }
  }
  if (!token) { errorBox.textContent = T.missingToken || ""; return; }
  remember(orderNo, token);
  refresh();
})();

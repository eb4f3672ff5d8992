// Progressive behaviour for the storefront. Every value from the server is set with
// textContent, never innerHTML: keys and buyer input are untrusted.
(function () {
  "use strict";
  function problemText(body, status) {
    if (body && body.detail) return body.detail;
    return "HTTP " + status;
  }
  async function call(method, url, token, payload) {
    var headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    var res = await fetch(url, { method: method, headers: headers, body: payload === undefined ? undefined : JSON.stringify(payload) });
    var body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) throw new Error(problemText(body, res.status));
    return body;
  }
  function tokenFromHash() {
    var m = /(?:^|[#&])t=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  document.querySelectorAll("form.buy").forEach(function (form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      var out = form.querySelector(".error");
      out.textContent = "";
      try {
        var order = await call("POST", "/api/v1/orders", null, {
          sku: form.dataset.sku,
          quantity: parseInt(form.quantity.value, 10),
          email: form.email.value,
          gateway: form.gateway.value
        });
        var target = order.payment.url || ("/orders/" + order.order_no);
        location.href = target + "#t=" + encodeURIComponent(order.access_token);
      } catch (e) { out.textContent = e.message; }
    });
  });

  var pay = document.getElementById("sandbox-pay");
  if (pay) {
    document.getElementById("pay-button").addEventListener("click", async function () {
      var out = pay.querySelector(".error");
      try {
        await call("POST", "/pay/sandbox/" + pay.dataset.order, null, {});
        location.href = "/orders/" + pay.dataset.order + location.hash;
      } catch (e) { out.textContent = e.message; }
    });
  }

  var page = document.getElementById("order-page");
  if (page) {
    var token = tokenFromHash();
    var orderNo = page.dataset.order;
    var out = page.querySelector(".error");
    var revealBtn = document.getElementById("reveal-button");
    function renderItems(items, field) {
      var list = document.getElementById("order-items");
      list.replaceChildren();
      items.forEach(function (it) {
        var li = document.createElement("li");
        li.textContent = field(it);
        list.appendChild(li);
      });
    }
    async function refresh() {
      try {
        var o = await call("GET", "/api/v1/orders/" + orderNo, token);
        document.getElementById("order-status").textContent = o.status;
        document.getElementById("order-title").textContent = o.title + " × " + o.quantity;
        renderItems(o.items, function (it) { return it.masked; });
        if (o.status === "delivered") { revealBtn.hidden = false; return; }
        if (o.status === "pending" || o.status === "paid" || o.status === "awaiting_stock") setTimeout(refresh, 1500);
      } catch (e) { out.textContent = e.message; }
    }
    revealBtn.addEventListener("click", async function () {
      try {
        var r = await call("POST", "/api/v1/orders/" + orderNo + "/reveal", token);
        renderItems(r.items, function (it) { return it.password ? it.card + "  " + it.password : it.card; });
        var red = document.getElementById("redemption");
        red.textContent = r.redemption;
        red.hidden = !r.redemption;
      } catch (e) { out.textContent = e.message; }
    });
    if (!token) out.textContent = "缺少访问令牌 / The link is missing its access token.";
    else refresh();
  }
})();

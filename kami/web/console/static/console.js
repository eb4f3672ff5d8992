// The console works without this script; with it, a key upload shows its progress and the
// import report replaces the page's content without a reload. Server text is only ever
// parsed as a whole document from our own origin; nothing is built from strings.
(function () {
  "use strict";
  function bind() {
  var form = document.getElementById("import-form");
  if (!form || !window.XMLHttpRequest || !window.DOMParser) return;
  var bar = document.getElementById("import-progress");
  var status = document.getElementById("import-status");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.round((100 * e.loaded) / e.total);
      bar.value = percent;
      status.textContent = status.dataset.uploading.replace("%(n)s", String(percent)).replace("%%", "%");
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value"); // indeterminate while the server imports
      status.textContent = status.dataset.working;
    });
    xhr.addEventListener("load", function () {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var fresh = doc.getElementById("main");
      var main = document.getElementById("main");
      if (!fresh || !main) { status.textContent = status.dataset.failed; button.disabled = false; return; }
      main.replaceChildren.apply(main, Array.prototype.map.call(fresh.childNodes, function (n) {
        return document.importNode(n, true);
      }));
      var report = document.getElementById("import-report") || main.querySelector(".error");
      if (report) report.scrollIntoView();
      bind(); // the new form needs its own listener
    });
    xhr.addEventListener("error", function () {
      status.textContent = status.dataset.failed;
      button.disabled = false;
    });
    xhr.send(new FormData(form));
  });
  }
  bind();
})();

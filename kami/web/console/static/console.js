// The console works without this script; with it, a key upload shows its progress (the upload,
// then the import as the server reports it, one JSON line at a time) and the import report
// replaces the page's content without a reload. Server text is only ever parsed as JSON lines
// or as a whole document from our own origin; nothing is built from strings.
(function () {
  "use strict";
  var STREAM = "application/x-ndjson";

  function bind() {
  var form = document.getElementById("import-form");
  if (!form || !window.XMLHttpRequest || !window.DOMParser) return;
  var bar = document.getElementById("import-progress");
  var status = document.getElementById("import-status");

  function say(template, values) {
    var text = template;
    Object.keys(values).forEach(function (name) {
      text = text.replace("%(" + name + ")s", String(values[name]));
    });
    status.textContent = text.replace("%%", "%");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    var xhr = new XMLHttpRequest();
    var read = 0; // characters of the answer already taken as lines
    var page = null; // the last line's page, once it has come
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", STREAM + ", text/html;q=0.5");

    function lines() {
      var streamed = (xhr.getResponseHeader("Content-Type") || "").indexOf(STREAM) === 0;
      if (!streamed) return;
      var text = xhr.responseText;
      var end = text.lastIndexOf("\n");
      if (end < read) return;
      text.slice(read, end).split("\n").forEach(function (line) {
        if (!line) return;
        var step = JSON.parse(line);
        if (typeof step.page === "string") { page = step.page; return; }
        if (step.total > 0) {
          var percent = Math.min(100, Math.round((100 * step.done) / step.total));
          bar.value = percent;
          say(status.dataset.importing, { keys: step.imported, n: percent });
        } else {
          bar.removeAttribute("value");
          say(status.dataset.importingRows, { keys: step.imported });
        }
      });
      read = end + 1;
    }

    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.round((100 * e.loaded) / e.total);
      bar.value = percent;
      say(status.dataset.uploading, { n: percent });
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value"); // indeterminate until the server's first line
      status.textContent = status.dataset.working;
    });
    xhr.addEventListener("progress", lines);
    xhr.addEventListener("load", function () {
      lines();
      // A refusal before the import began (no file, an unknown SKU) is a page of its own.
      var html = page !== null ? page : xhr.responseText;
      var doc = new DOMParser().parseFromString(html, "text/html");
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

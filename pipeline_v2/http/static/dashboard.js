// pipeline dashboard: refresh the live sections without reloading, and the action buttons.
// No framework and no network beyond this server; the pages read fine without it.
"use strict";
(function () {
  var POLL_MS = 3000;
  var KEY = "pipeline.http_token";

  function refresh() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragments", "1");
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        Object.keys(data.sections).forEach(function (id) {
          var box = document.querySelector("#" + CSS.escape(id) + " > .live");
          if (box) { box.innerHTML = data.sections[id]; }
        });
        var stamp = document.getElementById("updated");
        if (stamp) { stamp.textContent = data.updated; }
      })
      .catch(function () { /* the server may be restarting: try again next tick */ });
  }

  function token() {
    var known = sessionStorage.getItem(KEY);
    if (known === null) {
      known = window.prompt("daemon.http_token (kept for this tab only)") || "";
      if (known) { sessionStorage.setItem(KEY, known); }
    }
    return known;
  }

  function act(action) {
    var out = document.getElementById("action-result");
    var ref = decodeURIComponent(window.location.pathname.split("/").pop());
    var stage = document.getElementById("action-stage");
    var body = stage && stage.value ? { stage: stage.value } : {};
    var headers = { "Content-Type": "application/json" };
    var secret = token();
    if (secret) { headers.Authorization = "Bearer " + secret; }
    out.className = "";
    out.textContent = action + "…";
    return fetch("/api/trials/" + encodeURIComponent(ref) + "/" + action,
                 { method: "POST", headers: headers, body: JSON.stringify(body) })
      .then(function (r) {
        return r.json().then(function (data) { return { status: r.status, data: data }; });
      })
      .then(function (res) {
        if (res.status === 200) {
          out.className = "done";
          out.textContent = action + ": done (" + JSON.stringify(res.data.result) + ")";
        } else {
          if (res.status === 401) { sessionStorage.removeItem(KEY); }
          out.className = "refused";
          out.textContent = action + " refused (" + res.status + "): " + res.data.error;
        }
        return refresh();
      });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) { act(button.getAttribute("data-action")); }
    if (event.target.id === "forget-token") {
      sessionStorage.removeItem(KEY);
      document.getElementById("action-result").textContent = "token forgotten";
    }
  });
  // costly parts (a trial's report) come from their own page, inlined once after load
  document.querySelectorAll("[data-load]").forEach(function (box) {
    fetch(box.getAttribute("data-load") + "?fragments=1", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { box.innerHTML = data.sections.report; } })
      .catch(function () { /* the link stays */ });
  });
  window.setInterval(refresh, POLL_MS);
})();

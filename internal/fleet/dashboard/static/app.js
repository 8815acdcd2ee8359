// Outpost dashboard: live updates without reloads. The server signals
// every fleet change on /events (Server-Sent Events); the page then asks
// for itself again with X-Live: 1 and swaps its #live region. One request
// at a time; a change during a request triggers one more afterwards.
// The region is also fetched when the stream (re)opens, so a change made
// while the page loaded or the stream was down is not missed.
(function () {
  "use strict";
  var body = document.body;
  if (body.dataset.live !== "1" || !window.EventSource) return;
  var live = document.getElementById("live");
  var state = document.getElementById("livestate");
  body.dataset.updates = "0";
  if (!live) return;
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        live.innerHTML = html;
        body.dataset.updates = String(Number(body.dataset.updates) + 1);
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var es = new EventSource("/events");
  // A change between the server rendering this page and the stream
  // opening would be missed: fetch the live region once on every open
  // (also after a reconnect).
  es.addEventListener("open", function () {
    state.textContent = "live";
    refresh();
    body.dataset.sse = "open";
  });
  es.addEventListener("error", function () { state.textContent = "reconnecting"; });
  es.addEventListener("change", refresh);
})();

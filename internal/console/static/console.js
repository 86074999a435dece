// Lifeboat console: live updates. A page names, in <main data-watch>, the ids (or
// kinds) whose events concern it; on such an event from /console/events it fetches
// itself again and swaps in its [data-live] parts (server-rendered, escaped HTML).
// Without the event stream it polls every 5 seconds instead.
"use strict";
(function () {
  const main = document.getElementById("main");
  const status = document.getElementById("live-status");
  const watch = ((main && main.dataset.watch) || "").split(/\s+/).filter(Boolean);
  if (!watch.length || !document.querySelector("[data-live]")) {
    return;
  }
  let timer = null;
  let last = 0;
  let polling = null;

  async function refresh() {
    let resp;
    try {
      resp = await fetch(window.location.href, { credentials: "same-origin", headers: { "X-Console-Live": "1" } });
    } catch (e) {
      status.textContent = "the control plane did not answer; retrying";
      return;
    }
    if (!resp.ok) {
      status.textContent = "live update failed (" + resp.status + ")";
      return;
    }
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const focused = document.activeElement && document.activeElement.id;
    for (const el of document.querySelectorAll("[data-live]")) {
      const fresh = doc.getElementById(el.id);
      if (fresh) {
        el.replaceWith(document.importNode(fresh, true));
      }
    }
    if (focused && document.activeElement === document.body) {
      const again = document.getElementById(focused);
      if (again) {
        again.focus();
      }
    }
    status.textContent = "updated " + new Date().toLocaleTimeString();
  }

  // At most one refresh every 1.5 seconds, however many events arrive.
  function schedule() {
    if (timer) {
      return;
    }
    const wait = Math.max(0, 1500 - (Date.now() - last));
    timer = setTimeout(function () {
      timer = null;
      last = Date.now();
      refresh();
    }, wait);
  }

  function concerns(ev) {
    if (!ev || !ev.type) {
      return true; // a reset: events were missed
    }
    const d = ev.data || {};
    return watch.includes(ev.targetId) || watch.includes(ev.targetKind) ||
      watch.includes(d.sourceServerId) || watch.includes(d.jobId) || watch.includes(d.recoveryInstanceId);
  }

  function poll() {
    if (!polling) {
      status.textContent = "following by polling";
      polling = setInterval(schedule, 5000);
    }
  }

  if (!window.EventSource) {
    poll();
    return;
  }
  const es = new EventSource("/console/events");
  // Events between the page's rendering and the stream's opening are not replayed:
  // look again once it is open (and after each reconnection).
  es.onopen = function () {
    status.textContent = "live";
    schedule();
  };
  es.onmessage = function (m) {
    let ev = null;
    try {
      ev = JSON.parse(m.data);
    } catch (e) {
      return;
    }
    if (concerns(ev)) {
      schedule();
    }
  };
  es.onerror = function () {
    if (es.readyState === EventSource.CLOSED) {
      poll();
    }
  };
  window.addEventListener("pagehide", function () {
    es.close();
  });
})();

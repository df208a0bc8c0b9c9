// The review page's keys. Plain JS, no build step, nothing loaded from elsewhere.
// Each action is POSTed; the server stores it and answers with the next record's HTML, which replaces
// the record area. window.reviewTimings holds keypress-to-next-record-painted times (ms).
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const compare = document.body.dataset.mode === "compare";
  const filters = JSON.parse(document.body.dataset.filters || "{}");
  const timings = (window.reviewTimings = []);
  let shownAt = performance.now();
  let busy = false;
  let picking = false;

  const record = () => $("#record section.record");
  const at = () => Number(record().dataset.at || 0);
  const idx = () => Number(record().dataset.idx);
  const labels = () => JSON.parse(record().dataset.labels || "[]");
  const editor = () => $("#record .editor");

  function say(text, bad) {
    const box = $("#message");
    box.textContent = text || "";
    box.className = bad ? "error" : "";
  }

  function show(data, t0) {
    $("#record").innerHTML = data.html;
    if (data.progress) $("#progress").innerHTML = data.progress;
    if (data.query !== undefined) history.replaceState(null, "", "/?" + data.query);
    shownAt = performance.now();
    picking = false;
    if (t0 !== undefined) {
      requestAnimationFrame(() => {
        const ms = performance.now() - t0;
        timings.push(ms);
        document.body.dataset.lastRoundTrip = ms.toFixed(1);
      });
    }
  }

  async function call(method, url, body, t0) {
    if (busy) return;
    busy = true;
    try {
      const res = await fetch(url, {
        method,
        headers: body ? { "Content-Type": "application/json" } : {},
        body: body ? JSON.stringify(body) : undefined,
        credentials: "same-origin",
      });
      const data = await res.json().catch(() => ({ error: "the server answered " + res.status }));
      if (!res.ok) {
        say(data.error || data.detail || "refused (" + res.status + ")", true);
        return;
      }
      show(data, t0);
      say(data.message || "");
    } catch (err) {
      say("not saved: the server cannot be reached (" + err + ")", true);
    } finally {
      busy = false;
    }
  }

  const seconds = () => (performance.now() - shownAt) / 1000;

  function act(action, answer, t0) {
    if (!record().dataset.idx) return;
    call("POST", "/api/action", { idx: idx(), at: at(), action, answer, seconds: seconds(), filters }, t0);
  }

  function prefer(choice, t0) {
    if (!record().dataset.idx) return;
    call("POST", "/api/prefer", { idx: idx(), at: at(), choice, seconds: seconds(), filters }, t0);
  }

  function move(step, t0) {
    const size = Number(record().dataset.size || 0);
    if (!size) return;
    const next = (((at() + step) % size) + size) % size;
    const query = new URLSearchParams({ ...filters, at: String(next) });
    call("GET", "/api/record?" + query.toString(), null, t0);
  }

  function openEditor() {
    if (record().dataset.kind === "label") {
      picking = true;
      say("pick a label: 1-" + Math.min(9, labels().length) + " (Esc cancels)");
      return;
    }
    const box = editor();
    if (!box) return;
    box.hidden = false;
    $("#edit-box").focus();
  }

  function closeEditor() {
    const box = editor();
    if (box) box.hidden = true;
    picking = false;
    say("");
  }

  function toggleHelp() {
    $("#help").hidden = !$("#help").hidden;
  }

  const KEYS = compare
    ? { a: (t) => prefer("left", t), b: (t) => prefer("right", t), t: (t) => prefer("tie", t), x: (t) => prefer("both_bad", t) }
    : { a: (t) => act("accept", null, t), r: (t) => act("reject", null, t), e: () => openEditor() };
  Object.assign(KEYS, {
    n: (t) => move(1, t),
    p: (t) => move(-1, t),
    u: (t) => call("POST", "/api/undo", { at: at(), filters }, t),
    "?": () => toggleHelp(),
  });

  document.addEventListener("keydown", (ev) => {
    const t0 = performance.now();
    const typing = ev.target && (ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT");
    if (typing) {
      if (ev.key === "Escape") { ev.preventDefault(); ev.target.blur(); closeEditor(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && ev.target.id === "edit-box") {
        ev.preventDefault();
        act("edit", ev.target.value, t0);
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "Escape") { closeEditor(); $("#help").hidden = true; return; }
    if (!compare && /^[1-9]$/.test(ev.key) && record().dataset.kind === "label") {
      const label = labels()[Number(ev.key) - 1];
      if (label !== undefined) { ev.preventDefault(); act("edit", label, t0); }
      return;
    }
    const handler = KEYS[ev.key];
    if (handler) { ev.preventDefault(); handler(t0); }
  });

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button");
    if (!button || !$("#record").contains(button)) return;
    if (button.dataset.label !== undefined) return act("edit", button.dataset.label, performance.now());
    const key = button.dataset.key;
    if (key === "save") return act("edit", $("#edit-box").value, performance.now());
    if (key === "cancel") return closeEditor();
    if (key && KEYS[key]) KEYS[key](performance.now());
  });

  window.reviewPicking = () => picking;
})();

// authsec console: progressive enhancement only; every page works without it.
"use strict";
document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-copy]");
  if (!b) return;
  const el = document.getElementById(b.dataset.copy);
  if (!el || !navigator.clipboard) return;
  navigator.clipboard.writeText(el.textContent).then(
    () => { b.textContent = "Copied"; },
    () => { b.textContent = "Copy failed: select and copy by hand"; },
  );
});

// Live entry statuses on the workloads page (server-sent events).
const table = document.getElementById("workloads");
if (table && window.EventSource) {
  const es = new EventSource("/ui/workloads/events");
  es.addEventListener("entries", (ev) => {
    let known = 0;
    for (const e of JSON.parse(ev.data)) {
      const row = table.querySelector(`tr[data-entry="${CSS.escape(e.id)}"]`);
      if (!row) continue;
      known++;
      const s = row.querySelector(".status");
      if (s && s.textContent !== e.status) {
        s.textContent = e.status;
        s.className = `status status-${e.status}`;
      }
      const parent = row.querySelector(".parent");
      if (parent && e.parent && parent.textContent !== e.parent) {
        const code = document.createElement("code");
        code.textContent = e.parent;
        parent.replaceChildren(code);
      }
      const sel = row.querySelector(".selectors");
      if (sel && typeof e.selectors === "string" && sel.textContent !== e.selectors) {
        sel.textContent = e.selectors;
      }
    }
    const rows = table.querySelectorAll("tbody tr").length;
    const live = document.getElementById("live");
    if (live) live.textContent = known === rows ? "Live" : "Entries changed: reload to see them";
  });
  es.addEventListener("error", () => {
    const live = document.getElementById("live");
    if (live) live.textContent = "Live updates paused; reconnecting";
  });
}

// Live follow on the audit page: new matching records are added at the top.
const audit = document.getElementById("audit");
const auditLive = document.getElementById("live");
if (audit && auditLive && auditLive.dataset.from && window.EventSource) {
  const q = new URLSearchParams(auditLive.dataset.filter || "");
  q.set("from", auditLive.dataset.from);
  const es = new EventSource(`/ui/audit/events?${q}`);
  const body = audit.querySelector("tbody");
  auditLive.textContent = "Following. ";
  // The server resumes after the last event id on a reconnect; a record at or below the
  // newest one shown is still skipped, so none is listed twice.
  let newest = 0;
  es.addEventListener("record", (ev) => {
    const r = JSON.parse(ev.data);
    if (r.sequence <= newest) return;
    newest = r.sequence;
    const tr = document.createElement("tr");
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };
    tr.append(cell(r.sequence), cell(r.time));
    const kind = cell(""); const code = document.createElement("code"); code.textContent = r.kind; kind.append(code);
    tr.append(kind);
    const subject = cell("");
    if (r.href) { const a = document.createElement("a"); a.href = r.href; a.textContent = r.subject; subject.append(a); }
    else subject.textContent = r.subject;
    tr.append(subject, cell(r.actor), cell(`node ${r.via_node}`));
    body.prepend(tr);
    const empty = document.getElementById("audit-empty");
    if (empty) empty.remove();
  });
  es.addEventListener("open", () => { auditLive.textContent = "Following. "; });
  es.addEventListener("error", () => { auditLive.textContent = "Live follow paused; reconnecting. "; });
}

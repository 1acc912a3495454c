// Audit-trail times in the viewer's local time.
for (const e of document.querySelectorAll('[data-ts]')) e.textContent = new Date(e.dataset.ts * 1000).toLocaleString();

// Queue: local times, and keys j/k (move), Enter (open), n (older page).
for (const e of document.querySelectorAll('[data-ts]')) e.textContent = new Date(e.dataset.ts * 1000).toLocaleString();
const rows = [...document.querySelectorAll('#queue tbody tr[data-href]')];
let at = -1;
function select(i) {
  if (!rows.length) return;
  at = Math.max(0, Math.min(rows.length - 1, i));
  rows.forEach((r, k) => r.classList.toggle('selected', k === at));
  rows[at].scrollIntoView({block: 'nearest'});
}
document.addEventListener('keydown', (ev) => {
  if (ev.target.closest('input, select, textarea') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === 'j') select(at + 1);
  else if (ev.key === 'k') select(at - 1);
  else if (ev.key === 'Enter' && at >= 0) location.href = rows[at].dataset.href;
  else if (ev.key === 'n' && document.getElementById('older')) location.href = document.getElementById('older').href;
  else return;
  ev.preventDefault();
});
rows.forEach((r) => r.addEventListener('click', (ev) => { if (!ev.target.closest('a')) location.href = r.dataset.href; }));
// empty filters stay out of the URL (shareable, bookmarkable links)
document.getElementById('filters').addEventListener('submit', (ev) => {
  for (const e of ev.target.elements) if (e.name && !e.value) e.disabled = true;
});

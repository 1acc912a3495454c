// Queue: local times; list keys j/k (move), Enter (open), n (older page), g (grid view); grid keys: arrows or
// h/j/k/l move, x/Space select, Shift+move extends, A selects the page, Esc clears, d/f/u judge the selection.
'use strict';
for (const e of document.querySelectorAll('[data-ts]')) e.textContent = new Date(e.dataset.ts * 1000).toLocaleString();
const $ = (s) => document.getElementById(s);
const grid = $('grid');
const items = [...document.querySelectorAll(grid ? '#grid li.card' : '#queue tbody tr[data-href]')];
let at = -1;

function select(i) {
  if (!items.length) return;
  at = Math.max(0, Math.min(items.length - 1, i));
  items.forEach((r, k) => r.classList.toggle('selected', k === at));
  items[at].scrollIntoView({block: 'nearest'});
}

function columns() {  // cards per grid row: those on the first card's line
  return Math.max(1, items.filter((c) => c.offsetTop === items[0].offsetTop).length);
}

const picked = () => items.filter((c) => c.querySelector('.pick').checked);
function pick(card, on) {
  card.querySelector('.pick').checked = on;
  card.classList.toggle('picked', on);
  $('picked-count').textContent = `${picked().length} selected`;
}

function recount(from, to) {  // the counts line follows a verdict given here (a part moves between statuses)
  for (const [status, step] of [[from, -1], [to, 1]]) {
    let span = document.querySelector(`#counts [data-status="${status}"]`);
    if (!span) {
      span = Object.assign(document.createElement('span'), {className: `status ${status}`});
      span.dataset.status = status; span.dataset.n = '0';
      $('counts').insertBefore(span, $('counts').querySelector('small'));
      $('counts').insertBefore(document.createTextNode(' '), $('counts').querySelector('small'));
    }
    span.dataset.n = String(Number(span.dataset.n) + step);
    span.textContent = `${status.replace('_', ' ')} ${span.dataset.n}`;
  }
}

async function judge(verdict) {
  const cards = picked().length ? picked() : (at >= 0 ? [items[at]] : []);
  if (!cards.length) { $('bulk-message').textContent = 'select parts first (x)'; return; }
  const body = {ids: cards.map((c) => Number(c.dataset.id)), verdict,
                defect_type: verdict === 'defect' ? $('bulk-type').value : null};
  $('bulk-message').textContent = 'saving…';
  try {
    const res = await fetch('/api/reviews', {method: 'POST', body: JSON.stringify(body),
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': $('bulk').dataset.csrf}});
    const data = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    let failed = 0;
    for (const r of data.reviewed) {
      const card = items.find((c) => Number(c.dataset.id) === r.id);
      if (r.error) { failed += 1; continue; }
      const status = card.querySelector('.status');
      const before = [...status.classList].find((c) => c !== 'status');
      if (before && before !== r.review_status) recount(before, r.review_status);
      status.className = `status ${r.review_status}`;
      status.textContent = r.review_status.replace('_', ' ');
      pick(card, false);
    }
    $('bulk-message').textContent = `${data.reviewed.length - failed} part(s) marked ${verdict.replace('_', ' ')}` +
      (failed ? `, ${failed} refused (open them to see why)` : '');
  } catch (e) { $('bulk-message').textContent = `not saved: ${e.message}`; }
}

function move(step, extend) {
  const from = at;
  select(at < 0 ? 0 : at + step);
  if (grid && extend) { if (from >= 0) pick(items[from], true); pick(items[at], true); }
}

document.addEventListener('keydown', (ev) => {
  if (ev.target.closest('input, select, textarea') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key, cols = grid ? columns() : 1;
  const steps = grid ? {ArrowLeft: -1, h: -1, ArrowRight: 1, l: 1, ArrowUp: -cols, k: -cols, ArrowDown: cols, j: cols,
                        H: -1, L: 1, K: -cols, J: cols}
                     : {j: 1, k: -1, ArrowDown: 1, ArrowUp: -1};
  if (key in steps) move(steps[key], ev.shiftKey);
  else if (key === 'Enter' && at >= 0) location.href = items[at].dataset.href;
  else if (key === 'n' && $('older')) location.href = $('older').href;
  else if (key === 'g') location.href = $('toggle-view').href;
  else if (grid && (key === 'x' || key === ' ') && at >= 0) pick(items[at], !items[at].querySelector('.pick').checked);
  else if (grid && key === 'A') items.forEach((c) => pick(c, true));
  else if (grid && key === 'Escape') items.forEach((c) => pick(c, false));
  else if (grid && {d: 1, f: 1, u: 1}[key]) judge({d: 'defect', f: 'false_alarm', u: 'unsure'}[key]);
  else return;
  ev.preventDefault();
});

items.forEach((r, k) => r.addEventListener('click', (ev) => {
  if (ev.target.closest('a')) return;
  if (grid) { select(k); if (!ev.target.closest('input')) pick(r, !r.querySelector('.pick').checked);
              else pick(r, ev.target.checked); return; }
  location.href = r.dataset.href;
}));
if (grid) for (const b of document.querySelectorAll('#bulk button')) b.addEventListener('click', () => judge(b.dataset.verdict));
// empty filters stay out of the URL (shareable, bookmarkable links)
$('filters').addEventListener('submit', (ev) => {
  for (const e of ev.target.elements) if (e.name && !e.value) e.disabled = true;
});

// Part view: attention overlay (JET, opacity), erase/add brush with undo, re-score, verdicts, keyboard shortcuts.
'use strict';
const root = document.getElementById('part');
const id = root.dataset.id, csrf = root.dataset.csrf;
const $ = (s) => document.getElementById(s);
for (const e of document.querySelectorAll('[data-ts]')) e.textContent = new Date(e.dataset.ts * 1000).toLocaleString();
$('ts').textContent = new Date($('ts').dataset.ts * 1000).toLocaleString();

const MAX_EDIT = 1024;           // the edit grid's long side (frames larger than this are edited scaled down)
let A = null, W = 0, H = 0;      // the attention map being edited, [0, 1], W×H
let edited = false, mode = null, undo = [];
const heat = $('heat');

function jet(v) {
  const r = Math.min(Math.max(1.5 - Math.abs(4 * v - 3), 0), 1);
  const g = Math.min(Math.max(1.5 - Math.abs(4 * v - 2), 0), 1);
  const b = Math.min(Math.max(1.5 - Math.abs(4 * v - 1), 0), 1);
  return [255 * r, 255 * g, 255 * b];
}
const LUT = Array.from({length: 256}, (_, i) => jet(i / 255));

function render() {
  const ctx = heat.getContext('2d');
  const img = ctx.createImageData(W, H);
  for (let i = 0; i < W * H; i++) {
    const v = Math.round(255 * A[i]), c = LUT[v];
    img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2];
    img.data[4 * i + 3] = 90 + 0.65 * v;
  }
  ctx.putImageData(img, 0, 0);
  $('edited').textContent = edited ? 'map edited (saved with your verdict)' : '';
}

async function load(corrected) {
  const res = await fetch(`/parts/${id}/attention.png?corrected=${corrected ? 1 : 0}`);
  if (!res.ok) { $('message').textContent = 'no attention map for this part'; return; }
  const bmp = await createImageBitmap(await res.blob());
  const s = Math.min(1, MAX_EDIT / Math.max(bmp.width, bmp.height));
  W = Math.round(bmp.width * s); H = Math.round(bmp.height * s);
  heat.width = W; heat.height = H;
  const c = new OffscreenCanvas(W, H).getContext('2d');
  c.drawImage(bmp, 0, 0, W, H);
  const px = c.getImageData(0, 0, W, H).data;
  A = new Float32Array(W * H);
  for (let i = 0; i < W * H; i++) A[i] = px[4 * i] / 255;
  heat.dataset.ready = '1';      // the brush paints from here on (a stroke before it finds no map)
  render();
}

function toPNG() {
  const c = document.createElement('canvas');
  c.width = W; c.height = H;
  const ctx = c.getContext('2d'), img = ctx.createImageData(W, H);
  for (let i = 0; i < W * H; i++) {
    const v = Math.round(255 * A[i]);
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c.toDataURL('image/png');
}

function setMode(m) {
  mode = mode === m ? null : m;
  for (const b of ['erase', 'add']) $(b) && $(b).classList.toggle('active', mode === b);
  heat.classList.toggle('painting', mode !== null);
}

function paint(ev) {
  const rect = heat.getBoundingClientRect();
  const x = (ev.clientX - rect.left) * W / rect.width, y = (ev.clientY - rect.top) * H / rect.height;
  const r = Number($('brush').value) * W / Number($('image').getAttribute('width')) / 2;   // brush size in frame px
  const x0 = Math.max(0, Math.floor(x - r)), x1 = Math.min(W - 1, Math.ceil(x + r));
  const y0 = Math.max(0, Math.floor(y - r)), y1 = Math.min(H - 1, Math.ceil(y + r));
  for (let j = y0; j <= y1; j++) for (let i = x0; i <= x1; i++) {
    const d = Math.hypot(i - x, j - y) / Math.max(r, 0.5);
    if (d > 1) continue;
    const w = d < 0.7 ? 1 : (1 - d) / 0.3;         // hard core, soft edge
    const k = j * W + i;
    A[k] = mode === 'erase' ? A[k] * (1 - w) : A[k] + (1 - A[k]) * w;
  }
  edited = true;
  requestAnimationFrame(render);
}

if (heat) {
  load(true);
  heat.addEventListener('pointerdown', (ev) => {
    if (!mode || !A) return;
    undo.push(A.slice()); if (undo.length > 30) undo.shift();
    heat.setPointerCapture(ev.pointerId); paint(ev);
  });
  heat.addEventListener('pointermove', (ev) => { if (mode && heat.hasPointerCapture(ev.pointerId)) paint(ev); });
  $('opacity').addEventListener('input', () => { heat.style.opacity = $('opacity').value / 100; });
  heat.style.opacity = $('opacity').value / 100;
  $('brush').addEventListener('input', () => { $('brush-size').textContent = $('brush').value; });
  $('erase').addEventListener('click', () => setMode('erase'));
  $('add').addEventListener('click', () => setMode('add'));
  $('undo').addEventListener('click', () => { if (undo.length) { A = undo.pop(); edited = undo.length > 0 || edited; render(); } });
  $('reset').addEventListener('click', async () => { undo = []; await load(false); edited = true; render(); });
  $('show-boxes').addEventListener('change', () => { $('boxes').style.display = $('show-boxes').checked ? '' : 'none'; });
}

async function post(path, body) {
  const res = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                                 body: JSON.stringify(body)});
  const data = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function drawAfter(boxes) {      // the corrected map's boxes, dashed, beside the line's (solid)
  const svg = $('boxes');
  for (const e of svg.querySelectorAll('rect.after')) e.remove();
  for (const b of boxes) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    e.setAttribute('class', 'after');
    e.setAttribute('x', b.x0); e.setAttribute('y', b.y0);
    e.setAttribute('width', b.x1 - b.x0); e.setAttribute('height', b.y1 - b.y0);
    svg.appendChild(e);
  }
  $('box-legend').hidden = false;
}

async function rescore() {
  if (!A || !$('rescore')) return;
  $('message').textContent = 're-scoring…';
  try {
    const r = await post(`/api/parts/${id}/rescore`, {corrected: toPNG()});
    const body = $('rescore-result').querySelector('tbody');
    body.innerHTML = '';
    for (const [k, v] of Object.entries(r.after.probs)) {
      const tr = body.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = r.before.probs[k].toFixed(4);
      tr.insertCell().textContent = v.toFixed(4);
    }
    const tr = body.insertRow(); tr.className = 'total';
    tr.insertCell().textContent = 'defect score';
    tr.insertCell().textContent = r.before.defect_score.toFixed(4);
    const cell = tr.insertCell(); cell.id = 'rescored'; cell.textContent = `${r.after.defect_score.toFixed(4)} (${r.after.verdict})`;
    const nb = body.insertRow(); nb.className = 'box-count';
    nb.insertCell().textContent = 'boxes';
    nb.insertCell().textContent = r.before.boxes.length;
    const na = nb.insertCell(); na.id = 'rescored-boxes'; na.textContent = r.after.boxes.length;
    drawAfter(r.after.boxes);
    $('rescore-result').hidden = false;
    $('rescore-note').textContent = r.model_version === r.part_model_version ? '' :
      `re-scored with model ${r.model_version}; the line used ${r.part_model_version}`;
    $('message').textContent = '';
  } catch (e) { $('message').textContent = `re-score failed: ${e.message}`; }
}

async function judge(verdict) {
  const body = {verdict, comment: $('comment').value,
                defect_type: verdict === 'defect' ? $('defect-type').value : null,
                corrected: edited && A ? toPNG() : null};
  $('message').textContent = 'saving…';
  try {
    const r = await post(`/api/parts/${id}/review`, body);
    const status = {defect: 'confirmed', false_alarm: 'false alarm', unsure: 'unsure'}[verdict];
    $('status').textContent = status; $('status').className = `status ${status.replace(' ', '_')}`;
    $('history').innerHTML = '';
    for (const v of r.history) {
      const li = document.createElement('li');
      li.textContent = `${new Date(v.ts * 1000).toLocaleString()} ${v.reviewer}: ${v.verdict.replace('_', ' ')}` +
        (v.defect_type ? ` (${v.defect_type})` : '') + (v.corrected ? ', map corrected' : '') + (v.comment ? `: “${v.comment}”` : '');
      $('history').appendChild(li);
    }
    $('message').textContent = `saved: ${status}`;
    edited = false; if (A) render();
    if (root.dataset.older) setTimeout(() => { location.href = root.dataset.older; }, 400);
  } catch (e) { $('message').textContent = `not saved: ${e.message}`; }
}

$('confirm').addEventListener('click', () => judge('defect'));
$('false-alarm').addEventListener('click', () => judge('false_alarm'));
$('unsure').addEventListener('click', () => judge('unsure'));
if ($('rescore')) $('rescore').addEventListener('click', rescore);

document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') { ev.target.blur && ev.target.blur(); return; }
  if (ev.target.closest('input, select, textarea') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const types = $('defect-type');
  const act = {
    d: () => judge('defect'), f: () => judge('false_alarm'), u: () => judge('unsure'), r: rescore,
    j: () => root.dataset.older && (location.href = root.dataset.older),
    k: () => root.dataset.newer && (location.href = root.dataset.newer),
    q: () => { location.href = document.querySelector('.neighbours a[href^="/?"]').href; },
    e: () => heat && setMode('erase'), a: () => heat && setMode('add'),
    z: () => heat && $('undo').click(), b: () => heat && $('show-boxes').click(),
    '[': () => { if (heat) { $('brush').value = Math.max(2, $('brush').value / 1.25); $('brush').dispatchEvent(new Event('input')); } },
    ']': () => { if (heat) { $('brush').value = Math.min(200, $('brush').value * 1.25); $('brush').dispatchEvent(new Event('input')); } },
    c: () => $('comment').focus(),
  }[ev.key];
  if (act) { ev.preventDefault(); act(); return; }
  const n = Number(ev.key);
  if (n >= 1 && n <= 9 && n <= types.options.length - 1) { types.selectedIndex = n - 1; ev.preventDefault(); }
});

// #/runs: recent runs, newest first, kept current by the live stream (a run event updates or
// adds its row; no polling). Filters: period, server, state, schedule.

import { get } from './api.js';
import * as live from './live.js';
import { h, stateBadge, timeEl, runLink, runWhat, runOrigin, runProgress, span, errorBanner, resultText } from './ui.js';

const STATES = ['', 'pending', 'dispatched', 'running', 'held', 'succeeded', 'completed_with_errors', 'failed', 'skipped', 'cancelled', 'unknown'];
const PERIODS = ['1h', '6h', '24h', '7d'];

function matches(r, f) {
  if (f.agent && r.agent !== f.agent) return false;
  if (f.state && r.state !== f.state) return false;
  if (f.schedule && r.schedule !== f.schedule) return false;
  return true;
}

function runRow(r) {
  return h('tr', { 'data-testid': 'run-row', dataset: { run: r.id, state: r.state, agent: r.agent } },
    h('td', { 'data-label': 'Run' }, runLink(r.id)),
    h('td', { 'data-label': 'Server' }, r.agent),
    h('td', { 'data-label': 'What' }, runWhat(r), h('div', { class: 'small' }, runOrigin(r))),
    h('td', { 'data-label': 'State' }, stateBadge(r.state), r.cancel_requested && !['cancelled'].includes(r.state) ? h('div', { class: 'small' }, 'cancel requested') : null),
    h('td', { 'data-label': 'Progress', 'data-testid': 'run-progress' }, runProgress(r)),
    h('td', { 'data-label': 'Result' }, resultText(r.result)),
    h('td', { 'data-label': 'Started' }, timeEl(r.started_at || r.created_at)),
    h('td', { 'data-label': 'Duration' }, r.started_at ? span(r.started_at, r.finished_at) : '—'));
}

export function render(el, route, _ctx) {
  document.title = 'Runs · syncfleet';
  const p = route.params;
  const f = {
    since: PERIODS.includes(p.get('since')) ? p.get('since') : '6h',
    agent: p.get('agent') || '',
    state: p.get('state') || '',
    schedule: p.get('schedule') || '',
  };
  const go = () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    location.hash = `#/runs?${q}`;
  };
  const sel = (id, text, options, value, key) => h('label', { for: id }, text, ' ',
    h('select', { id, onchange: (e) => { f[key] = e.target.value; go(); } },
      options.map((o) => h('option', { value: o, selected: o === value }, o ? o.replace(/_/g, ' ') : 'any'))));
  const agentInput = h('input', { id: 'filter', type: 'search', value: f.agent, placeholder: 'server', 'aria-label': 'Server name', size: 10 });
  const filters = h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); f.agent = agentInput.value.trim(); go(); } },
    sel('f-since', 'Since', PERIODS, f.since, 'since'),
    sel('f-state', 'State', STATES, f.state, 'state'),
    h('label', { for: 'filter' }, 'Server ', agentInput),
    f.schedule ? h('span', { class: 'chip' }, `schedule ${f.schedule}`) : null,
    h('button', { type: 'submit' }, 'Filter'));
  const tbody = h('tbody', {});
  const status = h('p', { class: 'summary', 'aria-live': 'polite' }, 'Loading runs…');
  el.append(h('h1', {}, 'Runs'), filters, status,
    h('div', { class: 'scroll' }, h('table', { class: 'grid runs', 'data-testid': 'runs-table' },
      h('caption', { class: 'sr-only' }, 'Runs, newest first'),
      h('thead', {}, h('tr', {}, ['Run', 'Server', 'What', 'State', 'Progress', 'Result', 'Started', 'Duration'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody)));

  let runs = [];
  let disposed = false;
  const rows = new Map(); // id -> { json, tr }: unchanged runs keep their row (and focus)
  function draw() {
    const seen = new Set();
    let prev = null;
    for (const r of runs) {
      seen.add(r.id);
      const json = JSON.stringify(r);
      let entry = rows.get(r.id);
      if (!entry || entry.json !== json) {
        const tr = runRow(r);
        if (entry) entry.tr.replaceWith(tr);
        entry = { json, tr };
        rows.set(r.id, entry);
      }
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== entry.tr) tbody.insertBefore(entry.tr, want);
      prev = entry.tr;
    }
    for (const [id, entry] of rows) {
      if (!seen.has(id)) {
        entry.tr.remove();
        rows.delete(id);
      }
    }
    const active = runs.filter((r) => ['pending', 'dispatched', 'running'].includes(r.state)).length;
    const held = runs.filter((r) => r.state === 'held').length;
    status.textContent = `${runs.length} run${runs.length === 1 ? '' : 's'} in the last ${f.since}` +
      (active ? ` · ${active} in progress` : '') + (held ? ` · ${held} held, waiting for approval` : '');
  }
  async function load() {
    const q = new URLSearchParams({ since: f.since, limit: '200' });
    if (f.agent) q.set('agent', f.agent);
    if (f.state) q.set('state', f.state);
    if (f.schedule) q.set('schedule', f.schedule);
    try {
      const data = await get(`/api/runs?${q}`);
      if (disposed) return;
      runs = data.runs || [];
      draw();
    } catch (e) {
      if (!disposed && e.status !== 401) errorBanner(e, 'Reading runs');
    }
  }
  const offs = [
    live.on('run', (r) => {
      const i = runs.findIndex((x) => x.id === r.id);
      if (i >= 0) {
        runs[i] = r;
        draw();
      } else if (matches(r, f)) {
        runs.unshift(r);
        draw();
      }
    }),
    live.on('resync', load),
  ];
  load();
  return { dispose() { disposed = true; offs.forEach((x) => x()); } };
}


// #/schedules: every schedule with its next fire times in its own time zone, saturation and
// the interval advice, counters (fired, skipped, missed, held, ...), recent runs, and
// pause/resume with a note for operators.

import { get, post, seg } from './api.js';
import * as live from './live.js';
import { h, timeEl, zoned, dur, errorBanner, infoBanner, confirmAction, actionButton, stateBadge, runLink, label } from './ui.js';

// The counters an operator asks about first; the others follow when non-zero.
const MAIN_COUNTERS = [
  ['fired', 'fired'],
  ['skipped_overlap', 'skipped (overlap)'],
  ['missed_catchup', 'missed'],
  ['held', 'held'],
];

function trigger(spec) {
  const t = (spec && spec.trigger) || {};
  if (t.every) return `every ${t.every}${t.phase ? ` (phase ${t.phase})` : ''}`;
  if (t.cron) return `cron ${t.cron}`;
  return Object.entries(t).map(([k, v]) => `${k} ${v}`).join(', ') || '—';
}

function saturationCell(sc) {
  const sat = typeof sc.saturation === 'number' ? sc.saturation : 0;
  const pct = Math.round(sat * 100);
  const cls = sat >= 1 ? 'bad' : sat >= 0.7 ? 'warn' : 'ok';
  const sym = sat >= 1 ? '✗' : sat >= 0.7 ? '⚠' : '✓';
  return h('div', { 'data-testid': 'schedule-saturation' },
    h('meter', { min: 0, max: 1.5, low: 0.7, high: 1, optimum: 0.2, value: Math.min(1.5, sat), 'aria-label': `saturation ${pct}%` }),
    ' ', h('span', { class: `badge ${cls}` }, `${sym} ${pct}%`),
    sc.warning ? h('div', { class: 'small warn-text' }, sc.warning) : null,
    sc.advice && sc.advice.summary ? h('div', { class: 'small', 'data-testid': 'schedule-advice' }, 'advice: ', sc.advice.summary) : null);
}

function countersCell(sc) {
  const c = sc.counters || {};
  const main = MAIN_COUNTERS.map(([k, t]) => h('li', {}, h('span', { class: 'num' }, String(c[k] || 0)), ` ${t}`));
  const rest = Object.entries(c).filter(([k, v]) => v && !MAIN_COUNTERS.some(([m]) => m === k))
    .map(([k, v]) => h('li', { class: 'small' }, h('span', { class: 'num' }, String(v)), ` ${label(k)}`));
  return h('ul', { class: 'plain counters-list', 'data-testid': 'schedule-counters' }, main, rest);
}

function nextCell(sc) {
  const next = (sc.next || []).slice(0, 3);
  if (sc.pause && sc.pause.paused) return h('span', { class: 'muted' }, 'paused: fires nothing');
  if (!next.length) return h('span', { class: 'muted' }, '—');
  return h('div', {}, h('ol', { class: 'plain' }, next.map((t) => h('li', {}, h('time', { datetime: t, title: t }, zoned(t, sc.time_zone))))),
    h('div', { class: 'small' }, `time zone ${sc.time_zone || 'UTC'}`));
}

function recentCell(sc) {
  const recent = (sc.recent || []).slice(0, 3);
  if (!recent.length) return h('span', { class: 'muted' }, 'none yet');
  return h('ul', { class: 'plain' }, recent.map((r) => h('li', {}, stateBadge(r.state), ' ', runLink(r.run_id), ` ${r.agent}`,
    r.duration_ms ? ` · ${dur(r.duration_ms)}` : '', r.lateness_ms !== null && r.lateness_ms !== undefined ? ` · late ${dur(r.lateness_ms)}` : '')));
}

export function render(el, _route, ctx) {
  document.title = 'Schedules · syncfleet';
  const canAct = ctx.session.actions && ctx.session.actions.pause_schedule;
  const tbody = h('tbody', {});
  const summary = h('p', { class: 'summary' }, 'Loading schedules…');
  el.append(h('h1', {}, 'Schedules'), summary,
    h('div', { class: 'scroll' }, h('table', { class: 'grid schedules', 'data-testid': 'schedules-table' },
      h('caption', { class: 'sr-only' }, 'Schedules'),
      h('thead', {}, h('tr', {}, ['Schedule', 'State', 'Next fires', 'Saturation and advice', 'Counters', 'Recent runs', canAct ? 'Actions' : null]
        .filter(Boolean).map((t) => h('th', { scope: 'col' }, t)))),
      tbody)));
  let disposed = false;

  async function toggle(sc, btn) {
    const paused = sc.pause && sc.pause.paused;
    const verb = paused ? 'resume' : 'pause';
    const note = await confirmAction(paused ? `Resume ${sc.name}` : `Pause ${sc.name}`,
      paused ? `${sc.name} fires again at its next time.` : `${sc.name} fires no runs until resumed; runs in progress go on.`,
      paused ? 'Resume' : 'Pause');
    if (note === null) return;
    btn.disabled = true;
    try {
      await post(`/api/schedules/${seg(sc.name)}/${verb}`, { note });
      infoBanner(`${sc.name} ${paused ? 'resumed' : 'paused'}`);
      load();
    } catch (e) {
      errorBanner(e, `${paused ? 'Resume' : 'Pause'} ${sc.name}`);
    } finally {
      btn.disabled = false;
    }
  }

  function row(sc) {
    const spec = sc.spec || {};
    const p = sc.pause || {};
    const cells = [
      h('th', { scope: 'row', 'data-label': 'Schedule' }, h('span', { class: 'name' }, sc.name),
        h('div', { class: 'small' }, spec.sequence ? `sequence ${spec.sequence} · ` : '', trigger(spec)),
        h('div', { class: 'small' }, 'targets: ', (sc.targets || []).join(', ') || 'none now'),
        h('div', { class: 'small' }, h('a', { href: `#/runs?since=24h&schedule=${encodeURIComponent(sc.name)}` }, 'its runs'))),
      h('td', { 'data-label': 'State' }, p.paused
        ? h('div', {}, h('span', { class: 'badge held' }, '‖ paused'), h('div', { class: 'small' }, p.by ? `by ${p.by} ` : '', p.at ? ['at ', timeEl(p.at)] : '', p.note ? ` — “${p.note}”` : ''))
        : h('span', { class: 'badge ok' }, '▶ active')),
      h('td', { 'data-label': 'Next fires' }, nextCell(sc)),
      h('td', { 'data-label': 'Saturation' }, saturationCell(sc)),
      h('td', { 'data-label': 'Counters' }, countersCell(sc)),
      h('td', { 'data-label': 'Recent runs' }, recentCell(sc)),
    ];
    if (canAct) {
      const btn = actionButton(p.paused ? 'Resume…' : 'Pause…', p.paused ? 'resume-schedule-button' : 'pause-schedule-button', () => toggle(sc, btn));
      btn.setAttribute('aria-label', `${p.paused ? 'Resume' : 'Pause'} schedule ${sc.name}`);
      cells.push(h('td', { 'data-label': 'Actions' }, btn));
    }
    return h('tr', { 'data-testid': 'schedule-row', dataset: { schedule: sc.name, paused: p.paused ? 'true' : 'false' } }, cells);
  }

  async function load() {
    try {
      const data = await get('/api/schedules');
      if (disposed) return;
      const list = (data.schedules || []).slice().sort((a, b) => a.name.localeCompare(b.name));
      tbody.replaceChildren(...list.map(row));
      const paused = list.filter((x) => x.pause && x.pause.paused).length;
      const saturated = list.filter((x) => x.saturation >= 1).length;
      summary.textContent = `${list.length} schedule${list.length === 1 ? '' : 's'}` + (paused ? ` · ${paused} paused` : '') + (saturated ? ` · ${saturated} saturated` : '');
    } catch (e) {
      if (!disposed && e.status !== 401) errorBanner(e, 'Reading schedules');
    }
  }
  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; load(); }, 3000);
  };
  const offs = [live.on('run', (r) => { if (r.schedule) soon(); }), live.on('resync', soon)];
  load();
  return { dispose() { disposed = true; clearTimeout(timer); offs.forEach((f) => f()); } };
}

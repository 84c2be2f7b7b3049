// #/timeline?since=1h|6h|24h: per server, runs and their steps on one time axis, drawn as SVG.
// Runs that do not overlap share a lane; a second lane appears only when runs overlap, and
// the overlap is drawn as a hatched band labelled "overlap" (or "2 syncs at once" when two
// synchronizations ran together). Synchronization steps are hatched and lettered "S"
// (imports "I", exports "E"), never told apart by colour only; a lock wait is a dotted line
// from when the step started waiting to when it ran, labelled with how long. Below each chart
// the waits and overlaps are listed as text. Live: run events re-read the timeline (at most
// every 2 s).

import { get } from './api.js';
import * as live from './live.js';
import { h, s, time, dur, ms, errorBanner, shortId, label } from './ui.js';

const PERIODS = ['1h', '6h', '24h'];
const KIND_LETTER = { import: 'I', sync: 'S', export: 'E', other: '·' };
const KIND_NAME = { import: 'import', sync: 'synchronization', export: 'export', other: 'other step' };
const LANE = 36;
const AXIS = 22;
const TICKS = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 2 * 60e3, 5 * 60e3, 10 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 2 * 3600e3, 3 * 3600e3, 6 * 3600e3];

/** The patterns the bars refer to, once per page (url(#…) works across inline SVGs). */
function defs() {
  return s('svg', { width: 0, height: 0, class: 'defs', 'aria-hidden': 'true', focusable: 'false' },
    s('defs', {},
      s('pattern', { id: 'sync-hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
        s('rect', { width: 6, height: 6, class: 'hatch-bg' }),
        s('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'hatch-line' })),
      s('pattern', { id: 'overlap-hatch', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(-45)' },
        s('line', { x1: 0, y1: 0, x2: 0, y2: 8, class: 'overlap-line' }))));
}

/** Steps' time ranges of a run (a running step ends now/at `until`). */
function stepRange(st, until) {
  const a = ms(st.started_at);
  const f = st.finished_at ? ms(st.finished_at) : until;
  const w = st.waiting_since ? ms(st.waiting_since) : NaN;
  return { a, f, w };
}

function runRange(r, until) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const st of r.steps) {
    const { a, f, w } = stepRange(st, until);
    lo = Math.min(lo, Number.isNaN(w) ? a : Math.min(a, w));
    hi = Math.max(hi, f);
  }
  return [lo, hi];
}

/** Greedy lanes: a run goes in the first lane whose last run ended before it began. */
function lanesOf(runs, until) {
  const ends = [];
  const placed = [];
  const sorted = runs.map((r) => ({ r, range: runRange(r, until) })).sort((x, y) => x.range[0] - y.range[0]);
  for (const it of sorted) {
    let lane = ends.findIndex((e) => e <= it.range[0]);
    if (lane < 0) {
      lane = ends.length;
      ends.push(0);
    }
    ends[lane] = it.range[1];
    placed.push({ ...it, lane });
  }
  return { placed, lanes: Math.max(1, ends.length) };
}

function ticks(t0, t1, width) {
  const want = Math.max(2, Math.floor(width / 110));
  const step = TICKS.find((t) => (t1 - t0) / t <= want) || TICKS[TICKS.length - 1];
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

function hm(t) {
  const d = new Date(t);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}${(t % 60e3) ? ':' + String(d.getSeconds()).padStart(2, '0') : ''}`;
}

function serverChart(server, t0, t1, width) {
  const runs = server.runs.filter((r) => r.steps && r.steps.length);
  const { placed, lanes } = lanesOf(runs, t1);
  const height = AXIS + lanes * LANE + 6;
  const x = (t) => Math.max(0, Math.min(width, ((t - t0) / (t1 - t0)) * width));
  const svg = s('svg', {
    class: 'timeline', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `Timeline of ${server.agent}: ${runs.length} runs, ${server.overlaps.length} overlaps`,
  });
  // Axis.
  svg.appendChild(s('line', { x1: 0, y1: AXIS - 4, x2: width, y2: AXIS - 4, class: 'axis' }));
  for (const t of ticks(t0, t1, width)) {
    const tx = x(t);
    svg.appendChild(s('line', { x1: tx, y1: AXIS - 8, x2: tx, y2: height, class: 'tick' }));
    svg.appendChild(s('text', { x: tx + 2, y: 11, class: 'tick-label' }, hm(t)));
  }
  // Overlaps behind the runs.
  for (const o of server.overlaps || []) {
    const ox = x(ms(o.from));
    const ow = Math.max(3, x(ms(o.to)) - ox);
    const what = o.synchronizations ? '2 syncs at once!' : 'overlap';
    svg.appendChild(s('g', { class: `overlap${o.synchronizations ? ' syncs' : ''}`, 'data-testid': 'timeline-overlap' },
      s('title', {}, `${what}: runs ${o.runs.map(shortId).join(' and ')} from ${time(o.from)} to ${time(o.to)}`),
      s('rect', { x: ox, y: AXIS - 4, width: ow, height: height - AXIS + 4, class: 'overlap-band' }),
      s('text', { x: ox + 2, y: height - 2, class: 'overlap-label' }, o.synchronizations ? '!! 2 syncs' : '^ overlap')));
  }
  const labelEnd = [];
  for (const { r, range, lane } of placed) {
    const y = AXIS + lane * LANE;
    const g = s('a', { href: `#/runs/${encodeURIComponent(r.id)}`, class: `run state-${r.state}`, 'data-testid': 'timeline-run', dataset: { run: r.id } },
      s('title', {}, `run ${shortId(r.id)} ${r.sequence || ''} ${label(r.state)} ${r.result || ''}`));
    const rx = x(range[0]);
    const rw = Math.max(2, x(range[1]) - rx);
    g.appendChild(s('rect', { x: rx, y: y + 13, width: rw, height: 18, class: 'run-extent' }));
    // A label only where it does not run into the previous one of its lane (10px font: about
    // 6px a character); the run's <title> and the lists below name every run anyway.
    const what = r.sequence || (r.steps.length === 1 ? `${r.steps[0].ma}: ${r.steps[0].profile}` : `${r.steps.length} steps`);
    const full = `${shortId(r.id)} ${what} ${label(r.state)}`;
    const lx = Math.min(rx, width - full.length * 6);
    for (const text of [full, shortId(r.id)]) {
      const w = text.length * 6;
      const at = text === full ? lx : Math.min(rx, width - w);
      if (at >= (labelEnd[lane] || 0)) {
        g.appendChild(s('text', { x: at, y: y + 10, class: 'run-label' }, text));
        labelEnd[lane] = at + w + 6;
        break;
      }
    }
    for (const st of r.steps) {
      const { a, f, w } = stepRange(st, t1);
      if (!Number.isNaN(w) && w < a) {
        const wx = x(w);
        const ww = x(a) - wx;
        g.appendChild(s('g', { class: 'wait', 'data-testid': 'timeline-wait' },
          s('title', {}, `step ${st.index + 1} ${st.ma}: ${st.profile} waited ${dur(st.waited_ms || a - w)}: ${st.wait_reason || ''}`),
          s('line', { x1: wx, y1: y + 22, x2: wx + ww, y2: y + 22, class: 'wait-line' }),
          s('line', { x1: wx, y1: y + 16, x2: wx, y2: y + 28, class: 'wait-line' }),
          ww > 44 ? s('text', { x: wx + 3, y: y + 20, class: 'wait-label' }, `wait ${dur(st.waited_ms || a - w)}`) : null));
      }
      const bx = x(a);
      const bw = Math.max(2, x(f) - bx);
      const kind = KIND_LETTER[st.kind] ? st.kind : 'other';
      const bar = s('g', { class: `bar ${kind}${st.finished_at ? '' : ' live'}`, 'data-testid': 'timeline-bar', dataset: { run: r.id, step: st.index, kind } },
        s('title', {}, `${st.ma}: ${st.profile} (${KIND_NAME[kind]}) ${time(st.started_at)} → ${st.finished_at ? time(st.finished_at) : 'running'}, ${dur(f - a)}`),
        s('rect', { x: bx, y: y + 14, width: bw, height: 16 }));
      if (bw >= 12) bar.appendChild(s('text', { x: bx + bw / 2, y: y + 26, class: 'bar-letter', 'text-anchor': 'middle' }, KIND_LETTER[kind]));
      g.appendChild(bar);
    }
    svg.appendChild(g);
  }
  return svg;
}

function notes(server) {
  const items = [];
  const waits = [];
  for (const r of server.runs) {
    for (const st of r.steps) {
      if (st.waited_ms > 0 || (st.waiting_since && st.wait_reason)) {
        waits.push(h('li', { 'data-testid': 'timeline-wait-note' }, h('span', { class: 'badge wait' }, '◷ wait'), ' ',
          h('a', { href: `#/runs/${encodeURIComponent(r.id)}`, class: 'mono' }, shortId(r.id)),
          ` step ${st.index + 1} ${st.ma}: ${st.profile} waited ${dur(st.waited_ms)}${st.wait_reason ? ': ' + st.wait_reason : ''}`));
      }
    }
  }
  for (const o of server.overlaps || []) {
    items.push(h('li', { 'data-testid': 'timeline-overlap-note' },
      h('span', { class: `badge ${o.synchronizations ? 'bad' : 'warn'}` }, o.synchronizations ? '!! two synchronizations at once' : '^ overlap'),
      ` runs ${o.runs.map(shortId).join(' and ')} from ${time(o.from)} to ${time(o.to)}`));
  }
  const out = [];
  if (items.length) out.push(h('ul', { class: 'plain notes' }, items));
  if (waits.length) {
    const total = server.runs.reduce((n, r) => n + r.steps.reduce((m, st) => m + (st.waited_ms || 0), 0), 0);
    out.push(h('details', { class: 'notes' }, h('summary', {}, `◷ ${waits.length} lock wait${waits.length === 1 ? '' : 's'}, ${dur(total)} in all`),
      h('ul', { class: 'plain notes' }, waits)));
  }
  return out;
}

function legend() {
  const sw = (cls, letter, text) => h('li', {}, s('svg', { width: 26, height: 16, 'aria-hidden': 'true' },
    s('g', { class: `bar ${cls}` }, s('rect', { x: 1, y: 1, width: 24, height: 14 }),
      s('text', { x: 13, y: 12, class: 'bar-letter', 'text-anchor': 'middle' }, letter))), ` ${text}`);
  return h('ul', { class: 'legend', 'aria-label': 'Legend' },
    sw('import', 'I', 'import'), sw('sync', 'S', 'synchronization (hatched)'), sw('export', 'E', 'export'), sw('other', '·', 'other step'),
    h('li', {}, s('svg', { width: 26, height: 16, 'aria-hidden': 'true' }, s('line', { x1: 1, y1: 8, x2: 25, y2: 8, class: 'wait-line' })), ' waiting for the server (lock wait)'),
    h('li', {}, s('svg', { width: 26, height: 16, 'aria-hidden': 'true' }, s('rect', { x: 1, y: 1, width: 24, height: 14, class: 'overlap-band' })), ' runs overlapping (^), two synchronizations at once (!!)'));
}

export function render(el, route, _ctx) {
  document.title = 'Timeline · syncfleet';
  const since = PERIODS.includes(route.params.get('since')) ? route.params.get('since') : '6h';
  const zoom = route.params.get('zoom') === 'activity';
  const link = (p, z) => `#/timeline?since=${p}${z ? '&zoom=activity' : ''}`;
  const periodNav = h('nav', { class: 'segmented', 'aria-label': 'Period' },
    PERIODS.map((p) => h('a', { href: link(p, zoom), 'aria-current': p === since ? 'true' : null, 'data-testid': `period-${p}` }, `last ${p}`)),
    h('a', { href: link(since, !zoom), class: 'zoom', 'aria-pressed': zoom ? 'true' : 'false', 'data-testid': 'zoom-activity' }, zoom ? '⤢ whole period' : '⤡ zoom to activity'));
  const body = h('div', { class: 'timeline-body' }, h('p', { class: 'muted' }, 'Loading the timeline…'));
  el.append(defs(), h('h1', {}, 'Timeline'), periodNav, legend(), body);
  let data = null;
  let disposed = false;

  function draw() {
    if (!data) return;
    const until = ms(data.until);
    let t0 = ms(data.since);
    let t1 = until;
    const servers = (data.servers || []).filter((sv) => sv.runs && sv.runs.length);
    if (zoom) {
      let lo = Infinity;
      for (const sv of servers) for (const r of sv.runs) lo = Math.min(lo, runRange(r, until)[0]);
      if (Number.isFinite(lo)) t0 = Math.max(t0, lo - Math.max(2000, (until - lo) * 0.03));
    }
    const width = Math.max(320, Math.floor(body.clientWidth || el.clientWidth || 900) - 2);
    const parts = [h('p', { class: 'summary' }, `${time(new Date(t0).toISOString())} → ${time(data.until)} · ${servers.length} server${servers.length === 1 ? '' : 's'} with runs`)];
    if (!servers.length) parts.push(h('p', { class: 'muted', 'data-testid': 'timeline-empty' }, `No steps ran in the last ${since}.`));
    for (const sv of servers) {
      parts.push(h('section', { class: 'tl-server', 'data-testid': 'timeline-server', dataset: { agent: sv.agent } },
        h('h2', {}, sv.agent, ' ', h('span', { class: 'small muted' }, `${sv.runs.length} run${sv.runs.length === 1 ? '' : 's'}`,
          sv.overlaps.length ? ` · ${sv.overlaps.length} overlap${sv.overlaps.length === 1 ? '' : 's'}` : '')),
        serverChart(sv, t0, t1, width), notes(sv)));
    }
    body.replaceChildren(...parts);
  }

  async function load() {
    try {
      const d = await get(`/api/timeline?since=${since}`);
      if (disposed) return;
      data = d;
      draw();
    } catch (e) {
      if (!disposed && e.status !== 401) errorBanner(e, 'Reading the timeline');
    }
  }
  let pending = null;
  let last = 0;
  const throttled = () => {
    if (pending) return;
    const wait = Math.max(0, 2000 - (Date.now() - last));
    pending = setTimeout(() => {
      pending = null;
      last = Date.now();
      load();
    }, wait);
  };
  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 150);
  };
  window.addEventListener('resize', onResize);
  const offs = [live.on('run', throttled), live.on('resync', throttled)];
  load();
  return {
    dispose() {
      disposed = true;
      clearTimeout(pending);
      clearTimeout(resizeTimer);
      window.removeEventListener('resize', onResize);
      offs.forEach((f) => f());
    },
  };
}

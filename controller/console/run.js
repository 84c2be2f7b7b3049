// #/runs/<id>: one run — its steps with the engine's result verbatim, counters (staging,
// inbound, outbound per target MA, export), object errors and connection incidents, timings,
// the trace id (linked when the console knows a trace UI), and for a held run what tripped
// (the counter, its share of the connectors, the limit) with approve/reject. Live: the run's
// own events re-render it, keeping open step details open.

import { get, post, seg } from './api.js';
import * as live from './live.js';
import {
  h, stateBadge, timeEl, runLink, runOrigin, span, dur, errorBanner, infoBanner,
  confirmAction, actionButton, dl, isTerminal, resultText, label, put,
} from './ui.js';

const STAGING = ['stage-add', 'stage-update', 'stage-rename', 'stage-delete', 'stage-delete-add', 'stage-no-change', 'stage-failure'];
const EXPORT = ['export-add', 'export-update', 'export-rename', 'export-delete', 'export-delete-add', 'export-failure'];

function counterGroups(c) {
  const staging = [];
  const exp = [];
  const inbound = [];
  for (const [k, v] of Object.entries(c || {})) {
    if (k === 'outbound' || typeof v !== 'number') continue;
    if (STAGING.includes(k) || k.startsWith('stage-')) staging.push([k, v]);
    else if (EXPORT.includes(k) || k.startsWith('export-')) exp.push([k, v]);
    else inbound.push([k, v]);
  }
  return { staging, inbound, exp, outbound: Object.entries((c && c.outbound) || {}) };
}

/** The non-zero counters of a step in one line: "stage-add=5 · AD: connector-flow=6". */
export function countersBrief(c) {
  const g = counterGroups(c);
  const nz = (list) => list.filter(([, v]) => v).map(([k, v]) => `${k}=${v}`);
  const parts = [...nz(g.staging), ...nz(g.inbound), ...nz(g.exp)];
  for (const [ma, set] of g.outbound) {
    const inner = nz(Object.entries(set));
    if (inner.length) parts.push(`→ ${ma}: ${inner.join(' ')}`);
  }
  return parts.join(' · ');
}

function counterTable(title, list) {
  const rows = list.filter(([, v]) => v);
  if (!rows.length) return null;
  return h('table', { class: 'counters' }, h('caption', {}, title),
    h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', { class: 'num' }, v)))));
}

function countersView(c) {
  const g = counterGroups(c);
  const parts = [counterTable('Staging', g.staging), counterTable('Inbound synchronization', g.inbound), counterTable('Export', g.exp)];
  for (const [ma, set] of g.outbound) parts.push(counterTable(`Outbound to ${ma}`, Object.entries(set)));
  const shown = parts.filter(Boolean);
  return shown.length ? h('div', { class: 'counter-tables', 'data-testid': 'step-counters' }, shown) : h('p', { class: 'muted' }, 'No non-zero counters.');
}

const PENDING_OF = {
  max_pending_deletes: ['export_delete', 'pending export deletes'],
  max_pending_adds: ['export_add', 'pending export adds'],
  max_pending_updates: ['export_update', 'pending export updates'],
  max_staged_deletes: ['import_delete', 'staged deletes'],
  max_staged_adds: ['import_add', 'staged adds'],
  max_staged_updates: ['import_update', 'staged updates'],
};

/** What tripped a held step: one row per guard limit with the counter, its % and the limit. */
function heldView(run, st) {
  // The API's `held` (step, reason, guard, pending_before) when given, else the step's own.
  const held = run.held && typeof run.held === 'object' ? run.held : {};
  const guard = held.guard || st.guard || {};
  const reason = held.reason || st.detail;
  const p = held.pending_before || st.pending_before || {};
  const total = p.total_connectors || 0;
  const rows = [];
  for (const [field, limit] of Object.entries(guard)) {
    if (limit === null || limit === undefined) continue;
    const [key, what] = PENDING_OF[field] || [null, field];
    const value = key && p[key] !== undefined ? p[key] : null;
    const pct = value !== null && total ? (100 * value) / total : null;
    let limitCount = null;
    if (typeof limit === 'number') limitCount = limit;
    else if (typeof limit === 'string' && limit.endsWith('%') && total) limitCount = Math.floor((parseFloat(limit) / 100) * total);
    const over = value !== null && limitCount !== null && value > limitCount;
    rows.push(h('tr', { class: over ? 'tripped' : '', 'data-testid': 'guard-row', dataset: { field } },
      h('th', { scope: 'row' }, field, h('div', { class: 'small' }, what)),
      h('td', { class: 'num' }, value === null ? '—' : String(value)),
      h('td', { class: 'num' }, pct === null ? '—' : `${pct.toFixed(2)}%`),
      h('td', { class: 'num' }, String(limit), limitCount !== null && typeof limit === 'string' ? h('div', { class: 'small' }, `= ${limitCount} of ${total}`) : null),
      h('td', {}, over ? h('span', { class: 'badge bad' }, '✗ over the limit') : h('span', { class: 'badge ok' }, '✓ within'))));
  }
  return h('section', { class: 'held-box', 'data-testid': 'held-reason', 'aria-labelledby': 'held-title' },
    h('h2', { id: 'held-title' }, '‖ Held by a guard rail at step ', String(st.index + 1), `: ${st.ma}: ${st.profile}`),
    h('p', { class: 'reason' }, reason || 'Its guard rail tripped.'),
    rows.length ? h('div', { class: 'scroll' }, h('table', { class: 'grid guard' },
      h('caption', {}, `What tripped (${total} connectors in ${st.ma} before the step)`),
      h('thead', {}, h('tr', {}, ['Limit', 'Count', '% of connectors', 'Limit value', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))) : null,
    decisionLine(run));
}

/** What was decided about a held run, or what approving and rejecting would do. */
function decisionLine(run) {
  if (run.rejected_by) {
    return h('p', { class: 'decision', 'data-testid': 'held-decision' }, '✗ Rejected by ', run.rejected_by, ' at ', timeEl(run.rejected_at),
      run.reject_note ? `: ${run.reject_note}` : '', '. The run stays held; nothing after the held step runs.');
  }
  if (run.continued_in) {
    return h('p', { class: 'decision', 'data-testid': 'held-decision' }, '✓ Approved by ', run.approved_by || 'an operator',
      run.approved_at ? [' at ', timeEl(run.approved_at)] : '', '; it continues as run ', runLink(run.continued_in), '.');
  }
  return h('p', { class: 'small' }, 'Approving runs the held step once with its guard rail lifted, then the rest of the plan, as a new run. Rejecting records that it must not continue. Until one of them, nothing after the held step runs.');
}

function listTable(caption, cols, items, cell) {
  if (!items || !items.length) return null;
  return h('div', { class: 'scroll' }, h('table', { class: 'grid sub' }, h('caption', {}, caption),
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, items.map((it) => h('tr', {}, cell(it).map((v) => h('td', {}, v)))))));
}

function stepDetail(st) {
  const errs = st.object_errors || [];
  const inc = st.connection_incidents || [];
  return h('div', { class: 'step-detail' },
    dl([
      ['Engine result', resultText(st.result)],
      ['Engine run number', st.run_number ? String(st.run_number) : null],
      ['Connection result', st.connection_result || null],
      ['Started', timeEl(st.started_at)],
      ['Finished', st.finished_at ? timeEl(st.finished_at) : null],
      ['Duration', st.started_at ? span(st.started_at, st.finished_at) : null],
      ['Waited', st.waited_ms ? `${dur(st.waited_ms)}${st.wait_reason ? ` — ${st.wait_reason}` : ''}` : (st.wait_reason ? st.wait_reason : null)],
      ['Attempts', st.attempts > 1 ? String(st.attempts) : null],
      ['Condition', st.only_if ? `only if ${label(st.only_if)}` : null],
      ['Detail', st.detail || null],
    ]),
    countersView(st.counters),
    st.pending_before ? counterTable(`Pending in ${st.ma} before the step`, Object.entries(st.pending_before)) : null,
    listTable(`Object errors (${st.error_count || errs.length}${st.object_errors_omitted ? `, ${st.object_errors_omitted} not shown` : ''})`,
      ['Kind', 'Object (DN)', 'Error type', 'Code', 'Engine message'], errs,
      (e) => [e.kind, h('span', { class: 'mono', title: e.cs_guid || '' }, e.dn || e.cs_guid || '—'), h('code', {}, e.error_type),
        e.error_code ? h('code', {}, e.error_code) : '', h('pre', { class: 'literal' }, e.error_literal || '', e.literal_truncated ? ' … (truncated)' : '')]),
    listTable(`Connection incidents${st.connection_incidents_omitted ? ` (${st.connection_incidents_omitted} not shown)` : ''}`,
      ['When', 'Server', 'Result', 'Error'], inc,
      (c) => [timeEl(c.date), c.server, h('code', {}, c.connection_result), [c.error_code, c.error_literal, c.server_error_detail].filter(Boolean).join(' ')]));
}

function stepRow(st, open, onToggle) {
  const state = stateBadge(st.state, st.state === 'running' && st.progress ? st.progress : '');
  const d = h('details', { open: open || null, ontoggle: (e) => onToggle(st.index, e.target.open) },
    h('summary', {}, 'details'), stepDetail(st));
  return h('tr', { 'data-testid': 'step-row', dataset: { step: st.index, state: st.state } },
    h('td', { 'data-label': '#' }, String(st.index + 1), st.stage ? h('div', { class: 'small' }, `stage ${st.stage}`) : null),
    h('td', { 'data-label': 'Step' }, h('strong', {}, st.ma), `: ${st.profile}`),
    h('td', { 'data-label': 'State', 'data-testid': 'step-state' }, state,
      st.state === 'waiting' && st.wait_reason ? h('div', { class: 'small' }, st.wait_reason) : null),
    h('td', { 'data-label': 'Engine result' }, resultText(st.result)),
    h('td', { 'data-label': 'Time' }, st.started_at ? span(st.started_at, st.finished_at) : '—',
      st.waited_ms ? h('div', { class: 'small' }, `waited ${dur(st.waited_ms)}`) : null),
    h('td', { 'data-label': 'Errors', class: 'num' }, st.error_count ? h('span', { class: 'badge warn' }, `⚠ ${st.error_count}`) : '0'),
    h('td', { 'data-label': 'Counters', class: 'counters-brief' }, countersBrief(st.counters) || h('span', { class: 'muted' }, '—'), d));
}

export function render(el, route, ctx) {
  const id = route.id;
  document.title = `Run ${id.slice(0, 8)} · syncfleet`;
  const head = h('div', {});
  const actions = h('div', { class: 'actions' });
  const heldBox = h('div', {});
  const tbody = h('tbody', {});
  const meta = h('div', {});
  el.append(h('p', { class: 'crumbs' }, h('a', { href: '#/runs' }, '← Runs')), head, actions, heldBox, meta,
    h('h2', {}, 'Steps'),
    h('div', { class: 'scroll' }, h('table', { class: 'grid steps', 'data-testid': 'steps-table' },
      h('thead', {}, h('tr', {}, ['#', 'Step', 'State', 'Engine result', 'Time', 'Errors', 'Counters'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody)));
  const open = new Set();
  let run = null;
  let disposed = false;
  const acts = (ctx.session && ctx.session.actions) || {};

  async function act(verb, title, text, okLabel) {
    const note = await confirmAction(title, text, okLabel, verb === 'reject');
    if (note === null) return;
    try {
      const r = await post(`/api/runs/${seg(id)}/${verb}`, { note });
      if (verb === 'approve' && r && r.id && r.id !== id) {
        infoBanner(`Run ${id.slice(0, 8)} approved: it continues as run ${r.id.slice(0, 8)}`);
        location.hash = `#/runs/${encodeURIComponent(r.id)}`;
        return;
      }
      if (r && r.id === id) {
        run = r;
        draw();
      }
      infoBanner(verb === 'approve' ? 'Approved' : verb === 'reject' ? 'Rejected' : 'Cancel requested');
      load();
    } catch (e) {
      errorBanner(e, `${okLabel} run ${id.slice(0, 8)}`);
    }
  }

  function draw() {
    const r = run;
    const traceTpl = ctx.session && ctx.session.trace_url;
    const trace = r.trace_id
      ? (traceTpl ? h('a', { href: traceTpl.replace('{trace_id}', encodeURIComponent(r.trace_id)), rel: 'noopener noreferrer', target: '_blank', class: 'mono', 'data-testid': 'trace-link' }, r.trace_id) : h('code', {}, r.trace_id))
      : null;
    put(head,
      h('h1', {}, 'Run ', h('span', { class: 'mono' }, r.id.slice(0, 8)), ' on ', r.agent, ' ', stateBadge(r.state)),
      r.message ? h('p', { class: 'message' }, r.message) : null);
    meta.replaceChildren(dl([
      ['Run id', h('code', {}, r.id)],
      ['Server', h('a', { href: `#/runs?since=24h&agent=${encodeURIComponent(r.agent)}` }, r.agent)],
      ['Result', r.state === 'held' && r.result ? [resultText(r.result), ' (of the steps before the hold)'] : resultText(r.result)],
      ['Sequence', r.sequence || null],
      ['Origin', runOrigin(r)],
      ['Schedule', r.schedule ? h('a', { href: '#/schedules' }, r.schedule) : null],
      ['Nominal time', r.nominal_time ? timeEl(r.nominal_time) : null],
      ['Lateness', r.lateness_ms !== null && r.lateness_ms !== undefined ? `${dur(r.lateness_ms)}${r.jitter_ms ? ` (jitter ${dur(r.jitter_ms)})` : ''}` : null],
      ['Created', timeEl(r.created_at)],
      ['Started', r.started_at ? timeEl(r.started_at) : null],
      ['Finished', r.finished_at ? timeEl(r.finished_at) : null],
      ['Duration', r.started_at ? span(r.started_at, r.finished_at) : null],
      ['On failure', r.on_failure],
      ['Continues', r.continuation_of ? runLink(r.continuation_of, `held run ${r.continuation_of.slice(0, 8)}`) : null],
      ['Continued in', r.continued_in ? runLink(r.continued_in) : null],
      ['Approved by', r.approved_by ? [r.approved_by, ' at ', timeEl(r.approved_at)] : null],
      ['Rejected by', r.rejected_by ? [r.rejected_by, ' at ', timeEl(r.rejected_at), r.reject_note ? `: ${r.reject_note}` : ''] : null],
      ['Cancel', r.cancel_requested ? 'requested' : null],
      ['Trace', trace],
    ], 'kv meta'));
    const held = (r.steps || []).find((st) => st.state === 'held');
    heldBox.replaceChildren(r.state === 'held' && held ? heldView(r, held) : '');
    const buttons = [];
    if (r.state === 'held' && !r.continued_in && !r.approved_by && !r.rejected_by) {
      if (acts.approve) {
        buttons.push(actionButton('Approve…', 'approve-button', () => act('approve', `Approve run ${r.id.slice(0, 8)}`,
          `The held step${held ? ` ${held.ma}: ${held.profile}` : ''} runs once with its guard rail lifted on ${r.agent}, then the rest of the plan.`, 'Approve'), 'primary'));
      }
      // Rejection is offered only when the server says the role may reject.
      if (acts.reject) {
        buttons.push(actionButton('Reject…', 'reject-button', () => act('reject', `Reject run ${r.id.slice(0, 8)}`,
          'The run stays held and is not continued: nothing after the held step runs. A schedule its hold paused stays paused until you resume it. Say why in the note (required).', 'Reject'), 'danger'));
      }
    }
    if (!isTerminal(r.state) && acts.cancel && !r.cancel_requested) {
      buttons.push(actionButton('Cancel run…', 'cancel-button', () => act('cancel', `Cancel run ${r.id.slice(0, 8)}`,
        `A pending run ends at once; a running one is stopped on ${r.agent} after its current step.`, 'Cancel run'), 'danger'));
    }
    actions.replaceChildren(...buttons);
    tbody.replaceChildren(...(r.steps || []).map((st) => stepRow(st, open.has(st.index), (i, o) => (o ? open.add(i) : open.delete(i)))));
  }

  async function load() {
    try {
      const r = await get(`/api/runs/${seg(id)}`);
      if (disposed) return;
      run = r;
      draw();
    } catch (e) {
      if (disposed || e.status === 401) return;
      if (e.status === 404) head.replaceChildren(h('h1', {}, 'Run not found'));
      errorBanner(e, `Reading run ${id.slice(0, 8)}`);
    }
  }
  const offs = [
    live.on('run', (r) => {
      if (r.id !== id) return;
      // The stream's run carries no object errors list beyond its own; keep what detail gave.
      run = { ...run, ...r };
      draw();
      if (isTerminal(r.state)) load();
    }),
    live.on('resync', load),
  ];
  load();
  return { dispose() { disposed = true; offs.forEach((f) => f()); } };
}

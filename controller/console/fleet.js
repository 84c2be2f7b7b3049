// #/fleet: every server at a glance — state (connected / disconnected / lost / draining /
// autonomous), engine health, labels, what runs now (syncfleet runs and runs started outside
// syncfleet), the last result and the exports pending — with drain/resume for operators.
// Live: an agent event replaces its row; a run event re-reads the fleet (debounced).

import { get, post, seg } from './api.js';
import * as live from './live.js';
import {
  h, agentBadge, stateBadge, timeEl, runLink, runWhat, runProgress, span, errorBanner,
  infoBanner, confirmAction, actionButton,
} from './ui.js';

/** The states an agent shows: its connection state, plus draining and autonomous. */
export function agentStates(a) {
  const out = [a.state];
  if (a.drain && a.drain.draining) out.push('draining');
  if (a.autonomous) out.push('autonomous');
  return out;
}

/**
 * Exports pending per MA: the server's last heartbeat reading when the controller has it, else
 * the `pending_before` counters of the newest step of each MA in the agent's last run:
 * {ma: {add, update, delete}}.
 */
export function pendingExports(a) {
  if (a.pending_exports) return a.pending_exports;
  const out = {};
  const r = a.last_run;
  if (!r) return out;
  for (const st of r.steps || []) {
    const p = st.pending_before;
    if (!p) continue;
    out[st.ma] = { add: p.export_add, update: p.export_update, delete: p.export_delete };
  }
  return out;
}

function pendingCell(a) {
  const p = pendingExports(a);
  const items = Object.entries(p)
    .map(([ma, c]) => [ma, (c.add || 0) + (c.update || 0) + (c.delete || 0), c])
    .filter(([, total]) => total > 0);
  if (!items.length) return h('span', { class: 'muted' }, a.last_run ? 'none' : '—');
  return h('ul', { class: 'plain' }, items.map(([ma, total, c]) =>
    h('li', { title: `add ${c.add || 0}, update ${c.update || 0}, delete ${c.delete || 0}` },
      `${ma}: ${total}`, c.delete ? h('span', { class: 'warn-text' }, ` (${c.delete} del)`) : null)));
}

function engineCell(a) {
  const e = a.engine || {};
  const ok = a.engine_healthy;
  return h('div', {},
    h('span', { class: `badge ${ok ? 'ok' : 'bad'}` }, ok ? '✓ healthy' : '✗ unhealthy'),
    h('div', { class: 'small' }, [e.kind, e.version].filter(Boolean).join(' ') || '—'),
    a.engine_detail ? h('div', { class: 'small warn-text' }, a.engine_detail) : null,
    a.agent_problem ? h('div', { class: 'small bad-text' }, `agent: ${a.agent_problem}`) : null);
}

function labelsCell(a) {
  const entries = Object.entries(a.labels || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return h('ul', { class: 'chips' }, entries.map(([k, v]) => h('li', { class: 'chip' }, `${k}=${v}`)));
}

function runningCell(a) {
  const items = [];
  for (const r of a.running || []) {
    items.push(h('li', { 'data-testid': 'agent-running-run', dataset: { run: r.id } },
      runLink(r.id), ' ', stateBadge(r.state), ' ', runWhat(r),
      h('div', { class: 'small' }, runProgress(r))));
  }
  for (const er of a.engine_runs || []) {
    items.push(h('li', { 'data-testid': 'engine-run' },
      h('span', { class: 'badge warn' }, '◆ outside syncfleet'), ' ',
      `${er.ma}: ${er.profile}`, er.run_number ? ` #${er.run_number}` : '',
      h('div', { class: 'small' }, er.origin ? `${er.origin}, ` : '', 'seen since ', timeEl(er.seen_since))));
  }
  // While an agent fires its own schedules (no controller reachable) its own list of runs in
  // flight is the news; otherwise the controller's runs are, and the agent's list (sent with
  // heartbeats) can lag a run's end.
  if (a.autonomous) {
    const known = new Set((a.running || []).map((r) => r.id));
    for (const id of a.runs_in_flight || []) {
      if (!known.has(id)) items.push(h('li', {}, runLink(id), ' in flight on the agent (autonomous)'));
    }
  }
  if (!items.length) return h('span', { class: 'muted' }, 'idle');
  return h('ul', { class: 'plain' }, items);
}

function lastCell(a) {
  const r = a.last_run;
  if (!r) return h('span', { class: 'muted' }, 'no run yet');
  return h('div', {}, stateBadge(r.state), ' ', runLink(r.id),
    h('div', { class: 'small' }, runWhat(r), ' · ', timeEl(r.finished_at || r.started_at || r.created_at),
      r.finished_at && r.started_at ? ` · ${span(r.started_at, r.finished_at)}` : ''));
}

function stateCell(a) {
  const badges = agentStates(a).map((st) => agentBadge(st));
  const notes = [];
  if (a.drain && a.drain.draining) {
    notes.push(h('div', { class: 'small' }, 'draining', a.drain.by ? ` by ${a.drain.by}` : '', a.drain.note ? `: “${a.drain.note}”` : ''));
  }
  if (a.autonomous) notes.push(h('div', { class: 'small' }, 'firing its own schedules since ', timeEl(a.autonomous_since)));
  if (a.state !== 'connected') notes.push(h('div', { class: 'small' }, 'since ', timeEl(a.state_since)));
  return h('div', {}, h('div', { class: 'badges' }, badges), notes);
}

function actionsCell(a, ctx, reload) {
  if (!ctx.session.actions || !ctx.session.actions.drain_agent) return null;
  const draining = a.drain && a.drain.draining;
  const verb = draining ? 'resume' : 'drain';
  const btn = actionButton(draining ? 'Resume' : 'Drain', `${verb}-agent-button`, async () => {
    const note = await confirmAction(
      draining ? `Resume ${a.name}` : `Drain ${a.name}`,
      draining
        ? `${a.name} takes new runs again (scheduled and ad-hoc).`
        : `${a.name} takes no new runs; runs in progress finish. Use it before patching or rebooting the server.`,
      draining ? 'Resume' : 'Drain');
    if (note === null) return;
    btn.disabled = true;
    try {
      await post(`/api/agents/${seg(a.name)}/${verb}`, { note });
      infoBanner(draining ? `${a.name} resumed` : `${a.name} is draining`);
      reload();
    } catch (e) {
      errorBanner(e, `${draining ? 'Resume' : 'Drain'} ${a.name}`);
    } finally {
      btn.disabled = false;
    }
  });
  btn.setAttribute('aria-label', `${draining ? 'Resume' : 'Drain'} ${a.name}`);
  return btn;
}

export function render(el, _route, ctx) {
  document.title = 'Fleet · syncfleet';
  const summary = h('p', { class: 'summary', 'data-testid': 'fleet-summary' }, 'Loading the fleet…');
  const pauseNote = h('div', {});
  const canAct = ctx.session.actions && ctx.session.actions.drain_agent;
  const tbody = h('tbody', {});
  const table = h('table', { class: 'grid fleet', 'data-testid': 'fleet-table' },
    h('caption', { class: 'sr-only' }, 'Sync servers'),
    h('thead', {}, h('tr', {},
      ['Server', 'State', 'Engine', 'Labels', 'Running now', 'Last run', 'Pending exports', canAct ? 'Actions' : null]
        .filter(Boolean).map((t) => h('th', { scope: 'col' }, t)))),
    tbody);
  el.append(h('h1', {}, 'Fleet'), summary, pauseNote, h('div', { class: 'scroll' }, table),
    h('p', { class: 'small' }, 'Pending exports are the engine\'s counters from the server\'s last heartbeat (on a controller without its session: before the newest step of each MA in its last run). ',
      '“Outside syncfleet” runs are ones the engine runs that syncfleet did not start (Synchronization Service Manager, scripts).'));

  const rows = new Map(); // name -> { json, tr }
  let agents = [];
  let disposed = false;

  function row(a) {
    const cells = [
      h('th', { scope: 'row', 'data-label': 'Server' },
        h('a', { href: `#/runs?since=24h&agent=${encodeURIComponent(a.name)}`, class: 'name', title: `Runs on ${a.name}` }, a.name),
        h('div', { class: 'small' }, a.hostname || '', a.agent_version ? ` · agent ${a.agent_version}` : '')),
      h('td', { 'data-label': 'State' }, stateCell(a)),
      h('td', { 'data-label': 'Engine' }, engineCell(a)),
      h('td', { 'data-label': 'Labels' }, labelsCell(a)),
      h('td', { 'data-label': 'Running now' }, runningCell(a)),
      h('td', { 'data-label': 'Last run' }, lastCell(a)),
      h('td', { 'data-label': 'Pending exports' }, pendingCell(a)),
    ];
    if (canAct) cells.push(h('td', { 'data-label': 'Actions' }, actionsCell(a, ctx, load)));
    return h('tr', { 'data-testid': 'agent-row', dataset: { agent: a.name, state: agentStates(a).join(' ') } }, cells);
  }

  function draw() {
    const seen = new Set();
    let prev = null;
    for (const a of agents) {
      seen.add(a.name);
      const json = JSON.stringify(a);
      let entry = rows.get(a.name);
      if (!entry || entry.json !== json) {
        const tr = row(a);
        if (entry) entry.tr.replaceWith(tr);
        entry = { json, tr };
        rows.set(a.name, entry);
      }
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== entry.tr) tbody.insertBefore(entry.tr, want);
      prev = entry.tr;
    }
    for (const [name, entry] of rows) {
      if (!seen.has(name)) {
        entry.tr.remove();
        rows.delete(name);
      }
    }
    const count = (f) => agents.filter(f).length;
    const connected = count((a) => a.state === 'connected');
    const running = agents.reduce((n, a) => n + (a.running || []).length, 0);
    const outside = agents.reduce((n, a) => n + (a.engine_runs || []).length, 0);
    const unhealthy = count((a) => !a.engine_healthy);
    const draining = count((a) => a.drain && a.drain.draining);
    summary.textContent = [
      `${agents.length} servers`,
      `${connected} connected`,
      agents.length - connected ? `${agents.length - connected} not connected` : null,
      draining ? `${draining} draining` : null,
      unhealthy ? `${unhealthy} engine${unhealthy > 1 ? 's' : ''} unhealthy` : null,
      `${running} run${running === 1 ? '' : 's'} in progress`,
      outside ? `${outside} engine run${outside === 1 ? '' : 's'} outside syncfleet` : null,
    ].filter(Boolean).join(' · ');
  }

  let loading = null;
  let again = false;
  async function load() {
    if (loading) {
      again = true;
      return;
    }
    loading = (async () => {
      try {
        const data = await get('/api/fleet');
        if (disposed) return;
        agents = (data.agents || []).slice().sort((x, y) => x.name.localeCompare(y.name));
        const p = data.status && data.status.pause;
        pauseNote.replaceChildren(p && p.paused
          ? h('div', { class: 'banner held', role: 'status' }, '‖ The whole fleet is paused: no new runs start', p.by ? ` (by ${p.by}` : '', p.note ? `: “${p.note}”` : '', p.by ? ')' : '', '.')
          : '');
        draw();
      } catch (e) {
        if (!disposed && e.status !== 401) errorBanner(e, 'Reading the fleet');
      }
    })();
    await loading;
    loading = null;
    if (again && !disposed) {
      again = false;
      load();
    }
  }

  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      load();
    }, 400);
  };
  const offs = [
    live.on('run', (r) => {
      // Step progress shows at once in the row; the full re-read follows.
      const a = agents.find((x) => x.name === r.agent);
      if (a) {
        const running = (a.running || []).filter((x) => x.id !== r.id);
        if (['pending', 'dispatched', 'running'].includes(r.state)) running.push(r);
        else a.last_run = r;
        a.running = running;
        draw();
      }
      soon();
    }),
    live.on('agent', (ag) => {
      const i = agents.findIndex((x) => x.name === ag.name);
      if (i >= 0) {
        agents[i] = { ...agents[i], ...ag };
        draw();
      } else soon();
    }),
    live.on('resync', soon),
  ];
  load();
  return {
    dispose() {
      disposed = true;
      if (timer) clearTimeout(timer);
      offs.forEach((f) => f());
    },
  };
}


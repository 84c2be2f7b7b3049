// Small DOM helpers shared by the pages: element building (text only, never HTML strings, so
// data from the fleet cannot inject markup), status badges with symbol + text, times and
// durations, banners and the confirmation dialog.

/** Builds an element: h('a', {href: '#/x', class: 'c'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

/** Replaces an element's children; null, undefined and false children are left out. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';

/** Builds an SVG element (attributes only, no styles). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

// Every state has a symbol and its name: colour is never the only signal.
const RUN_STATES = {
  pending: ['…', 'wait'],
  dispatched: ['→', 'wait'],
  running: ['▶', 'active'],
  succeeded: ['✓', 'ok'],
  completed_with_errors: ['⚠', 'warn'],
  failed: ['✗', 'bad'],
  skipped: ['↷', 'muted'],
  cancelled: ['⊘', 'muted'],
  unknown: ['?', 'warn'],
  held: ['‖', 'held'],
  waiting: ['◷', 'wait'],
  done: ['✓', 'ok'],
  not_run: ['–', 'muted'],
};
const AGENT_STATES = {
  connected: ['●', 'ok'],
  disconnected: ['○', 'warn'],
  lost: ['✕', 'bad'],
  draining: ['‖', 'held'],
  autonomous: ['⚑', 'warn'],
};

/** A badge for a run or step state: symbol, state name with underscores as spaces. */
export function stateBadge(state, extra) {
  const [sym, cls] = RUN_STATES[state] || ['·', 'muted'];
  return h('span', { class: `badge ${cls}`, dataset: { state } }, `${sym} ${label(state)}`, extra ? ` ${extra}` : null);
}

/** A badge for an agent state (connected, disconnected, lost, draining, autonomous). */
export function agentBadge(state) {
  const [sym, cls] = AGENT_STATES[state] || ['·', 'muted'];
  return h('span', { class: `badge ${cls}`, dataset: { state } }, `${sym} ${label(state)}`);
}

export function label(s) {
  return String(s || '').replace(/_/g, ' ');
}

/** A run's result as the engine/controller wrote it: verbatim, or nothing. */
export function resultText(r) {
  return r ? h('code', { class: 'result' }, r) : h('span', { class: 'muted' }, '—');
}

export function ms(t) {
  return t ? Date.parse(t) : NaN;
}

const pad = (n) => String(n).padStart(2, '0');

/** Local wall-clock time of an RFC 3339 timestamp: "21:44:12" today, else "12-06 21:44". */
export function time(t) {
  if (!t) return '—';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return t;
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
}

/** A <time> element with the local time shown and the full timestamp as its title. */
export function timeEl(t) {
  if (!t) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: t, title: t }, time(t));
}

/** A time in an IANA zone: "Sun 06 Dec 22:45 (Europe/Paris)". */
export function zoned(t, zone) {
  try {
    return new Intl.DateTimeFormat('en-GB', {
      timeZone: zone || 'UTC',
      weekday: 'short',
      day: '2-digit',
      month: 'short',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hour12: false,
    }).format(new Date(t));
  } catch (_) {
    return t;
  }
}

/** Milliseconds as "850ms", "12s", "3m 05s", "2h 10m". */
export function dur(msv) {
  if (msv === null || msv === undefined || Number.isNaN(msv)) return '—';
  const neg = msv < 0;
  let v = Math.abs(Math.round(msv));
  let out;
  if (v < 1000) out = `${v}ms`;
  else if (v < 60000) out = `${(v / 1000).toFixed(v < 10000 ? 1 : 0)}s`;
  else if (v < 3600000) out = `${Math.floor(v / 60000)}m ${pad(Math.floor((v % 60000) / 1000))}s`;
  else out = `${Math.floor(v / 3600000)}h ${pad(Math.floor((v % 3600000) / 60000))}m`;
  return neg ? `-${out}` : out;
}

/** Duration between two timestamps (to now when the end is unset). */
export function span(from, to) {
  const a = ms(from);
  if (Number.isNaN(a)) return '—';
  const b = to ? ms(to) : Date.now();
  return dur(b - a);
}

export function shortId(id) {
  return String(id || '').slice(0, 8);
}

export function runLink(id, text) {
  return h('a', { href: `#/runs/${encodeURIComponent(id)}`, class: 'mono' }, text || shortId(id));
}

/** What a run does: its sequence, or its steps "AD: Delta Import, ...". */
export function runWhat(r) {
  if (r.sequence) return r.sequence;
  const steps = (r.steps || []).map((st) => `${st.ma}: ${st.profile}`);
  if (steps.length <= 2) return steps.join(', ');
  return `${steps.slice(0, 2).join(', ')} +${steps.length - 2}`;
}

/** Where a run came from: "schedule delta-every-3m", "manual by operator/alice". */
export function runOrigin(r) {
  if (r.schedule) return `schedule ${r.schedule}`;
  const by = r.requested_by ? ` by ${r.requested_by}` : '';
  return `${r.origin || 'manual'}${by}`;
}

/** "3/10 steps" with the current step and its progress, or the held/skipped counts. */
export function runProgress(r) {
  const steps = r.steps || [];
  const done = steps.filter((st) => st.state === 'done').length;
  const cur = steps.find((st) => st.state === 'running') || steps.find((st) => st.state === 'waiting') || steps.find((st) => st.state === 'held');
  const parts = [`${done}/${steps.length} steps`];
  if (cur) {
    let p = `${cur.ma}: ${cur.profile} ${label(cur.state)}`;
    if (cur.state === 'running' && cur.progress) p += ` ${cur.progress}`;
    parts.push(p);
  }
  return parts.join(' · ');
}

export function isTerminal(state) {
  return ['succeeded', 'completed_with_errors', 'failed', 'skipped', 'cancelled', 'unknown', 'held'].includes(state);
}

const banners = () => document.getElementById('banners');

/** Shows an error banner with the server's message verbatim (and its request id). */
export function errorBanner(err, context) {
  const msg = err && err.message ? err.message : String(err);
  const rid = err && err.requestId ? h('span', { class: 'muted' }, ` (request ${err.requestId})`) : null;
  const code = err && err.status ? h('span', { class: 'muted' }, ` [${err.status}${err.code ? ' ' + err.code : ''}]`) : null;
  const b = h('div', { class: 'banner error', role: 'alert', 'data-testid': 'error-banner' },
    h('strong', {}, '✗ ', context ? `${context}: ` : 'Error: '),
    h('span', { class: 'msg' }, msg), code, rid,
    h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => b.remove() }, '×'));
  banners().appendChild(b);
  return b;
}

/** Shows a success/info banner that goes away by itself. */
export function infoBanner(text) {
  const b = h('div', { class: 'banner info', role: 'status', 'data-testid': 'info-banner' }, h('span', {}, '✓ ', text),
    h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => b.remove() }, '×'));
  banners().appendChild(b);
  setTimeout(() => b.remove(), 8000);
  return b;
}

export function clearBanners() {
  banners().replaceChildren();
}

/**
 * The confirmation step of an action: a modal dialog naming what will happen, with a note for
 * the audit log. Resolves to the note, or null when the operator backs out.
 */
export function confirmAction(title, text, okLabel, noteRequired) {
  const dlg = document.getElementById('confirm');
  const form = document.getElementById('confirm-form');
  const note = document.getElementById('confirm-note');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel || 'Confirm';
  note.value = '';
  // A rejection must say why: the browser will not submit the form without a note.
  note.required = Boolean(noteRequired);
  return new Promise((resolve) => {
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dlg.removeEventListener('close', onClose);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      finish(note.value.trim());
    };
    const onCancel = () => finish(null);
    const onClose = () => finish(null);
    const cancel = document.getElementById('confirm-cancel');
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    note.focus();
  });
}

/** An action button (hidden entirely when the role does not allow it: callers check). */
export function actionButton(text, testid, onclick, cls) {
  return h('button', { type: 'button', class: `action ${cls || ''}`, 'data-testid': testid, onclick }, text);
}

/** A definition list from [term, value] pairs, skipping empty values. */
export function dl(pairs, cls) {
  return h('dl', { class: cls || 'kv' }, pairs.filter((p) => p && p[1] !== null && p[1] !== undefined && p[1] !== '').map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// The console's entry point: reads the session, then routes hash URLs to the pages:
// #/fleet (default), #/runs, #/runs/<id>, #/timeline?since=6h, #/schedules. Without a valid
// session (never signed in, expired, signed out) it shows how to get a sign-in link.

import { get, post, setCsrfToken } from './api.js';
import * as live from './live.js';
import { h, clearBanners, errorBanner } from './ui.js';
import * as fleet from './fleet.js';
import * as runs from './runs.js';
import * as run from './run.js';
import * as timeline from './timeline.js';
import * as schedules from './schedules.js';

const ctx = { session: null };
let current = null; // { dispose }
let expiryTimer = null;
let warnTimer = null;
let lastPage = null;

function main() {
  return document.getElementById('main');
}

function parseHash() {
  const raw = (location.hash || '#/fleet').replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

function route() {
  if (!ctx.session) return;
  if (current && current.dispose) current.dispose();
  current = null;
  clearBanners();
  const { parts, params } = parseHash();
  const page = parts[0] || 'fleet';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.route === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const el = main();
  el.replaceChildren();
  let mod;
  if (page === 'fleet') mod = fleet;
  else if (page === 'runs' && parts[1]) mod = run;
  else if (page === 'runs') mod = runs;
  else if (page === 'timeline') mod = timeline;
  else if (page === 'schedules') mod = schedules;
  else {
    el.append(h('h1', {}, 'Not found'), h('p', {}, 'No such page: ', h('code', {}, location.hash), '. ', h('a', { href: '#/fleet' }, 'Back to the fleet')));
    return;
  }
  current = mod.render(el, { id: parts[1], params }, ctx) || null;
  // Moving to another page puts the keyboard focus at its start (as a page load would);
  // changing a filter of the same page leaves it where it is.
  const where = `${page}/${parts[1] || ''}`;
  if (lastPage !== null && lastPage !== where) el.focus({ preventScroll: false });
  lastPage = where;
}

function signedOut(reason) {
  ctx.session = null;
  live.stop();
  if (current && current.dispose) current.dispose();
  current = null;
  if (expiryTimer) clearTimeout(expiryTimer);
  if (warnTimer) clearTimeout(warnTimer);
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  clearBanners();
  const el = main();
  el.replaceChildren(
    h('section', { class: 'signedout', 'data-testid': 'signed-out' },
      h('h1', {}, 'Signed out'),
      h('p', {}, reason || 'This browser has no console session (it expired, was signed out, or never existed).'),
      h('p', {}, 'To sign in, run this in a terminal where the syncfleet CLI reaches your controller:'),
      h('pre', {}, h('code', {}, 'syncfleet ui')),
      h('p', {}, 'It opens (or prints) a one-time sign-in link for your operator identity; the link works once and for a few minutes.')));
  document.title = 'Signed out · syncfleet';
}

function showSession(sess) {
  document.getElementById('nav').hidden = false;
  const who = document.getElementById('who');
  who.replaceChildren(
    h('span', { 'data-testid': 'session-who' }, `${sess.operator} · ${sess.role}`, sess.fleet ? ` · fleet ${sess.fleet}` : ''),
    ' ',
    h('button', {
      type: 'button',
      class: 'link',
      'data-testid': 'logout',
      onclick: async () => {
        try {
          await post('/logout', {});
        } catch (e) {
          if (e.status !== 401) {
            errorBanner(e, 'Sign out failed');
            return;
          }
        }
        signedOut('You signed out.');
      },
    }, 'Sign out'));
  if (expiryTimer) clearTimeout(expiryTimer);
  if (warnTimer) clearTimeout(warnTimer);
  const left = Date.parse(sess.expires_at) - Date.now();
  if (left > 0 && left < 2 ** 31) {
    expiryTimer = setTimeout(() => signedOut('Your console session expired.'), left + 1000);
    // Five minutes ahead, a notice: the session cannot be extended, only replaced.
    const warnIn = left - 5 * 60 * 1000;
    if (warnIn > 0) {
      warnTimer = setTimeout(() => {
        // In the header, not a banner: it stays when the page changes.
        who.appendChild(h('span', { class: 'expiry', role: 'status', 'data-testid': 'expiry-notice' },
          ` ‖ session ends at ${new Date(sess.expires_at).toLocaleTimeString()}: run `, h('code', {}, 'syncfleet ui'), ' for a new link'));
      }, warnIn);
    }
  }
}

async function boot() {
  try {
    const sess = await get('/api/session');
    ctx.session = sess;
    setCsrfToken(sess.csrf_token);
    showSession(sess);
    live.start(document.getElementById('live'));
    route();
  } catch (e) {
    if (e.status === 401) signedOut(e.message && !e.message.startsWith('HTTP') ? `The controller says: ${e.message}` : null);
    else {
      main().replaceChildren(h('h1', {}, 'The console cannot start'));
      errorBanner(e, 'Reading the session');
    }
  }
}

window.addEventListener('hashchange', route);
window.addEventListener('syncfleet:signedout', (ev) => {
  if (ctx.session) signedOut(ev.detail ? `Your session ended: ${ev.detail}` : 'Your console session expired.');
});
window.addEventListener('syncfleet:checksession', async () => {
  if (!ctx.session) return;
  try {
    await get('/api/session');
  } catch (_) {
    // A 401 has already switched to the signed-out view.
  }
});
document.addEventListener('keydown', (ev) => {
  // "/" focuses the page's filter field (when it has one); ignored while typing.
  const t = ev.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
  if (ev.key === '/' && document.getElementById('filter')) {
    ev.preventDefault();
    document.getElementById('filter').focus();
  }
});
boot();

// One EventSource on /api/events for the whole page: run updates (and agent changes, when the
// server sends them) are handed to the current page; `lagged` (the stream fell behind) makes
// the page re-read; `signed_out` ends the session in the page. The browser reconnects on its
// own; the status line says so.

const handlers = { run: new Set(), agent: new Set(), resync: new Set() };
let source = null;
let statusEl = null;

function setStatus(text, cls) {
  if (!statusEl) return;
  statusEl.textContent = text;
  statusEl.className = `live ${cls}`;
  statusEl.dataset.state = cls;
}

function dispatch(kind, data) {
  for (const f of handlers[kind]) {
    try {
      f(data);
    } catch (e) {
      console.error(e);
    }
  }
}

/** Opens the stream (once). */
export function start(el) {
  statusEl = el;
  if (source) return;
  source = new EventSource('/api/events');
  setStatus('○ live: connecting', 'connecting');
  source.addEventListener('open', () => {
    setStatus('● live', 'open');
    // Whatever happened while disconnected is read again.
    dispatch('resync', null);
  });
  source.addEventListener('error', () => {
    if (source && source.readyState === EventSource.CLOSED) {
      setStatus('✕ live updates stopped', 'closed');
      window.dispatchEvent(new CustomEvent('syncfleet:checksession'));
    } else {
      setStatus('◌ live: reconnecting', 'connecting');
    }
  });
  source.addEventListener('run', (ev) => {
    let run;
    try {
      run = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    dispatch('run', run);
  });
  source.addEventListener('agent', (ev) => {
    let agent;
    try {
      agent = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    dispatch('agent', agent);
  });
  source.addEventListener('lagged', () => dispatch('resync', null));
  // The server ends the stream of a session that expired or was signed out.
  source.addEventListener('signed_out', () => {
    stop();
    window.dispatchEvent(new CustomEvent('syncfleet:signedout', { detail: null }));
  });
}

// A tab coming back into view re-reads what it shows: the stream carries run updates, not
// every change of an agent's connection while the tab was hidden.
document.addEventListener('visibilitychange', () => {
  if (source && document.visibilityState === 'visible') dispatch('resync', null);
});

/** Closes the stream (signed out). */
export function stop() {
  if (source) source.close();
  source = null;
  setStatus('', 'closed');
}

/** Subscribes `f` to `kind` ('run', 'agent' or 'resync'); returns the unsubscribe function. */
export function on(kind, f) {
  handlers[kind].add(f);
  return () => handlers[kind].delete(f);
}

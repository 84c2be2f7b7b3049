// The console's JSON API: GETs and CSRF-protected POSTs, errors as ApiError carrying the
// server's own message. A 401 anywhere means the session is gone: listeners of
// 'syncfleet:signedout' switch the page to the signed-out view.

let csrfToken = '';

/** An API call that failed: `message` is the server's error text, shown verbatim. */
export class ApiError extends Error {
  constructor(status, body, path) {
    const msg = (body && body.error) || `HTTP ${status} from ${path}`;
    super(msg);
    this.status = status;
    this.code = (body && body.code) || '';
    this.requestId = (body && body.request_id) || '';
    this.path = path;
  }
}

export function setCsrfToken(token) {
  csrfToken = token || '';
}

async function handle(resp, path) {
  let body = null;
  const type = resp.headers.get('Content-Type') || '';
  if (resp.status !== 204 && type.includes('json')) {
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
  }
  if (resp.status === 401) {
    window.dispatchEvent(new CustomEvent('syncfleet:signedout', { detail: body && body.error }));
  }
  if (!resp.ok) throw new ApiError(resp.status, body, path);
  return body;
}

async function send(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: `cannot reach the controller (${e.message})`, code: 'unavailable' }, path);
  }
  return handle(resp, path);
}

/** GET a JSON document. */
export function get(path) {
  return send(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
}

/** POST a JSON body with the session's CSRF token. */
export function post(path, body) {
  return send(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: {
      Accept: 'application/json',
      'Content-Type': 'application/json',
      'X-CSRF-Token': csrfToken,
    },
    body: JSON.stringify(body || {}),
  });
}

/** Path segment escaping for names and ids in URLs. */
export const seg = encodeURIComponent;

// The page talks to the server only through its HTTP API, with the key the user gave as
// the bearer token (no cookies). A 401 asks for a key and retries.

const KEY = 'lmtune.key';
let askKey = null;

export function setKeyAsker(fn) { askKey = fn; }
export function key() { return localStorage.getItem(KEY) || ''; }
export function setKey(k) { if (k) localStorage.setItem(KEY, k); else localStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

function headers(extra = {}) {
  const h = {...extra};
  if (key()) h.Authorization = `Bearer ${key()}`;
  return h;
}

async function asError(r) {
  let message = `${r.status} ${r.statusText}`, code = null;
  try {
    const body = await r.json();
    if (body && body.error) { message = body.error.message; code = body.error.code; }
  } catch (e) { /* not JSON: keep the status line */ }
  return new ApiError(r.status, message, code);
}

export async function call(method, path, body, opts = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const init = {method, headers: headers(opts.headers), signal: opts.signal};
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const r = await fetch(path, init);
    if (r.status === 401 && askKey && attempt < 2) { await askKey(); continue; }
    if (!r.ok) throw await asError(r);
    if (opts.raw) return r;
    const type = r.headers.get('content-type') || '';
    return type.includes('json') ? r.json() : r.text();
  }
  throw new ApiError(401, 'this server needs an API key');
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body, opts);

// Server-sent events over fetch (EventSource cannot send the Authorization header).
export async function events(method, path, body, onEvent, signal) {
  const r = await call(method, path, body, {raw: true, signal});
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(event, data.join('\n'));
    }
  }
}

// A file download that carries the key: fetched, then handed to the browser as a blob.
export async function download(path, filename) {
  const r = await call('GET', path, undefined, {raw: true});
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

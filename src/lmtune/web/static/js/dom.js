// Every text from the server (samples, file names, data, errors) goes into the page as
// text nodes through h(), never as HTML: a sample holding <script> shows as text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function num(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x)) return x.toLocaleString('en');
  return Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en') : x.toPrecision(digits);
}

export function ago(seconds) {
  if (!seconds) return '–';
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '–';
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function statusBadge(status) {
  return h('span', {class: `badge status-${status}`}, status.replace('_', ' '));
}

export function errorBox(err) {
  return h('p', {class: 'error', role: 'alert'}, String(err && err.message || err));
}

export function field(label, input, help) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const helpId = help ? `${id}-help` : null;
  if (helpId) input.setAttribute('aria-describedby', helpId);
  return h('div', {class: 'field'}, h('label', {for: id}, label), input,
           help ? h('small', {id: helpId, class: 'help'}, help) : null);
}

export function section(title, ...children) {
  return h('section', {class: 'card'}, h('h2', {}, title), ...children);
}

// The config's field names as a person reads them; the flag is in each field's help.
const LABELS = {lr: 'Learning rate', val_split: 'Validation split', block_size: 'Block size',
                batch_size: 'Batch size', split_on: 'Split on'};

export function label(name) {
  return LABELS[name] || name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, ' ');
}

// A model named by a local path shows its folder's name; the whole path is in the title.
export function modelName(model) {
  const text = String(model || '');
  const short = text.startsWith('/') ? text.replace(/\/+$/, '').split('/').pop() : text;
  return h('span', {title: text}, short);
}

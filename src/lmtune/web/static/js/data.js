import {get, post} from './api.js';
import {clear, errorBox, field, h, label, num, section} from './dom.js';

const KINDS = {
  start: 'start token (context, not learned)',
  prompt: 'prompt (context, not learned)',
  turn: 'masked turn (context, not learned)',
  target: 'learned (counts in the loss)',
  end: 'end token (learned: the model learns to stop)',
  pad: 'padding (ignored)',
};

export function legend() {
  return h('ul', {class: 'legend', 'aria-label': 'Token kinds'},
    Object.entries(KINDS).map(([k, text]) => h('li', {}, h('span', {class: `tok k-${k}`}, k), ' ', text)));
}

function tokenLines(example) {
  const line = h('div', {class: 'tokens'});
  for (const t of example.tokens) {
    line.append(h('span', {class: `tok k-${t.kind}`, title: `${KINDS[t.kind] || t.kind} · id ${t.id}`},
                  t.text));
  }
  const more = example.truncated ? h('span', {class: 'muted'}, ` … (${example.n_tokens} tokens in all)`) : null;
  return [line, more, h('div', {class: 'muted small'}, `${example.n_tokens} tokens, ${example.target_tokens} learned`)];
}

export function tokens(example) {
  return h('li', {}, tokenLines(example));
}

// A preference pair: the prompt with each answer, as the two rows of a step see them; the
// answers' tokens are the ones whose log-probability is compared.
function pairTokens(pair) {
  const row = (name, example) => h('li', {class: 'pair-row'}, h('span', {class: 'pair-label'}, name),
    h('div', {}, tokenLines(example)));
  return h('li', {class: 'pair'}, h('ul', {class: 'examples'},
    row('Chosen', pair.chosen), row('Rejected', pair.rejected)));
}

function pairReport(r) {
  const facts = [
    ['Pairs', num(r.pairs)], ['Tokens (prompt + each answer)', num(r.tokens)],
    ['Median prompt (tokens)', num(r.prompt_tokens.median)],
    ['Median chosen answer', num(r.chosen_tokens.median)],
    ['Median rejected answer', num(r.rejected_tokens.median)],
    ['Chosen is the longer', `${Math.round(100 * r.chosen_longer)}%`],
    ['Cut at (tokens)', num(r.max_length)], ['Longer than that', num(r.over_max_length)],
    ['No answer left', num(r.no_answer_left)], ['Same answers', num(r.identical)],
    ['Duplicates', num(r.duplicates)],
  ];
  const dl = h('dl', {class: 'facts'}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const warn = (r.warnings || []).length
    ? h('ul', {class: 'warnings'}, r.warnings.map((w) => h('li', {}, h('strong', {}, 'Warning: '), w))) : null;
  return h('div', {class: 'report'}, dl, warn);
}

function histogram(rows) {
  const most = Math.max(1, ...rows.map((r) => r.count));
  return h('table', {class: 'hist'}, h('caption', {}, 'Tokens per example'),
    h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Tokens'), h('th', {scope: 'col'}, 'Examples'))),
    h('tbody', {}, rows.map((r) => h('tr', {},
      h('td', {class: 'num'}, r.from === r.to ? `${r.from}` : `${r.from}–${r.to}`),
      h('td', {}, h('span', {class: 'bar', style: null, dataset: {w: Math.round(100 * r.count / most)}}),
        ` ${r.count}`)))));
}

export function report(r) {
  if (r.kind === 'pairs') return pairReport(r);
  const facts = [
    ['Examples', num(r.examples)], ['Tokens', num(r.tokens)],
    ['Learned tokens', num(r.target_tokens)], ['Tokens per character', num(r.tokens_per_character, 3)],
    ['Median length (tokens)', num(r.length && r.length.median)], ['Longest (tokens)', num(r.length && r.length.max)],
    ['Block size', num(r.block_size)], ['Longer than a block', num(r.over_block_size)],
    ['Duplicates', num(r.duplicates)], ['Dropped (empty)', num(r.dropped_empty)],
  ];
  const dl = h('dl', {class: 'facts'}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const warn = (r.warnings || []).length
    ? h('ul', {class: 'warnings'}, r.warnings.map((w) => h('li', {}, h('strong', {}, 'Warning: '), w))) : null;
  const notes = (r.notes || []).length ? h('ul', {class: 'notes'}, r.notes.map((w) => h('li', {}, w))) : null;
  const hist = histogram(r.histogram || []);
  for (const bar of hist.querySelectorAll('.bar')) bar.style.width = `${bar.dataset.w}%`;
  return h('div', {class: 'report'}, dl, warn, notes, hist);
}

function uploadCard() {
  const input = h('input', {type: 'file', name: 'file', accept: '.jsonl,.json,.csv,.tsv,.txt,.parquet'});
  const status = h('p', {class: 'muted', role: 'status'});
  const form = h('form', {class: 'upload'}, field('Data file', input,
    'JSONL (text, prompt/completion or chat messages), CSV, TSV, JSON, text or Parquet.'),
    h('button', {type: 'submit', class: 'primary'}, 'Upload'), status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!input.files.length) { status.textContent = 'Choose a file first.'; return; }
    const body = new FormData();
    body.append('purpose', 'fine-tune');
    body.append('file', input.files[0]);
    status.textContent = 'Uploading…';
    try {
      const file = await post('/v1/files', body);
      location.hash = `#/data?file=${encodeURIComponent(file.id)}`;
    } catch (err) { clear(status, errorBox(err)); }
  });
  return section('Upload data', form);
}

function fileList(files, chosen) {
  if (!files.length) return h('p', {class: 'muted'}, 'No files uploaded yet.');
  return h('ul', {class: 'files'}, files.map((f) => h('li', {},
    h('a', {href: `#/data?file=${encodeURIComponent(f.id)}`,
            'aria-current': f.id === chosen ? 'true' : null}, f.filename),
    h('span', {class: 'muted small'}, ` ${num(f.bytes)} bytes · ${f.id}`))));
}

export const DATA_OPTIONS = ['template', 'prompt_template', 'completion_template', 'column', 'format', 'split_on'];

export async function showData(main, params) {
  const [files, config] = await Promise.all([get('/v1/files'), get('/lmtune/config')]);
  const chosen = params.get('file');
  main.append(h('h1', {}, 'Data'), h('div', {class: 'grid2'}, uploadCard(),
    section('Your files', fileList(files.data, chosen))));
  if (!chosen) return null;
  const file = files.data.find((f) => f.id === chosen);
  if (!file) { main.append(errorBox(`no such file: ${chosen}`)); return null; }
  const help = Object.fromEntries(config.fields.map((f) => [f.name, f.help]));
  const inputs = {model: h('input', {value: params.get('model') || config.served[0] || config.default_model, list: 'models'})};
  for (const name of DATA_OPTIONS) inputs[name] = h('input', {value: params.get(name) || ''});
  const out = h('div', {'aria-live': 'polite'});
  const train = h('a', {class: 'button primary', href: '#/new'}, 'Train on this file');
  const form = h('form', {class: 'options'},
    h('datalist', {id: 'models'}, config.served.map((m) => h('option', {value: m}))),
    h('div', {class: 'grid3'}, Object.entries(inputs).map(([name, input]) => field(label(name), input, help[name]))),
    h('div', {class: 'row'}, h('button', {type: 'submit'}, 'Show as training sees it'), train));
  let latest = 0;  // only the newest answer is shown: an older one may arrive after it
  async function preview() {
    const mine = ++latest;
    const body = {n: 6};
    const q = new URLSearchParams({file: chosen});
    for (const [name, input] of Object.entries(inputs)) {
      if (input.value !== '') { body[name] = input.value; q.set(name, input.value); }
    }
    train.href = `#/new?${q}`;
    clear(out, h('p', {class: 'muted'}, 'Reading the file…'));
    try {
      const result = await post(`/lmtune/files/${encodeURIComponent(chosen)}/preview`, body);
      if (mine !== latest) return;
      const pairs = result.format === 'pairs';
      if (pairs) { q.set('kind', 'dpo'); train.href = `#/new?${q}`; }
      clear(out, h('div', {class: 'grid2'},
        section(pairs ? 'The first preference pairs, as training sees them'
                      : `The first examples, as training sees them (${result.format})`, legend(),
          h('ol', {class: 'examples'}, result.examples.map(pairs ? pairTokens : tokens)),
          result.packed ? h('p', {class: 'muted small'}, 'Examples are packed into blocks end to end, so no padding is added.') : null),
        section('What lmtune data inspect reports', report(result.report))));
    } catch (err) { if (mine === latest) clear(out, errorBox(err)); }
  }
  form.addEventListener('submit', (e) => { e.preventDefault(); preview(); });
  main.append(section(`How training will read ${file.filename}`, form), out);
  await preview();
  return null;
}

import {download, post} from './api.js';
import {clear, errorBox, field, h, num, section} from './dom.js';

const TYPES = {q8_0: 'q8_0 (8-bit, near f16)', q4_0: 'q4_0 (4-bit, smallest)',
               f16: 'f16 (16-bit)', bf16: 'bf16 (16-bit)', f32: 'f32 (full size)'};

export function ollamaName(model) {
  return model.toLowerCase().replace(/^ft:/, '').replace(/[^a-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 60) || 'lmtune-model';
}

export function exportCard(model) {
  const type = h('select', {}, Object.entries(TYPES).map(([k, v]) => h('option', {value: k}, v)));
  const status = h('div', {'aria-live': 'polite'});
  const name = ollamaName(model);
  const ggufName = () => `${name}-${type.value}.gguf`;
  const command = h('pre', {});
  const showCommand = () => {
    command.textContent = `# in the folder holding ${ggufName()} and Modelfile:\nollama create ${name} -f Modelfile\nollama run ${name}`;
  };
  type.addEventListener('change', showCommand);
  showCommand();
  const act = (what) => async () => {
    clear(status, h('p', {class: 'muted'}, what === 'gguf'
      ? 'Converting to GGUF (the first download of each type takes a while; later ones are at once)…' : 'Writing the Modelfile…'));
    try {
      if (what === 'gguf') await download(`/v1/models/${encodeURIComponent(model)}/gguf?type=${type.value}`, ggufName());
      else await download(`/lmtune/models/${encodeURIComponent(model)}/modelfile?gguf=${encodeURIComponent(ggufName())}`, 'Modelfile');
      clear(status, h('p', {}, `Downloaded ${what === 'gguf' ? ggufName() : 'Modelfile'}.`));
    } catch (err) { clear(status, errorBox(err)); }
  };
  return section('Export for llama.cpp, Ollama or LM Studio',
    field('GGUF type', type),
    h('div', {class: 'row'}, h('button', {type: 'button', class: 'primary', onclick: act('gguf')}, 'Download GGUF'),
      h('button', {type: 'button', onclick: act('modelfile')}, 'Download Modelfile for Ollama')),
    status, h('p', {}, 'Then, with Ollama installed:'), command,
    h('p', {class: 'muted small'}, 'LM Studio and llama.cpp take the GGUF file alone.'));
}

function perplexityTable(rows) {
  return h('table', {}, h('thead', {}, h('tr', {}, ['Text', 'Base', 'Tuned', 'Change', 'What it shows'].map((t) => h('th', {scope: 'col'}, t)))),
    h('tbody', {}, rows.map((r) => {
      const change = r.base && r.tuned ? (r.tuned / r.base - 1) * 100 : null;
      return h('tr', {}, h('td', {}, r.label), h('td', {class: 'num'}, num(r.base)), h('td', {class: 'num'}, num(r.tuned)),
        h('td', {class: 'num'}, change === null ? '–' : `${change > 0 ? '+' : ''}${change.toFixed(1)}%`),
        h('td', {}, r.meaning));
    })));
}

function percent(v) {
  const p = 100 * v;
  return p >= 10 ? `${Math.round(p)}%` : p >= 0.1 ? `${p.toFixed(1)}%` : p > 0 ? '<0.1%' : '0';
}

function heatMap(layers) {
  // Modules and rows that did not move at all (a LoRA run's norms and biases) are left out.
  const moved = layers.filter((l) => l.change > 0);
  if (!moved.length) return h('p', {class: 'muted'}, 'No weight changed.');
  const kinds = [...new Set(moved.map((l) => l.kind))];
  const blocks = [...new Set(moved.map((l) => l.block))].sort((a, b) => (a ?? 1e9) - (b ?? 1e9));
  const value = new Map(moved.map((l) => [`${l.block}|${l.kind}`, l.change]));
  const most = Math.max(...moved.map((l) => l.change));
  const table = h('table', {class: 'heat'}, h('caption', {class: 'muted small'}, 'Weight change relative to the base weight, per block (rows) and module (columns); darker is more.'),
    h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'block'), kinds.map((k) => h('th', {scope: 'col'}, k)))),
    h('tbody', {}, blocks.map((b) => h('tr', {}, h('th', {scope: 'row'}, b === null ? 'outside blocks' : String(b)),
      kinds.map((k) => {
        const v = value.get(`${b}|${k}`);
        const cell = h('td', {title: v === undefined ? 'not changed' : `${k} in block ${b}: ${percent(v)}`},
          v === undefined ? '' : percent(v));
        if (v !== undefined) cell.dataset.level = String(Math.round(100 * v / most));
        return cell;
      })))));
  for (const cell of table.querySelectorAll('td[data-level]')) {
    const level = Number(cell.dataset.level) / 100;
    cell.style.background = `rgba(29, 78, 216, ${0.08 + 0.85 * level})`;
    cell.style.color = level > 0.5 ? '#fff' : '#111';
  }
  return h('div', {class: 'scroll'}, table);
}

function preferenceTable(p) {
  const pct = (v) => `${(100 * v).toFixed(1)}%`;
  return h('table', {}, h('thead', {}, h('tr', {}, ['Held-out pairs', 'Base', 'Tuned', 'What it shows'].map((t) => h('th', {scope: 'col'}, t)))),
    h('tbody', {},
      h('tr', {}, h('td', {}, `Chosen answer preferred (${p.split}, ${p.pairs} pairs)`), h('td', {class: 'num'}, pct(p.base_accuracy)),
        h('td', {class: 'num'}, pct(p.tuned_accuracy)), h('td', {}, 'learning: higher after tuning means it learned the preference')),
      h('tr', {}, h('td', {}, 'Log-probability margin, chosen minus rejected'), h('td', {class: 'num'}, num(p.base_margin)),
        h('td', {class: 'num'}, num(p.tuned_margin)), h('td', {}, 'how strongly: the mean over the pairs, in nats'))));
}

function verdict(r) {
  const learn = r.perplexity_rows.find((row) => row.role === 'learning');
  const general = r.perplexity_rows.find((row) => row.role === 'forgetting');
  const out = [];
  const p = r.preference;
  if (p) {
    const gained = p.tuned_accuracy - p.base_accuracy;
    out.push(gained > 0.05 || (p.tuned_margin > p.base_margin + 0.5 && p.tuned_accuracy >= p.base_accuracy)
      ? `It learned the preference: on ${p.pairs} held-out pairs it prefers the chosen answer ${Math.round(100 * p.tuned_accuracy)}% of the time (the base ${Math.round(100 * p.base_accuracy)}%), by a log-probability margin of ${num(p.tuned_margin, 3)} (the base ${num(p.base_margin, 3)}).`
      : `Little sign of learning the preference: ${Math.round(100 * p.tuned_accuracy)}% of held-out pairs against the base's ${Math.round(100 * p.base_accuracy)}% (train longer, raise the learning rate or beta, or check the pairs with lmtune data inspect).`);
  }
  if (learn && learn.base && learn.tuned) {
    const fell = 1 - learn.tuned / learn.base;
    out.push(fell > 0.05 ? `It learned: perplexity on this run's data fell ${Math.round(100 * fell)}%.`
      : 'Little sign of learning: perplexity on this run\'s data hardly fell (train longer, or raise the learning rate).');
  }
  if (general && general.base && general.tuned) {
    const rose = general.tuned / general.base - 1;
    const fix = r.method === 'lora' ? 'a lower learning rate or fewer epochs forget less' : 'LoRA (method lora) or a lower learning rate forgets less';
    out.push(rose > 0.1 ? `Some forgetting: perplexity on general text rose ${Math.round(100 * rose)}% (${fix}).`
      : 'No sign of forgetting on general text.');
  }
  if (r.verbatim) out.push(`${r.verbatim} sample(s) repeated a training example word for word: it may be memorising.`);
  return out.length ? h('p', {class: 'verdict'}, h('strong', {}, out.join(' '))) : null;
}

export function renderLearned(r) {
  return h('div', {},
    verdict(r),
    r.note ? h('p', {class: 'muted'}, r.note) : null,
    r.preference ? preferenceTable(r.preference) : null,
    perplexityTable(r.perplexity_rows || []),
    h('h3', {}, 'Where the weights changed'), heatMap(r.heat || []),
    h('h3', {}, 'Memorisation'),
    r.memorization ? h('p', {}, r.memorization) : h('p', {class: 'muted'}, 'No samples were checked.'));
}

export function learnedCard(id) {
  const out = h('div', {'aria-live': 'polite'});
  const button = h('button', {type: 'button', class: 'primary'}, 'Measure');
  button.addEventListener('click', async () => {
    button.disabled = true;
    clear(out, h('p', {class: 'muted'}, 'Loading base and tuned models and measuring perplexity (seconds on a small model, minutes on a large one; kept for next time)…'));
    try { clear(out, renderLearned(adapt(await post(`/lmtune/runs/${encodeURIComponent(id)}/learned`)))); }
    catch (err) { clear(out, errorBox(err)); }
    button.disabled = false;
  });
  return section('Did it learn?', h('p', {}, 'Base against tuned on the run\'s held-out data (learning: perplexity, or for preference pairs how often the chosen answer is preferred) and on general English text (forgetting), where the weights moved, and how much of the samples was copied from the training data.'),
    button, out);
}

// The analysis result (analysis/learned.py) in the shape the renderers above take.
export function adapt(r) {
  const rows = [];
  if (r.learning) {
    rows.push({role: 'learning', label: `This run's data (${r.learning.split}, ${r.learning.examples} examples)`,
               base: r.learning.base_perplexity, tuned: r.learning.tuned_perplexity,
               meaning: 'learning: lower after tuning means it learned the data'});
  }
  if (r.forgetting) {
    rows.push({role: 'forgetting', label: `General text: ${r.forgetting.data}`,
               base: r.forgetting.base_perplexity, tuned: r.forgetting.tuned_perplexity,
               meaning: 'forgetting: much higher after tuning means it lost general language'});
  }
  const tensors = (r.weights && r.weights.tensors) || [];
  const heat = tensors.filter((t) => typeof t.relative_change === 'number')
    .map((t) => ({block: t.block, kind: (t.module || t.name).replace(/\.weight$/, ''), change: t.relative_change}));
  const m = r.memorization;
  const memorization = m && m.samples ? `At step ${m.step}: ${m.samples} samples, ${m.verbatim_samples || 0} of them a whole training example word for word; ` +
    `longest run copied from the training data ${m.max_copied_tokens} tokens (mean ${m.mean_copied_tokens}).` : null;
  return {note: r.note, perplexity_rows: rows, heat, memorization, method: r.method, preference: r.preference,
          verbatim: m ? m.verbatim_samples || 0 : 0};
}

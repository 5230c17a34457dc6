import {get, post} from './api.js';
import {clear, duration, errorBox, field, h, label, num, section} from './dom.js';
import {DATA_OPTIONS} from './data.js';

// Each field shows the typed config's default and help text (GET /lmtune/config), so the
// page, `lmtune train --help` and the docs cannot disagree.
function input(f, value, config) {
  if (f.choices) {
    const none = f.default === null ? h('option', {value: ''}, 'chosen for the data') : null;
    return h('select', {name: f.name}, none, f.choices.map((c) => h('option', {value: c, selected: c === (value || f.default)}, c)));
  }
  const numeric = ['int', 'float', 'int | None', 'float | None'].includes(f.type);
  const attrs = {name: f.name, value: value ?? (f.default ?? '')};
  if (numeric) Object.assign(attrs, {inputmode: 'decimal'});
  if (f.name === 'lr') attrs.placeholder = "the method's default";
  else if (f.name === 'beta') attrs.placeholder = "the loss's default (dpo only)";
  else if (f.default === null) attrs.placeholder = 'chosen for the data';
  if (f.name === 'model') attrs.list = 'new-models';
  return h('input', attrs);
}

function number(value) {
  const x = Number(value);
  return value === '' || Number.isNaN(x) ? value : x;
}

export function jobRequest(values, fileId, validationId, suffix, kind = 'supervised') {
  const body = {model: values.model, training_file: fileId, lmtune: {}};
  if (validationId) body.validation_file = validationId;
  if (suffix) body.suffix = suffix;
  if (values.seed !== '') body.seed = Number(values.seed);
  const hyper = {};
  if (values.epochs !== '') hyper.n_epochs = Math.max(1, Math.round(Number(values.epochs)));
  if (values.batch_size !== '') hyper.batch_size = Number(values.batch_size);
  if (kind === 'dpo' && values.beta !== '') hyper.beta = Number(values.beta);
  body.method = {type: kind, [kind]: {hyperparameters: hyper}};
  for (const name of ['method', 'lr', 'val_split', 'block_size', ...DATA_OPTIONS]) {
    if (values[name] !== '' && values[name] !== undefined) body.lmtune[name] = number(values[name]);
  }
  for (const name of DATA_OPTIONS) if (typeof body.lmtune[name] === 'number') body.lmtune[name] = String(body.lmtune[name]);
  return body;
}

export async function showNewJob(main, params) {
  const [config, files] = await Promise.all([get('/lmtune/config'), get('/v1/files')]);
  main.append(h('h1', {}, 'New fine-tuning job'));
  if (!files.data.length) {
    main.append(section('Data first', h('p', {}, 'Upload a data file on the ', h('a', {href: '#/data'}, 'Data'), ' page first.')));
    return null;
  }
  const chosen = params.get('file') || files.data[0].id;
  const fileSelect = h('select', {name: 'training_file'}, files.data.map((f) =>
    h('option', {value: f.id, selected: f.id === chosen}, `${f.filename} (${f.id})`)));
  const validSelect = h('select', {name: 'validation_file'}, h('option', {value: ''}, 'none: hold out a split of the training data'),
    files.data.map((f) => h('option', {value: f.id}, `${f.filename} (${f.id})`)));
  const suffix = h('input', {name: 'suffix', maxlength: 64, placeholder: 'e.g. quotes'});
  const kind = h('select', {name: 'kind'},
    h('option', {value: 'supervised'}, 'supervised: learn the texts'),
    h('option', {value: 'dpo'}, 'dpo: prefer the chosen answers'));
  kind.value = params.get('kind') || 'supervised';
  const inputs = {};
  const fields = config.fields.map((f) => {
    const fallback = f.name === 'model' ? config.served[0] : undefined;
    inputs[f.name] = input(f, params.get(f.name) ?? fallback, config);
    return field(label(f.name), inputs[f.name], f.help);
  });
  const estimateOut = h('div', {'aria-live': 'polite'});
  const startOut = h('div', {'aria-live': 'polite'});
  const values = () => Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
  const form = h('form', {class: 'options'},
    h('datalist', {id: 'new-models'}, config.served.map((m) => h('option', {value: m}))),
    h('div', {class: 'grid2'},
      h('div', {}, field('Training file', fileSelect), field('Validation file', validSelect),
        field('What to learn', kind, 'dpo takes pairs: OpenAI\'s {"input", "preferred_output", "non_preferred_output"} or {"prompt", "chosen", "rejected"}; Beta applies to it alone.'),
        field('Name suffix', suffix, 'Part of the fine-tuned model\'s name: ft:MODEL:SUFFIX:ID.'),
        h('p', {}, h('a', {href: `#/data?file=${encodeURIComponent(chosen)}`}, 'See this file as training will see it'))),
      h('div', {class: 'grid2'}, fields)),
    h('div', {class: 'row'},
      h('button', {type: 'button', onclick: estimate}, 'Estimate time on this machine'),
      h('button', {type: 'submit', class: 'primary'}, 'Start training')),
    estimateOut, startOut);
  async function estimate() {
    clear(estimateOut, h('p', {class: 'muted'}, 'Timing a few real training steps (a dry run; nothing is written)…'));
    try {
      const v = values();
      const body = {training_file: fileSelect.value, kind: kind.value};
      for (const [k, x] of Object.entries(v)) if (x !== '') body[k] = x;
      const r = await post('/lmtune/estimate', body);
      clear(estimateOut, h('p', {class: 'estimate'},
        `About ${duration(r.seconds_per_epoch)} per epoch, ${duration(r.seconds_training)} for ${num(r.plan.total_steps)} steps `,
        `(${r.seconds_per_step.toFixed(2)} s per step on ${r.device} in ${r.precision}; batch ${r.plan.batch_size} × block ${r.plan.block_size}).`));
    } catch (err) { clear(estimateOut, errorBox(err)); }
  }
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clear(startOut, h('p', {class: 'muted'}, 'Starting…'));
    try {
      const job = await post('/v1/fine_tuning/jobs', jobRequest(values(), fileSelect.value, validSelect.value, suffix.value.trim(), kind.value));
      location.hash = `#/run/${encodeURIComponent(job.id)}`;
    } catch (err) { clear(startOut, errorBox(err)); }
  });
  main.append(section('Settings', form));
  return null;
}

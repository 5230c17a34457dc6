import {events, get} from './api.js';
import {clear, errorBox, field, h, section} from './dom.js';

// Base and tuned side by side: the same prompt, settings and seed to both, each streamed as
// it generates (OpenAI's own streaming API, so what is seen here is what a client gets).
function modelSelect(models, chosen) {
  return h('select', {}, models.map((m) => h('option', {value: m, selected: m === chosen}, m)));
}

async function generate(pane, body, chat, signal) {
  const out = h('p', {class: 'output', 'aria-live': 'polite'});
  const meta = h('p', {class: 'muted small'});
  clear(pane.box, out, meta);
  const path = chat ? '/v1/chat/completions' : '/v1/completions';
  const started = performance.now();
  let pieces = 0, finish = null;
  try {
    await events('POST', path, {...body, model: pane.select.value, stream: true}, (event, data) => {
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const text = chat ? (choice.delta && choice.delta.content) || '' : choice.text || '';
      if (text) { out.append(text); pieces++; }
      if (choice.finish_reason) finish = choice.finish_reason;
    }, signal);
    const seconds = (performance.now() - started) / 1000;
    meta.textContent = `${pieces} pieces in ${seconds.toFixed(1)} s · ${finish === 'stop' ? 'stopped on its own' : finish === 'length' ? 'cut at the token limit' : finish || ''}`;
  } catch (err) {
    if (!signal.aborted) pane.box.append(errorBox(err));
  }
}

export async function showPlay(main, params) {
  const list = await get('/v1/models');
  const models = list.data.filter((m) => m.task !== 'classify').map((m) => m.id);
  if (!models.length) {
    main.append(h('h1', {}, 'Playground'), errorBox('this server serves no language model'));
    return null;
  }
  const isTuned = (m) => m.startsWith('ft:') || m.startsWith('run:');
  const tuned = models.filter((m) => isTuned(m) && !m.includes(':ckpt-step-'));
  const base = params.get('a') || models.find((m) => !isTuned(m)) || models[0];
  const other = params.get('b') || tuned[tuned.length - 1] || models[0];
  for (const m of [base, other]) if (!models.includes(m)) models.push(m);
  const panes = [{label: 'Model A', select: modelSelect(models, base), box: h('div', {class: 'pane-out'})},
                 {label: 'Model B', select: modelSelect(models, other), box: h('div', {class: 'pane-out'})}];
  const mode = h('select', {}, h('option', {value: 'prompt'}, 'prompt: text to continue'),
                 h('option', {value: 'chat'}, 'chat: the chat template'));
  mode.value = params.get('mode') || 'prompt';
  const system = h('input', {placeholder: 'optional'});
  const prompt = h('textarea', {rows: 4, required: true}, params.get('prompt') || '');
  const maxTokens = h('input', {type: 'number', min: 1, max: 512, value: 80});
  const temperature = h('input', {type: 'number', min: 0, max: 2, step: 'any', value: 0.8});
  const topP = h('input', {type: 'number', min: 0.01, max: 1, step: 'any', value: 0.95});
  const seed = h('input', {type: 'number', value: 0});
  const systemField = field('System message', system);
  const showSystem = () => { systemField.hidden = mode.value !== 'chat'; };
  mode.addEventListener('change', showSystem);
  showSystem();
  let abort = null;
  const stop = h('button', {type: 'button', disabled: true, onclick: () => abort && abort.abort()}, 'Stop');
  const form = h('form', {class: 'play'},
    h('div', {class: 'grid2'}, panes.map((p) => field(p.label, p.select))),
    field('Mode', mode), systemField, field('Prompt', prompt),
    h('div', {class: 'grid4'}, field('Max tokens', maxTokens), field('Temperature', temperature),
      field('Top p', topP), field('Seed', seed, 'The same for both models.')),
    h('div', {class: 'row'}, h('button', {type: 'submit', class: 'primary'}, 'Generate with both'), stop));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (abort) abort.abort();
    abort = new AbortController();
    stop.disabled = false;
    const chat = mode.value === 'chat';
    const settings = {max_tokens: Number(maxTokens.value), temperature: Number(temperature.value),
                      top_p: Number(topP.value), seed: Number(seed.value)};
    const body = chat
      ? {...settings, messages: [...(system.value.trim() ? [{role: 'system', content: system.value}] : []),
                                 {role: 'user', content: prompt.value}]}
      : {...settings, prompt: prompt.value};
    await Promise.all(panes.map((p) => generate(p, body, chat, abort.signal)));
    stop.disabled = true;
  });
  main.append(h('h1', {}, 'Playground'), section('Ask both', form),
    h('div', {class: 'grid2 panes'}, panes.map((p) => section(p.label, h('p', {class: 'muted small'}, p.select.value), p.box))));
  for (const p of panes) {
    p.select.addEventListener('change', () => { p.box.previousElementSibling.textContent = p.select.value; });
  }
  return () => abort && abort.abort();
}

import {events, post} from './api.js';
import {ago, append, clear, errorBox, h, modelName, num, section, statusBadge} from './dom.js';
import {Charts} from './charts.js';
import {exportCard, learnedCard} from './learned.js';

const LIVE = ['validating_files', 'queued', 'running', 'paused'];
const RETRY_MS = 2000;

function controls(job, out) {
  if (!job) return null;
  const act = (what) => async () => {
    try { await post(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/${what}`); }
    catch (err) { clear(out, errorBox(err)); }
  };
  const s = job.status;
  return h('div', {class: 'row'},
    ['queued', 'running'].includes(s) ? h('button', {type: 'button', onclick: act('pause')}, 'Pause') : null,
    s === 'paused' ? h('button', {type: 'button', onclick: act('resume')}, 'Resume') : null,
    LIVE.includes(s) ? h('button', {type: 'button', class: 'danger', onclick: act('cancel')}, 'Cancel') : null);
}

function sampleItem(s) {
  const copied = s.copied_tokens
    ? `longest run copied from the training data: ${s.copied_tokens} tokens` : 'nothing copied from the training data';
  return h('li', {class: 'sample'},
    h('div', {class: 'muted small'}, `step ${s.step} · ${copied}${s.verbatim ? ' · a whole training example, verbatim' : ''}`),
    h('p', {class: 'sample-text'}, s.prompt ? h('span', {class: 'prompt'}, s.prompt) : null, h('span', {}, s.text)));
}

function eventItem(e) {
  return h('li', {class: `event level-${e.level}`},
    h('time', {datetime: new Date(e.created_at * 1000).toISOString()}, new Date(e.created_at * 1000).toLocaleTimeString()),
    ' ', e.message);
}

function checkpointItem(c) {
  const m = c.metrics || {};
  return h('li', {}, `step ${c.step}`,
    m.train_loss != null ? ` · training loss ${num(m.train_loss)}` : '',
    m.valid_loss != null ? ` · validation loss ${num(m.valid_loss)}` : '',
    c.model ? [' · ', h('a', {href: `#/play?b=${encodeURIComponent(c.model)}`}, 'try it')] : null);
}

export async function showRun(main, id) {
  const title = h('h1', {}, id);
  const header = h('div', {class: 'run-head'});
  const controlsBox = h('div');
  const problems = h('div', {'aria-live': 'polite'});
  const charts = new Charts();
  const samples = h('ol', {class: 'samples', reversed: true});
  const checkpoints = h('ul', {class: 'checkpoints'});
  const eventsList = h('ol', {class: 'events'});
  const eventsCard = section('Events', h('div', {class: 'scroll events-box'}, eventsList));
  eventsCard.hidden = !id.startsWith('ftjob-');  // a command-line run's events went to its console
  const extra = h('div');
  main.append(h('div', {class: 'head'}, title, controlsBox), header, problems,
    section('Training', charts.el),
    h('div', {class: 'grid2'},
      section('Samples', h('p', {class: 'muted small'}, 'Generated during training from the run\'s prompts, each checked against the training data for copying.'), samples),
      h('div', {}, section('Checkpoints', checkpoints), eventsCard)),
    extra);
  const abort = new AbortController();
  let state = {};
  let seenSamples = new Set();
  let extrasFor = null;

  function showHead() {
    const r = state.run || {};
    const job = state.job;
    title.textContent = r.name || id;
    const total = state.total_steps || r.total_steps;
    charts.setTotal(total);
    const progress = total ? h('progress', {max: total, value: r.step || 0, 'aria-label': 'training progress'}) : null;
    clear(header, h('p', {},
      statusBadge(job ? job.status : r.status), ' ', h('strong', {}, modelName(r.model)), ` · ${r.method || ''} · data ${r.data || ''} · started ${ago(r.created_at)}`),
      h('p', {}, progress, ` step ${r.step || 0}${total ? ` of ${total}` : ''} · training loss ${num(r.train_loss)} · validation loss ${num(r.valid_loss)}`,
        job && job.trained_tokens ? ` · ${num(job.trained_tokens)} tokens trained` : '',
        job && job.estimated_finish && job.status === 'running' ? ` · done in about ${Math.max(0, Math.round((job.estimated_finish - Date.now() / 1000) / 60))} min` : ''),
      job && job.error ? errorBox(`${job.error.code}: ${job.error.message}`) : null,
      job && job.fine_tuned_model ? h('p', {}, 'Model: ', h('code', {}, job.fine_tuned_model), ' · ',
        h('a', {href: `#/play?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(job.fine_tuned_model)}`}, 'Try it next to the base')) : null,
      !job && r.status === 'succeeded' ? h('p', {}, 'Model: ', h('code', {}, id), ' · ',
        h('a', {href: `#/play?b=${encodeURIComponent(id)}`}, 'Try it next to the base')) : null);
    clear(controlsBox, controls(job, problems));
    const finished = job ? job.status === 'succeeded' : r.status === 'succeeded';
    if (finished && extrasFor !== id) {
      extrasFor = id;
      // A command-line run is served as "run:NAME" (loaded on first use), as a job's model is.
      const model = job ? job.fine_tuned_model : id;
      append(extra, [learnedCard(id), model ? exportCard(model) : null]);
    }
  }

  function addSamples(records, reset) {
    if (reset) { seenSamples = new Set(); clear(samples); }
    for (const s of records) {
      const key = `${s.step}\u0000${s.prompt}\u0000${s.text}`;
      if (seenSamples.has(key)) continue;
      seenSamples.add(key);
      samples.prepend(sampleItem(s));
    }
  }

  function addEvents(list) {
    for (const e of list) {
      if (e.data && e.data.total_steps) state.total_steps = e.data.total_steps;
      eventsList.append(eventItem(e));
    }
    eventsList.parentElement.scrollTop = eventsList.parentElement.scrollHeight;
  }

  const handlers = {
    snapshot(d) {
      state = {run: d.run, job: d.job};
      charts.add(d.metrics, true);
      addSamples(d.samples, true);
      clear(eventsList);
      addEvents(d.events);
      clear(checkpoints, d.checkpoints.length ? d.checkpoints.map(checkpointItem) : h('li', {class: 'muted'}, 'none yet'));
      showHead();
    },
    metrics(d) { charts.add(d.records, d.reset); },
    samples(d) { addSamples(d.records, d.reset); },
    events(d) { addEvents(d); showHead(); },
    run(d) { state.run = d; showHead(); },
    job(d) { state.job = d; showHead(); },
    checkpoints(d) { clear(checkpoints, d.length ? d.map(checkpointItem) : h('li', {class: 'muted'}, 'none yet')); },
  };

  // Follow while the run can still change; a dropped connection reconnects and gets the
  // whole record again (the page keeps nothing the server does not have).
  (async () => {
    while (!abort.signal.aborted) {
      try {
        await events('GET', `/lmtune/runs/${encodeURIComponent(id)}/stream`, undefined, (event, data) => {
          const handler = handlers[event];
          if (handler) handler(JSON.parse(data));
          const status = state.job ? state.job.status : state.run && state.run.status;
          if (event === 'snapshot' && status && !LIVE.includes(status) && status !== 'running') abort.abort();
        }, abort.signal);
      } catch (err) {
        if (abort.signal.aborted) return;
        console.warn('run stream:', err);
        if (err.status === 404) { clear(problems, errorBox(err)); return; }
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  })();
  return () => { abort.abort(); charts.close(); };
}

import {get} from './api.js';
import {ago, clear, h, modelName, num, section, statusBadge} from './dom.js';

const REFRESH_MS = 3000;

function row(r) {
  const link = h('a', {href: `#/run/${encodeURIComponent(r.id)}`}, r.name);
  const progress = r.total_steps ? `${r.step} / ${r.total_steps}` : (r.step ? `${r.step}` : '–');
  return h('tr', {},
    h('td', {}, link, h('div', {class: 'muted small'}, r.kind === 'job' ? r.id : 'command-line run')),
    h('td', {}, statusBadge(r.status)),
    h('td', {class: 'wrap'}, modelName(r.model)),
    h('td', {}, r.method),
    h('td', {class: 'wrap'}, r.data),
    h('td', {class: 'num'}, progress),
    h('td', {class: 'num'}, num(r.train_loss)),
    h('td', {class: 'num'}, num(r.valid_loss)),
    h('td', {}, ago(r.created_at)));
}

export async function showRuns(main) {
  const body = h('tbody');
  const table = h('table', {class: 'runs'},
    h('caption', {class: 'sr-only'}, 'Runs and fine-tuning jobs'),
    h('thead', {}, h('tr', {}, ['Run', 'Status', 'Model', 'Method', 'Data', 'Step',
                                'Train loss', 'Val. loss', 'Started'].map(
      (t) => h('th', {scope: 'col'}, t)))), body);
  const empty = h('p', {class: 'muted', hidden: true},
    'No runs yet. Upload data and start a job, or train from the command line into the ',
    'server\'s runs folder.');
  main.append(h('div', {class: 'head'}, h('h1', {}, 'Runs and jobs'),
                h('a', {class: 'button primary', href: '#/new'}, 'New job')),
              section('All runs', h('div', {class: 'scroll'}, table), empty));
  let stopped = false, timer = null;
  async function refresh() {
    const list = await get('/lmtune/runs');
    clear(body, list.data.map(row));
    empty.hidden = list.data.length > 0;
    const live = list.data.some((r) => ['running', 'queued', 'validating_files'].includes(r.status));
    if (!stopped) timer = setTimeout(() => refresh().catch(() => null), live ? REFRESH_MS : 4 * REFRESH_MS);
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

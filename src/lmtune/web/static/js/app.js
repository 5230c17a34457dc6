// The router: the address (#/run/ID, #/data, ...) says what is shown, so a reload or a
// second browser shows the same thing; the page keeps nothing that the server does not.
import {key, setKey, setKeyAsker, get} from './api.js';
import {clear, errorBox} from './dom.js';
import {showRuns} from './runs.js';
import {showData} from './data.js';
import {showNewJob} from './newjob.js';
import {showRun} from './run.js';
import {showPlay} from './play.js';

const main = document.getElementById('main');
let leaving = null;  // the current view's clean-up (a stream to close)

function askForKey() {
  const dialog = document.getElementById('key-dialog');
  const input = document.getElementById('key-input');
  const error = document.getElementById('key-error');
  document.getElementById('key-button').hidden = false;
  return new Promise((resolve) => {
    if (key()) { error.textContent = 'That key was not accepted.'; error.hidden = false; }
    input.value = '';
    dialog.addEventListener('close', () => { setKey(input.value.trim()); resolve(); },
                            {once: true});
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

async function route() {
  if (leaving) { leaving(); leaving = null; }
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').map(decodeURIComponent);
  const tab = {'': 'runs', data: 'data', new: 'new', play: 'play', run: 'runs'}[parts[0]];
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.tab === tab) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  clear(main);
  try {
    if (parts[0] === 'run' && parts[1]) leaving = await showRun(main, parts[1]);
    else if (parts[0] === 'data') leaving = await showData(main, params);
    else if (parts[0] === 'new') leaving = await showNewJob(main, params);
    else if (parts[0] === 'play') leaving = await showPlay(main, params);
    else leaving = await showRuns(main);
  } catch (e) {
    main.append(errorBox(e));
  }
}

setKeyAsker(askForKey);
document.getElementById('key-button').addEventListener('click', async () => {
  await askForKey();
  route();
});
window.addEventListener('hashchange', route);
// The skip link moves focus to the content; followed as a link, its #main would be read
// as a route and show the runs list instead of the page the user was on.
document.querySelector('.skip').addEventListener('click', (e) => { e.preventDefault(); main.focus(); });
get('/health').catch(() => null);
if (key()) document.getElementById('key-button').hidden = false;
route();

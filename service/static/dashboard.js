// The dashboard: executions moving live (the feed), one execution's nodes and log (its own
// socket), start and cancel. Everything live goes through live-client.js.
import { TERMINAL_STATUSES, tokenExpiry, watchExecution, watchFeed } from './live-client.js';

const TOKEN_KEY = 'aiagent-live.token';
const LIST_LIMIT = 50;
const $ = (id) => document.getElementById(id);

const app = {
  token: null,
  workflows: new Map(),     // id -> workflow
  executions: new Map(),    // id -> execution as REST gives it, updated from the feed
  rows: new Map(),          // id -> its <tr>, kept and updated in place
  listed: false,            // the list holds what this token may see (false before its load, and once refused)
  feed: null,
  detail: null,             // {id, watcher, status, nodes: Map, logCount, resumes}
  reloading: null,          // feed messages that arrived while the list was being (re)loaded
};
window.aiagentLive = app;   // for the curious (and for the browser tests)

// -- tokens and the API ------------------------------------------------------------------------

function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - part.length % 4) % 4)));
  } catch {
    return null;
  }
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${app.token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) tokenRefused(error.message);
    throw error;
  }
  return data;
}

function banner(text, kind = 'error') {
  const el = $('banner');
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = !text;
}

function tokenRefused(reason) {
  // What the refused token showed is no longer known to be true (rows would stay "running"
  // forever): clear it, and stop the sockets that would only be refused again.
  stopLive();
  clearList();
  banner(`The server refused this token (${reason || 'invalid token'}). Paste a valid token above: `
         + '`make run` prints one, or `python -m service token --sub you --role user`.');
  $('token-who').textContent = '';
  $('token-input').classList.add('invalid');
}

async function useToken(token) {
  stopLive();
  clearList();
  app.token = token;
  banner('');
  $('token-input').classList.remove('invalid');
  if (!token) {
    banner('Paste a bearer token to begin (`make run` prints one).', 'info');
    return;
  }
  const c = claims(token);
  if (!c) return tokenRefused('not a JWT');
  try {
    await loadWorkflows();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) banner(`Cannot reach the service: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const exp = tokenExpiry(token);
  $('token-who').textContent = `${c.sub} (${c.role})${exp ? `, until ${new Date(exp).toLocaleString()}` : ''}`;
  startFeed();
  route();
}

function stopLive() {
  app.feed?.close();
  app.feed = null;
  closeDetail();
}

// -- workflows ---------------------------------------------------------------------------------

async function loadWorkflows() {
  const page = await api('GET', '/api/v1/workflows?limit=200');
  app.workflows = new Map(page.items.map((w) => [w.id, w]));
  const options = page.items.map((w) => option(w.id, `${w.name} (${w.nodes.length} nodes)`));
  $('start-workflow').replaceChildren(...options);
  $('start-button').disabled = options.length === 0;
  const current = $('filter-workflow').value;
  $('filter-workflow').replaceChildren(option('', 'any'), ...page.items.map((w) => option(w.id, w.name)));
  $('filter-workflow').value = app.workflows.has(current) ? current : '';
}

function option(value, text) {
  const el = document.createElement('option');
  el.value = value;
  el.textContent = text;
  return el;
}

const workflowName = (id) => app.workflows.get(id)?.name || id.slice(0, 8);

// -- the list, live ----------------------------------------------------------------------------

function startFeed() {
  app.feed = watchFeed({
    getToken: () => app.token,
    onSync: () => reloadList(),   // the feed does not replay: (re)load, then apply what came since
    onStatus: (msg) => (app.reloading ? app.reloading.push(msg) : applyFeed(msg)),
    onState: (state, info) => showState($('feed-state'), `feed: ${state}`, state, info),
    onError: (error) => (error.code === 4401 ? tokenRefused(error.message) : error.fatal && banner(error.message)),
  });
}

function filters() {
  return { status: $('filter-status').value, workflow_id: $('filter-workflow').value };
}

async function reloadList() {
  const token = app.token;
  app.reloading = [];
  try {
    const query = new URLSearchParams({ limit: String(LIST_LIMIT) });
    for (const [key, value] of Object.entries(filters())) if (value) query.set(key, value);
    const page = await api('GET', `/api/v1/executions?${query}`);
    if (token !== app.token) return;   // an answer for the token used before this one
    app.executions = new Map(page.items.map((e) => [e.id, e]));
    app.listed = true;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) banner(`Cannot load executions: ${err.message}`);
  } finally {
    const queued = app.reloading || [];
    app.reloading = null;
    queued.forEach(applyFeed);
    renderList();
  }
}

function applyFeed(msg) {
  const known = app.executions.get(msg.execution_id);
  // A REST row's seq is the execution's seq when read: a status message is news only if newer.
  if (known && known.seq >= msg.seq) return;
  const { status, workflow_id } = filters();
  if ((status && msg.status !== status) || (workflow_id && msg.workflow_id !== workflow_id)) {
    app.executions.delete(msg.execution_id);
  } else {
    app.executions.set(msg.execution_id, {
      ...known,
      id: msg.execution_id, workflow_id: msg.workflow_id, status: msg.status, progress: msg.progress,
      message: msg.message, result: msg.result, error: msg.error, execution_time: msg.execution_time,
      started_at: msg.started_at, finished_at: msg.finished_at, updated_at: msg.updated_at, seq: msg.seq,
      created_at: known?.created_at || msg.updated_at,
    });
  }
  renderList();
}

function clearList() {
  app.listed = false;
  app.executions.clear();
  renderList();
}

// Each execution keeps its row: the feed updates its cells in place and new rows are inserted
// around it. A row rebuilt under the pointer between press and release swallows the click (the
// two land on different elements), and takes focus with it.
function renderList() {
  const shown = !app.listed ? [] : [...app.executions.values()]
    .sort((a, b) => (b.created_at || '').localeCompare(a.created_at || ''))
    .slice(0, LIST_LIMIT);
  const body = $('executions');
  const keep = new Set(shown.map((e) => e.id));
  for (const [id, tr] of app.rows) {
    if (!keep.has(id)) {
      tr.remove();
      app.rows.delete(id);
    }
  }
  shown.forEach((e, index) => {
    let tr = app.rows.get(e.id);
    if (!tr) app.rows.set(e.id, tr = listRow(e.id));
    updateRow(tr, e);
    // Moved only when out of place: a new row on top leaves the others where they are.
    if (body.children[index] !== tr) body.insertBefore(tr, body.children[index] || null);
  });
  const filtered = Object.values(filters()).some(Boolean);
  $('executions-empty').hidden = !app.listed || shown.length > 0 || filtered;
  $('executions-none-match').hidden = !app.listed || shown.length > 0 || !filtered;
}

function listRow(id) {
  const tr = document.createElement('tr');
  tr.dataset.id = id;
  const link = document.createElement('a');
  link.href = `#/executions/${id}`;
  link.textContent = id.slice(0, 8);
  link.className = 'mono';
  tr.append(cell(link), cell('', 'workflow'), cell(badge('')), cell(progressBar(0, '')),
            cell('', 'duration'));
  return tr;
}

function updateRow(tr, e) {
  tr.dataset.status = e.status;
  tr.classList.toggle('selected', app.detail?.id === e.id);
  setText(tr.querySelector('.workflow'), workflowName(e.workflow_id));
  const status = tr.querySelector('.badge');
  status.dataset.status = e.status;
  setText(status, e.status);
  const bar = tr.querySelector('.bar');
  bar.dataset.status = e.status;
  setProgress(bar, e.progress);
  setText(tr.querySelector('.duration'), duration(e));
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// Rows can move under a press (a new execution goes on top): the release then lands on another
// row, and the click on the table body. The row pressed is the one opened.
let pressedRow = null;
$('executions').addEventListener('pointerdown', (event) => {
  pressedRow = event.target.closest('tr[data-id]')?.dataset.id ?? null;
});
$('executions').addEventListener('click', (event) => {
  if (event.target.closest('a')) return;   // the id's link opens it by itself
  const id = event.target.closest('tr[data-id]')?.dataset.id ?? pressedRow;
  if (id) location.hash = `#/executions/${id}`;
});

function cell(content, className) {
  const td = document.createElement('td');
  if (className) td.className = className;
  td.append(content);
  return td;
}

function badge(status) {
  const el = document.createElement('span');
  el.className = 'badge';
  el.dataset.status = status;
  el.textContent = status;
  return el;
}

function progressBar(progress, status) {
  const bar = document.createElement('div');
  bar.className = 'bar';
  bar.dataset.status = status;
  setProgress(bar, progress);
  return bar;
}

function setProgress(bar, progress) {
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuenow', String(progress || 0));
  let fill = bar.firstElementChild;
  if (!fill) bar.append(fill = document.createElement('span'));
  fill.style.width = `${progress || 0}%`;
}

function seconds(value) {
  if (value < 60) return `${value.toFixed(1)} s`;
  const m = Math.floor(value / 60);
  return m < 60 ? `${m} min ${Math.floor(value % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function duration(e) {
  if (e.execution_time != null) return seconds(e.execution_time);
  if (e.started_at && !TERMINAL_STATUSES.has(e.status)) {
    return seconds(Math.max(0, (Date.now() - Date.parse(e.started_at)) / 1000));
  }
  return e.status === 'pending' ? 'waiting' : '';
}

// Running durations tick.
setInterval(() => {
  for (const tr of $('executions').children) {
    const e = app.executions.get(tr.dataset.id);
    if (e && e.status === 'running') setText(tr.querySelector('.duration'), duration(e));
  }
  if (app.detail?.status) $('detail-duration').textContent = duration(app.detail.status);
  for (const li of $('nodes').children) {
    const node = app.detail?.nodes.get(li.dataset.node);
    if (node?.status === 'running') li.querySelector('.node-time').textContent = nodeTime(node);
  }
}, 1000);

// -- one execution -----------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/executions\/([0-9a-f-]{36})$/i);
  if (!app.token) return;
  if (match) openDetail(match[1]);
  else closeDetail();
}

function closeDetail() {
  app.detail?.watcher.close();
  app.detail = null;
  $('detail').hidden = true;
  $('detail-placeholder').hidden = false;
  for (const tr of $('executions').children) tr.classList.remove('selected');
}

function openDetail(id) {
  if (app.detail?.id === id) return;
  closeDetail();
  const detail = app.detail = { id, watcher: null, status: null, nodes: new Map(), logCount: 0 };
  $('detail').hidden = false;
  $('detail-placeholder').hidden = true;
  $('detail-id').textContent = id;
  $('detail-title').textContent = 'Execution';
  $('detail-resumed').hidden = true;
  resetDetail();
  renderStatus({ status: 'pending', progress: 0, message: 'connecting…' });
  for (const tr of $('executions').children) tr.classList.toggle('selected', tr.dataset.id === id);

  detail.watcher = watchExecution(id, {
    getToken: () => app.token,
    onStatus: (msg) => { if (app.detail === detail) { detail.status = msg; renderStatus(msg); } },
    onNode: (msg) => app.detail === detail && renderNode(msg),
    onLog: (msg) => app.detail === detail && appendLog(msg),
    onResync: () => app.detail === detail && resetDetail(),
    onState: (state, info) => {
      if (app.detail !== detail) return;
      showState($('detail-state'), state, state, info);
      if (state === 'live' && info.resumed) {
        const el = $('detail-resumed');
        el.hidden = false;
        el.textContent = `resumed from seq ${info.since}` + (detail.watcher.resumes > 1 ? ` (×${detail.watcher.resumes})` : '');
      }
    },
    onError: (error) => {
      if (app.detail !== detail) return;
      if (error.code === 4401) tokenRefused(error.message);
      else if (error.code === 4404) banner(`No execution ${id.slice(0, 8)}… (or it is not yours).`);
      else if (error.fatal) banner(error.message);
    },
  });
}

function resetDetail() {
  app.detail.nodes.clear();
  app.detail.logCount = 0;
  $('nodes').replaceChildren();
  $('log').replaceChildren();
  $('log-count').textContent = '';
}

function renderStatus(msg) {
  if (msg.workflow_id) $('detail-title').textContent = workflowName(msg.workflow_id);
  const status = $('detail-status');
  status.dataset.status = msg.status;
  status.textContent = msg.status;
  const bar = $('detail-progress');
  bar.dataset.status = msg.status;
  setProgress(bar, msg.progress);
  $('detail-progress-text').textContent = `${msg.progress || 0}%`;
  $('detail-duration').textContent = msg.execution_id ? duration(msg) : '';
  $('detail-message').textContent = msg.message || '';
  showBlock($('detail-result'), msg.result != null ? JSON.stringify(msg.result, null, 2) : null);
  showBlock($('detail-error'), msg.error || null);
  $('cancel-button').hidden = !msg.execution_id || TERMINAL_STATUSES.has(msg.status);
}

function showBlock(el, text) {
  el.hidden = text == null;
  el.querySelector('pre').textContent = text ?? '';
}

function nodeTime(node) {
  if (!node.started_at) return '';
  const end = node.finished_at ? Date.parse(node.finished_at) : Date.now();
  return seconds(Math.max(0, (end - Date.parse(node.started_at)) / 1000));
}

function renderNode(node) {
  app.detail.nodes.set(node.node_id, node);
  let li = $('nodes').querySelector(`li[data-node="${CSS.escape(node.node_id)}"]`);
  if (!li) {
    li = document.createElement('li');
    li.dataset.node = node.node_id;
    li.innerHTML = '<span class="dot"></span><span class="node-title"></span><span class="node-status"></span>'
                 + '<span class="node-time muted"></span><div class="node-detail"></div>';
    $('nodes').append(li);
  }
  li.dataset.status = node.status;
  li.querySelector('.node-title').textContent = node.title;
  li.querySelector('.node-status').textContent = node.status + (node.attempt > 1 ? ` · attempt ${node.attempt}` : '');
  li.querySelector('.node-time').textContent = nodeTime(node);
  const detail = node.error || (node.output != null
    ? (typeof node.output === 'string' ? node.output : JSON.stringify(node.output)) : '');
  li.querySelector('.node-detail').textContent = detail.length > 160 ? `${detail.slice(0, 160)}…` : detail;
}

function appendLog(line) {
  const log = $('log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  const li = document.createElement('li');
  li.dataset.seq = line.seq;
  li.dataset.level = line.level;
  const time = document.createElement('time');
  time.textContent = new Date(line.ts).toLocaleTimeString();
  const node = document.createElement('span');
  node.className = 'log-node';
  node.textContent = line.node_id || '';
  const text = document.createElement('span');
  text.className = 'log-text';
  text.textContent = line.message;
  li.append(time, node, text);
  log.append(li);
  app.detail.logCount += 1;
  $('log-count').textContent = `(${app.detail.logCount} line${app.detail.logCount === 1 ? '' : 's'})`;
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// -- connection state --------------------------------------------------------------------------

function showState(el, label, state, info = {}) {
  el.dataset.state = state;
  let text = label;
  if (state === 'reconnecting' && info.delayMs !== undefined) {
    text += ` in ${(info.delayMs / 1000).toFixed(1)} s` + (info.code ? ` (closed ${info.code})` : '');
  }
  el.textContent = text;
}

// -- actions -----------------------------------------------------------------------------------

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  useToken($('token-input').value.trim());
});

$('filter-status').addEventListener('change', () => reloadList());
$('filter-workflow').addEventListener('change', () => reloadList());

$('start-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  let input;
  try {
    input = JSON.parse($('start-input').value || 'null');
  } catch {
    return banner('The input is not valid JSON.');
  }
  try {
    const execution = await api('POST', '/api/v1/executions', { workflow_id: $('start-workflow').value, input_data: input });
    banner('');
    location.hash = `#/executions/${execution.id}`;
  } catch (err) {
    if (err.status !== 401) banner(`Could not start: ${err.message}`);
  }
});

$('cancel-button').addEventListener('click', async () => {
  if (!app.detail) return;
  try {
    await api('POST', `/api/v1/executions/${app.detail.id}/cancel`);
  } catch (err) {
    if (err.status !== 401) banner(`Could not cancel: ${err.message}`);
  }
});

window.addEventListener('hashchange', route);

// -- start -------------------------------------------------------------------------------------

const devToken = document.querySelector('meta[name="aiagent-dev-token"]')?.content;
const initial = sessionStorage.getItem(TOKEN_KEY) || devToken || '';
$('token-input').value = initial;
useToken(initial);

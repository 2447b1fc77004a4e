// The shardcron console: a hash-routed page over the REST API (docs/api.md).
// No dependencies, no build step. Every text from the API goes through text
// nodes (h() below); nothing is ever parsed as HTML.

const $ = (sel, root = document) => root.querySelector(sel);
const view = $('#view');
const SVG_NS = 'http://www.w3.org/2000/svg';

// ---------------------------------------------------------------- DOM helpers

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = true;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function build(el, attrs, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
  setAttrs(el, attrs); // after the children, so that a <select> takes its value
  return el;
}

/** An HTML element: h('a', {href: '#/x'}, 'text', child, ...). */
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
/** An SVG element. */
const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG_NS, tag), attrs, kids);

const mount = (...nodes) => view.replaceChildren(...nodes);
const enc = encodeURIComponent;
/** Show another page (the page shown stops refreshing at once). */
function go(hash) {
  if (location.hash === hash) return route();
  current = null;
  location.hash = hash;
  return undefined;
}

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, v);
  return q.toString();
}

// ------------------------------------------------------------------- the API

let session = null; // {user, role, csrf_token}, in memory only
let afterLogin = null;
const admin = () => session?.role === 'admin';

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session) headers['X-CSRF-Token'] = session.csrf_token;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (r.status === 401 && path !== '/api/login') {
    toLogin();
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}
const get = (p) => api('GET', p);
const post = (p, b) => api('POST', p, b);
const put = (p, b) => api('PUT', p, b);
const del = (p) => api('DELETE', p);

// ---------------------------------------------------------------- formatting

const pad = (n) => String(n).padStart(2, '0');

const day = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;

/** Local time; the date only when it is not today (or `full`). */
function fmtTime(t, full) {
  if (!t) return '—';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return !full && day(d) === day(new Date()) ? hms : `${day(d)} ${hms}`;
}

const clock = (ms) => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };

function fmtDur(ms) {
  if (ms == null || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${+ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} m ${Math.round(sec % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

function rel(t) {
  const ms = Date.parse(t) - Date.now();
  if (Number.isNaN(ms)) return '';
  const txt = fmtDur(Math.abs(ms));
  return ms >= 0 ? `in ${txt}` : `${txt} ago`;
}

/** A <time> showing the local time, with the UTC value and how long ago as title. */
const time = (t, full) => (t ? h('time', { datetime: t, title: `${t} (${rel(t)})` }, fmtTime(t, full)) : '—');

function duration(e) {
  if (!e.started_at) return '—';
  const end = e.ended_at ? Date.parse(e.ended_at) : Date.now();
  return fmtDur(end - Date.parse(e.started_at));
}

const badge = (status) =>
  h('span', { class: `badge st-${String(status || 'none').toLowerCase()}`, 'data-test': 'status' }, status || '—');

const onOff = (enabled) =>
  h('span', { class: `badge ${enabled ? 'on' : 'off'}`, 'data-test': 'enabled' }, enabled ? 'enabled' : 'disabled');

function table(cols, rows, empty, attrs) {
  if (!rows.length) return h('p', { class: 'muted empty', 'data-test': 'empty' }, empty || 'Nothing here yet.');
  return h('div', { class: 'scroll' },
    h('table', attrs, h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c)))), h('tbody', {}, rows)));
}

const row = (attrs, ...cells) => h('tr', attrs, cells.map((c) => h('td', {}, c)));
const dl = (pairs) => h('dl', { class: 'props' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
const section = (test, title, ...kids) =>
  h('section', { 'data-test': test }, h('div', { class: 'bar' }, h('h1', {}, title[0]), title.slice(1)), kids);

// -------------------------------------------------------- messages, dialogs

let flashTimer = null;
function flash(msg, kind = 'error') {
  const f = $('#flash');
  f.textContent = msg;
  f.className = kind;
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, kind === 'error' ? 8000 : 3000);
}

function confirmBox(text) {
  const d = $('#confirm');
  $('#confirm-text').textContent = text;
  d.returnValue = '';
  d.showModal();
  return new Promise((res) => d.addEventListener('close', () => res(d.returnValue === 'ok'), { once: true }));
}

/** A button running `fn`, then refreshing the page; errors become a message. */
function btn(label, fn, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    const page = current;
    try {
      const msg = await fn();
      if (typeof msg === 'string') flash(msg, 'ok');
      if (current === page) await refreshNow();
    } catch (e) {
      if (e.status !== 401) flash(e.message);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

const confirmed = (text, fn) => async () => ((await confirmBox(text)) ? fn() : undefined);

// ---------------------------------------------------- live updates, routing

let current = null; // the refresh function of the page shown
let refreshing = null;
let again = false;

async function refreshNow(live = false) {
  const fn = current;
  if (!fn || (live && fn.live === false)) return;
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try { await fn(); } catch (e) { if (e.status !== 401 && fn === current) flash(e.message); }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; await refreshNow(live); }
}

let events = null;
let pollTimer = null;
let retryTimer = null;
let soonTimer = null;

function setLive(state) {
  const el = $('#live');
  el.textContent = state;
  el.className = `live ${state}`;
}

/** Refresh the page shown soon, at most twice a second however many events arrive. */
function soon() {
  soonTimer ??= setTimeout(() => { soonTimer = null; refreshNow(true); }, 500);
}

function stopLive() {
  events?.close();
  events = null;
  clearInterval(pollTimer);
  clearTimeout(retryTimer);
  pollTimer = retryTimer = null;
  setLive('offline');
}

function openStream() {
  events?.close();
  events = new EventSource('/api/events');
  events.addEventListener('execution', soon);
  events.onopen = () => {
    clearInterval(pollTimer);
    pollTimer = null;
    setLive('live');
    soon(); // catch up with what happened while the stream was down
  };
  events.onerror = () => {
    // Poll every 3 s instead, and try the stream again later.
    events?.close();
    events = null;
    if (!pollTimer) pollTimer = setInterval(() => { if (!document.hidden) refreshNow(true); }, 3000);
    setLive('polling');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => { if (session) openStream(); }, 15000);
  };
}

function startLive() {
  stopLive();
  openStream();
}

function toLogin() {
  session = null;
  stopLive();
  $('#top').hidden = true;
  if (location.hash !== '#/login') {
    afterLogin = location.hash;
    go('#/login');
  }
}

async function loadSession() {
  try {
    session = await get('/api/session');
  } catch (e) {
    if (e.status !== 401) flash(`Cannot reach the server: ${e.message}`);
    return false;
  }
  $('#whoami').textContent = `${session.user} (${session.role})`;
  document.body.classList.toggle('is-admin', admin());
  $('#top').hidden = false;
  if (!events && !pollTimer) startLive();
  return true;
}

const routes = [
  [/^\/login$/, loginView],
  [/^\/overview$/, overviewView],
  [/^\/jobs$/, jobsView],
  [/^\/jobs\/new$/, () => editorView(null)],
  [/^\/jobs\/([^/]+)\/edit$/, (m) => editorView(decodeURIComponent(m[1]))],
  [/^\/jobs\/([^/]+)$/, (m) => jobView(decodeURIComponent(m[1]))],
  [/^\/instances$/, instancesView],
  [/^\/history$/, historyView],
  [/^\/executions\/([^/]+)$/, (m) => executionView(decodeURIComponent(m[1]))],
  [/^\/audit$/, auditView],
  [/^\/tokens$/, tokensView],
  [/^\/users$/, usersView],
];

async function route() {
  const raw = location.hash.slice(1) || '/overview';
  const [path, search] = raw.split('?');
  const query = new URLSearchParams(search || '');
  current = null;
  if (!session && !(await loadSession()) && path !== '/login') return;
  for (const a of document.querySelectorAll('#nav a')) {
    const p = a.getAttribute('href').slice(1);
    a.classList.toggle('active', path.startsWith(p) || (p === '/history' && path.startsWith('/executions')));
  }
  const match = routes.map(([re, fn]) => [path.match(re), fn]).find(([m]) => m);
  if (!match) {
    mount(h('p', { 'data-test': 'not-found' }, 'No such page. ', h('a', { href: '#/overview' }, 'Overview')));
    return;
  }
  document.title = `${path.split('/')[1]} · shardcron`;
  const refresh = match[1](match[0], query);
  current = refresh || null;
  await refreshNow();
}

// ----------------------------------------------------------------- login

function loginView() {
  if (session) { go('#/overview'); return null; }
  $('#top').hidden = true;
  const err = h('p', { class: 'error', 'data-test': 'login-error', role: 'alert' });
  const user = h('input', { id: 'login-user', name: 'username', autocomplete: 'username', required: true, 'data-test': 'login-user' });
  const pass = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, 'data-test': 'login-password' });
  const submit = async (e) => {
    e.preventDefault();
    err.textContent = '';
    try {
      await post('/api/login', { username: user.value, password: pass.value });
      if (await loadSession()) {
        const next = afterLogin && afterLogin !== '#/login' ? afterLogin : '#/overview';
        afterLogin = null;
        go(next);
      }
    } catch (x) {
      err.textContent = x.status === 401 ? 'Wrong user name or password.'
        : x.status === 429 ? 'Too many attempts: wait a minute and try again.' : x.message;
    }
  };
  mount(h('form', { class: 'login card', 'data-test': 'login-form', onsubmit: submit },
    h('h1', {}, 'shardcron'),
    h('label', { class: 'field' }, h('span', { class: 'lbl' }, 'User'), user),
    h('label', { class: 'field' }, h('span', { class: 'lbl' }, 'Password'), pass),
    err,
    h('button', { type: 'submit', class: 'primary', 'data-test': 'login-submit' }, 'Log in')));
  user.focus();
  return null;
}

async function logout() {
  try { await post('/api/logout'); } catch { /* the session is gone either way */ }
  afterLogin = null;
  toLogin();
}

// -------------------------------------------------------------- overview

const card = (test, label, value, sub) =>
  h('div', { class: 'card stat', 'data-test': test }, h('div', { class: 'lbl' }, label), h('div', { class: 'num' }, value), sub && h('div', { class: 'muted' }, sub));

function overviewView() {
  const cards = h('div', { class: 'cards' });
  const chart = h('div');
  const running = h('div');
  const failures = h('div');
  const instances = h('div');
  mount(section('overview', ['Overview'], cards,
    h('h2', {}, 'Lateness: fire time to start, last hour'), chart,
    h('div', { class: 'cols' },
      h('div', {}, h('h2', {}, 'Running now'), running),
      h('div', {}, h('div', { class: 'bar' }, h('h2', {}, 'Failures, last 24 h'),
        h('a', { href: '#/history', 'data-test': 'failures-link', id: 'failures-link' }, 'All failures →')), failures)),
    h('h2', {}, 'Instances'), instances));
  return async () => {
    const from = new Date(Date.now() - 864e5).toISOString();
    const [o, i, f] = await Promise.all([get('/api/overview'), get('/api/instances'),
      get(`/api/executions?${qs({ status: FAILURES, from, limit: 10 })}`)]);
    const names = Object.fromEntries(i.instances.map((x) => [x.id, x.name]));
    const leader = i.instances.find((x) => x.id === o.leader);
    cards.replaceChildren(
      card('card-instances', 'Instances', o.instances, `${i.instances.filter((x) => x.enabled === false).length} disabled`),
      card('card-leader', 'Leader', o.leader_name || names[o.leader] || 'none', leader?.host),
      card('card-jobs', 'Jobs', o.jobs),
      card('card-running', 'Running', o.running.length),
      card('card-failures', 'Failures (24 h)', o.failures_24h));
    $('#failures-link').href = `#/history?${qs({ status: FAILURES, from })}`;
    chart.replaceChildren(latenessChart(o.lateness || []));
    running.replaceChildren(table(['Job', 'Item', 'Instance', 'Since', ''], o.running.map((r) =>
      row({ 'data-test': 'running-row', 'data-job': r.job, 'data-item': r.item },
        h('a', { href: `#/jobs/${enc(r.job)}` }, r.job), r.item, names[r.instance] || r.instance || '—', time(r.since),
        h('a', { href: `#/executions/${enc(r.execution_id)}` }, 'details'))), 'Nothing is running.', { 'data-test': 'running-table' }));
    failures.replaceChildren(execTable(f.executions, 'No failures in the last 24 hours.', true));
    instances.replaceChildren(instanceTable(i.instances, i.leader, false));
  };
}

/** Lateness per time bucket as an inline SVG column chart: the max as a pale
 *  column, the median as a solid one, over the last hour (or the series' span). */
function latenessChart(series) {
  const pts = series.filter((p) => !Number.isNaN(Date.parse(p.at)));
  if (!pts.length) return h('p', { class: 'muted', 'data-test': 'lateness-chart' }, 'No fires measured yet.');
  const W = 1100, H = 200, L = 64, R = 12, T = 14, B = 24;
  const xs = pts.map((p) => Date.parse(p.at));
  const step = Math.min(300e3, ...xs.slice(1).map((x, i) => x - xs[i]).filter((d) => d > 0));
  const x1 = Math.max(Date.now(), ...xs.map((x) => x + step));
  const x0 = Math.min(x1 - 3600e3, ...xs);
  const top = niceCeil(Math.max(1, ...pts.map((p) => p.max_ms || 0)));
  const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
  const Y = (v) => H - B - ((v || 0) / top) * (H - B - T);
  const bw = Math.max(2, X(x0 + step) - X(x0) - 4);
  const grid = [0, top / 2, top].map((v) => [
    s('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: 'grid' }),
    s('text', { x: L - 6, y: Y(v) + 4, class: 'axis end' }, fmtDur(v)),
  ]);
  const cols = pts.map((p) => {
    const x = X(Date.parse(p.at)) + 2;
    return s('g', { 'data-test': 'lateness-bucket' },
      s('title', {}, `${fmtTime(p.at)}: median ${fmtDur(p.p50_ms)}, max ${fmtDur(p.max_ms)}, ${p.count ?? 0} runs`),
      s('rect', { x, width: bw, y: Y(p.max_ms), height: Math.max(1, Y(0) - Y(p.max_ms)), class: 'max' }),
      s('rect', { x, width: bw, y: Y(p.p50_ms), height: Math.max(1, Y(0) - Y(p.p50_ms)), class: 'p50' }));
  });
  return s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'lateness', 'data-test': 'lateness-chart' },
    grid, cols,
    s('text', { x: L, y: H - 6, class: 'axis' }, clock(x0)),
    s('text', { x: W - R, y: H - 6, class: 'axis end' }, clock(x1)),
    s('text', { x: W - R, y: T + 4, class: 'legend end' }, s('tspan', { class: 'p50' }, '■ median  '), s('tspan', { class: 'max' }, '■ max')));
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((n) => n >= v);
}

// ------------------------------------------------------------------ jobs

function scheduleText(j) {
  if (j.cron) return `cron ${j.cron} (${j.tz || 'UTC'})`;
  if (j.every) return `every ${j.every}`;
  if (j.delay) return `${j.delay} after each run`;
  if (j.at) return `once at ${fmtTime(j.at, true)}`;
  return 'manual';
}

const jobPath = (name, rest = '') => `/api/jobs/${enc(name)}${rest}`;

function jobActions(name, enabled, attrs = {}) {
  if (!admin()) return [];
  return [
    btn('Trigger', async () => { await post(jobPath(name, '/trigger'), {}); return `Triggered ${name}`; }, { 'data-test': 'job-trigger', ...attrs }),
    btn(enabled ? 'Disable' : 'Enable', () => post(jobPath(name, enabled ? '/disable' : '/enable')), { 'data-test': 'job-toggle', ...attrs }),
    h('a', { class: 'button', href: `#/jobs/${enc(name)}/edit`, 'data-test': 'job-edit', ...attrs }, 'Edit'),
    btn('Delete', confirmed(`Delete the job "${name}"? Its history stays.`, async () => {
      await del(jobPath(name));
      if (location.hash !== '#/jobs') go('#/jobs');
      return `Deleted ${name}`;
    }), { class: 'danger', 'data-test': 'job-delete', ...attrs }),
  ];
}

function jobsView() {
  const body = h('div');
  mount(section('jobs-page', ['Jobs', admin() && h('a', { class: 'button primary', href: '#/jobs/new', 'data-test': 'new-job' }, 'New job')], body));
  return async () => {
    const d = await get('/api/jobs');
    const rows = d.jobs.map((j) => row({ 'data-test': 'job-row', 'data-job': j.name },
      h('a', { href: `#/jobs/${enc(j.name)}`, 'data-test': 'job-link' }, j.name),
      j.schedule, j.kind, j.shards, onOff(j.enabled), j.running || 0,
      j.last ? [badge(j.last.status), ' ', time(j.last.ended_at || j.last.fire_time)] : '—',
      j.next_fire ? time(j.next_fire) : '—',
      h('span', { class: 'actions' }, jobActions(j.name, j.enabled, { 'data-job': j.name }))));
    body.replaceChildren(
      d.errors?.length ? h('div', { class: 'warn', 'data-test': 'job-errors' }, h('strong', {}, 'Unreadable jobs in the registry:'), h('ul', {}, d.errors.map((e) => h('li', {}, e)))) : '',
      table(['Name', 'Schedule', 'Kind', 'Shards', 'State', 'Running', 'Last run', 'Next fire', ''], rows,
        'No jobs yet. Create one, or start an agent with a job file.', { 'data-test': 'jobs-table' }));
  };
}

function jobView(name) {
  const head = h('div'), items = h('div'), next = h('div'), timeline = h('div'), execs = h('div');
  mount(h('section', { 'data-test': 'job-page', 'data-job': name }, head,
    h('div', { class: 'cols wide-left' },
      h('div', {}, h('h2', {}, 'Items'), items),
      h('div', {}, h('h2', {}, 'Next fires'), next)),
    h('h2', {}, 'Timeline'), timeline,
    h('div', { class: 'bar' }, h('h2', {}, 'Recent executions'),
      h('a', { href: `#/history?${qs({ job: name })}`, 'data-test': 'job-history' }, 'Full history →')),
    execs));
  return async () => {
    const [d, ex] = await Promise.all([get(jobPath(name)), get(`/api/executions?${qs({ job: name, limit: 100 })}`)]);
    const j = d.job;
    head.replaceChildren(h('div', { class: 'bar' },
      h('h1', {}, j.name, ' ', onOff(j.enabled !== false)),
      h('span', { class: 'actions' }, jobActions(j.name, j.enabled !== false))),
    j.description ? h('p', { class: 'desc' }, j.description) : '',
    dl([['Schedule', scheduleText(j)], ['Kind', kindText(j)], ['Shards', String(j.shards ?? 1)],
      j.param ? ['Parameter', j.param] : null, ['Timeout', j.timeout || 'none'],
      ['Revision', String(d.revision ?? '')]]));
    items.replaceChildren(table(['Item', 'Param', 'State', 'Owner', 'Last fire', 'Last completed', ''],
      d.items.map((it) => {
        const state = !it.enabled ? 'disabled' : it.running ? 'running' : 'idle';
        return row({ 'data-test': 'item-row', 'data-item': it.item, 'data-state': state },
          it.item, it.param || '',
          h('span', { class: `badge ${state}`, 'data-test': 'item-state' }, state),
          it.owner_name || it.owner || '—', time(it.last_fire), time(it.last_completed),
          h('span', { class: 'actions' }, admin() && [
            btn(it.enabled ? 'Disable' : 'Enable', () => post(jobPath(name, `/items/${it.item}/${it.enabled ? 'disable' : 'enable'}`)),
              { 'data-test': 'item-toggle', 'data-item': it.item }),
            btn('Trigger', async () => { await post(jobPath(name, '/trigger'), { items: [it.item] }); return `Triggered item ${it.item}`; },
              { 'data-test': 'item-trigger', 'data-item': it.item }),
            it.running && cancelBtn(it.running.execution_id, { 'data-item': it.item }),
          ]));
      }), 'No items.', { 'data-test': 'items-table' }));
    next.replaceChildren(d.next_fires?.length
      ? h('ol', { class: 'times', 'data-test': 'next-fires' }, d.next_fires.map((t) => h('li', {}, time(t), h('span', { class: 'muted' }, ` ${rel(t)}`))))
      : h('p', { class: 'muted', 'data-test': 'next-fires' }, j.manual ? 'Manual: runs only when triggered.'
        : j.enabled === false ? 'Disabled: runs only when triggered.' : 'No scheduled fires.'));
    timeline.replaceChildren(timelineChart(ex.executions, j.shards ?? 1));
    execs.replaceChildren(execTable(ex.executions.slice(0, 20), 'No executions yet.', 'job'));
  };
}

const kindText = (j) => (j.command ? `script: ${joinArgs(j.command)}` : j.http ? `http: ${j.http.method || 'GET'} ${j.http.url}` : j.kind);

const cancelBtn = (id, attrs = {}) =>
  btn('Cancel', confirmed('Cancel this execution?', async () => { await post(`/api/executions/${enc(id)}/cancel`); return 'Cancel requested'; }),
    { class: 'danger', 'data-test': 'exec-cancel', 'data-id': id, ...attrs });

const shortId = (id) => (String(id).length > 14 ? `…${String(id).slice(-10)}` : String(id));

/** Executions as a table; `compact` leaves out the job (`'job'`) or the details (`true`). */
function execTable(list, empty, compact) {
  const full = compact !== true;
  const cols = ['Execution', compact === 'job' ? null : 'Job', 'Item', 'Status', full && 'Source', full && 'Instance', 'Fire time', full && 'Started', 'Took', full && ''];
  return table(cols.filter((c) => c !== null && c !== false),
    list.map((e) => h('tr', { 'data-test': 'exec-row', 'data-id': e.id, 'data-job': e.job, 'data-item': e.item, 'data-status': e.status, 'data-source': e.source, 'data-fire': e.fire_time },
      h('td', {}, h('a', { href: `#/executions/${enc(e.id)}`, class: 'mono', title: e.id, 'data-test': 'exec-link' }, shortId(e.id))),
      compact === 'job' ? null : h('td', {}, h('a', { href: `#/jobs/${enc(e.job)}` }, e.job)),
      [e.item, badge(e.status), full && (e.source || '—'), full && (e.instance || '—'), time(e.fire_time), full && time(e.started_at), duration(e)]
        .filter((c) => c !== false).map((c) => h('td', {}, c)),
      full && h('td', {}, e.status === 'RUNNING' && admin() && cancelBtn(e.id)))),
    empty, { 'data-test': 'exec-table' });
}

/** Recent runs as bars, one row per item, over time. */
function timelineChart(list, shards) {
  const runs = list.filter((e) => e.started_at || e.fire_time);
  if (!runs.length) return h('p', { class: 'muted', 'data-test': 'timeline' }, 'No runs yet.');
  const now = Date.now();
  const start = (e) => Date.parse(e.started_at || e.fire_time);
  const end = (e) => (e.ended_at ? Date.parse(e.ended_at) : e.status === 'RUNNING' ? now : start(e));
  const t1 = Math.max(now, ...runs.map(end));
  const t0 = Math.min(t1 - 60e3, ...runs.map(start));
  const items = [...new Set(runs.map((e) => e.item))].sort((a, b) => a - b).slice(0, 40);
  const W = 1100, L = 64, R = 12, T = 6, B = 22, RH = 22;
  const H = T + items.length * RH + B;
  const X = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  return s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart timeline', role: 'img', 'aria-label': 'timeline', 'data-test': 'timeline' },
    items.map((it, i) => [
      s('text', { x: L - 8, y: T + i * RH + RH / 2 + 4, class: 'axis end' }, `item ${it}`),
      s('line', { x1: L, x2: W - R, y1: T + (i + 1) * RH, y2: T + (i + 1) * RH, class: 'grid' }),
    ]),
    runs.filter((e) => items.includes(e.item)).map((e) => {
      const x = X(start(e));
      return s('rect', {
        x, y: T + items.indexOf(e.item) * RH + 3, height: RH - 6, rx: 2,
        width: Math.max(3, X(end(e)) - x), class: `bar st-${String(e.status).toLowerCase()}`, 'data-test': 'timeline-bar', 'data-item': e.item,
      }, s('title', {}, `item ${e.item} · ${e.status} · ${fmtTime(e.started_at || e.fire_time)} · ${duration(e)}`));
    }),
    s('text', { x: L, y: H - 6, class: 'axis' }, clock(t0)),
    s('text', { x: W - R, y: H - 6, class: 'axis end' }, `${clock(t1)}${shards > items.length ? ` · ${items.length} of ${shards} items ran` : ''}`));
}

// ------------------------------------------------------------ job editor

const SCHEDULES = ['cron', 'every', 'delay', 'at', 'manual'];
const FIELD_OF = { cron: 'schedule', tz: 'schedule', every: 'schedule', delay: 'schedule', at: 'schedule', manual: 'schedule', 'http.url': 'url', 'http.method': 'method', http: 'kind', catch_up_max: 'misfire' };

/** Split a command line into arguments: spaces separate, quotes group. */
function splitArgs(text) {
  return [...text.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}
const joinArgs = (args) => (args || []).map((a) => (/^[^\s"']+$/.test(a) ? a : a.includes('"') ? `'${a}'` : `"${a}"`)).join(' ');
const intOr = (v) => (v.trim() === '' ? undefined : /^-?\d+$/.test(v.trim()) ? Number(v) : v.trim());

function editorView(name) {
  const editing = name != null;
  const errs = {};
  const f = {};
  const general = h('div', { class: 'error', 'data-test': 'editor-error', role: 'alert' });
  const preview = h('div', { 'data-test': 'next-preview', class: 'preview' }, h('p', { class: 'muted' }, '…'));
  let orig = {};
  let revision = null;
  let seq = 0;
  let timer = null;
  const touched = new Set();

  const input = (key, attrs = {}) => (f[key] = h(attrs.tag || 'input', { id: `f-${key}`, name: key, 'data-test': `f-${key}`, ...attrs, tag: null }));
  const select = (key, options) => (f[key] = h('select', { id: `f-${key}`, name: key, 'data-test': `f-${key}` },
    options.map(([v, l]) => h('option', { value: v }, l))));
  const field = (key, label, control, hint, extra = {}) => {
    errs[key] = h('div', { class: 'err', 'data-test': `error-${key}` });
    return h('div', { class: 'field', 'data-field': key, ...extra },
      h('label', { class: 'lbl', for: control.id || null }, label), control, hint && h('small', { class: 'hint' }, hint), errs[key]);
  };

  const scheduleInputs = {
    cron: h('span', { class: 'inline' }, input('cron', { placeholder: '*/5 * * * *', class: 'grow' }), input('tz', { placeholder: 'UTC', size: 14 })),
    every: input('every', { placeholder: '30s', class: 'grow' }),
    delay: input('delay', { placeholder: '1m', class: 'grow' }),
    at: input('at', { placeholder: '2030-01-01T03:00:00Z', class: 'grow' }),
    manual: h('span', { class: 'muted' }, 'fires only when triggered'),
  };
  const kindInputs = {
    script: field('command', 'Command', input('command', { placeholder: '/opt/jobs/sync.sh --batch 500' }), 'program and arguments, run without a shell; quote arguments with spaces'),
    http: h('div', { class: 'inline' },
      field('method', 'Method', select('method', ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'].map((m) => [m, m]))),
      field('url', 'URL', input('url', { placeholder: 'https://example.com/hook' }), null, { class: 'field grow' })),
    handler: field('handler', 'Handler name', input('handler', { placeholder: 'reports.nightly' }), 'a Rust handler registered on the instances'),
  };

  const sync = () => {
    for (const [k, el] of Object.entries(scheduleInputs)) el.hidden = f.stype.value !== k;
    for (const [k, el] of Object.entries(kindInputs)) el.hidden = f.kind.value !== k;
    f.catch_up_max.parentNode.hidden = f.misfire.value !== 'catch_up';
  };

  function buildJob() {
    const j = structuredClone(orig);
    j.name = f.name.value.trim();
    j.description = f.description.value;
    for (const k of [...SCHEDULES, 'tz']) delete j[k];
    const st = f.stype.value;
    if (st === 'cron') {
      j.cron = f.cron.value.trim();
      if (f.tz.value.trim()) j.tz = f.tz.value.trim();
    } else if (st === 'manual') j.manual = true;
    else j[st] = f[st].value.trim();
    j.shards = intOr(f.shards.value) ?? 1;
    j.shard_params = f.shard_params.value;
    j.param = f.param.value;
    delete j.command;
    const kind = f.kind.value;
    if (kind !== 'http') delete j.http;
    if (kind === 'script') Object.assign(j, { kind: 'script', command: splitArgs(f.command.value) });
    else if (kind === 'http') Object.assign(j, { kind: 'http', http: { ...(orig.http || {}), url: f.url.value.trim(), method: f.method.value } });
    else j.kind = f.handler.value.trim();
    const opt = (k, v) => { if (v === undefined || v === '') delete j[k]; else j[k] = v; };
    opt('timeout', f.timeout.value.trim());
    const r = intOr(f.retries.value);
    opt('retries', r !== undefined && orig.retries && typeof orig.retries === 'object' ? { ...orig.retries, max: r } : r);
    j.misfire = f.misfire.value;
    opt('catch_up_max', j.misfire === 'catch_up' ? intOr(f.catch_up_max.value) : undefined);
    opt('max_concurrent', intOr(f.max_concurrent.value));
    j.enabled = f.enabled.checked;
    return j;
  }

  function showProblems(body, all) {
    for (const el of Object.values(errs)) { el.replaceChildren(); el.parentNode.classList.remove('invalid'); }
    general.replaceChildren();
    const problems = body.problems || [{ field: body.field || '', message: body.error }];
    for (const p of problems) {
      const field = p.field || '';
      const key = [FIELD_OF[field], field, FIELD_OF[field.split(/[.[]/)[0]], field.split(/[.[]/)[0]].find((k) => k && errs[k]);
      if (key && !all && !touched.has(key)) continue;
      if (key) {
        errs[key].append(h('div', {}, p.message));
        errs[key].parentNode.classList.add('invalid');
      } else if (all) general.append(h('div', {}, field ? `${field}: ${p.message}` : p.message));
    }
  }

  async function validate() {
    const mine = ++seq;
    try {
      const r = await post('/api/jobs/validate', buildJob());
      if (mine !== seq) return;
      showProblems({ problems: [] });
      preview.replaceChildren(r.next?.length
        ? h('ol', { class: 'times' }, r.next.map((t) => h('li', { 'data-test': 'next-time' }, time(t), h('span', { class: 'muted' }, ` ${rel(t)}`))))
        : h('p', { class: 'muted' }, 'No scheduled fires (manual, or a time in the past).'));
    } catch (e) {
      if (mine !== seq || e.status === 401) return;
      if (e.status === 400) showProblems(e.body);
      else general.replaceChildren(e.message);
      preview.replaceChildren(h('p', { class: 'muted' }, 'Fix the problems to see the next fire times.'));
    }
  }
  const later = (e) => {
    const key = e.target.closest('[data-field]')?.dataset.field;
    if (key) touched.add(FIELD_OF[key] || key);
    sync();
    clearTimeout(timer);
    timer = setTimeout(validate, 350);
  };

  async function save(e) {
    e.preventDefault();
    clearTimeout(timer);
    const j = buildJob();
    try {
      if (editing) await put(jobPath(name), { ...j, revision });
      else await post('/api/jobs', j);
      flash(`Saved ${j.name}`, 'ok');
      go(`#/jobs/${enc(j.name)}`);
    } catch (x) {
      if (x.status === 400) showProblems(x.body, true);
      else if (x.status !== 401) general.replaceChildren(x.status === 409 && editing
        ? 'Someone else changed this job meanwhile: reload to see their version.' : x.message);
    }
  }

  const form = h('form', { class: 'editor', 'data-test': 'job-editor', oninput: later, onchange: later, onsubmit: save, novalidate: true },
    h('div', { class: 'grid2' },
      h('div', {},
        field('name', 'Name', input('name', { required: true, disabled: editing, placeholder: 'sync-orders', autocomplete: 'off' }), 'letters, digits, . _ -'),
        field('description', 'Description', input('description', { tag: 'textarea', rows: 2 })),
        field('schedule', 'Schedule', h('div', { class: 'inline' },
          select('stype', SCHEDULES.map((k) => [k, k])), Object.values(scheduleInputs)), 'cron takes an optional IANA time zone; durations like 30s, 5m, 1h30m'),
        h('div', { class: 'inline' },
          field('shards', 'Shards', input('shards', { type: 'number', min: 1, max: 10000, value: '1' })),
          field('shard_params', 'Shard parameters', input('shard_params', { placeholder: '0=north,1=south' }), null, { class: 'field grow' })),
        field('param', 'Job parameter', input('param')),
        field('kind', 'Runs', select('kind', [['script', 'script (command)'], ['http', 'http request'], ['handler', 'Rust handler']])),
        Object.values(kindInputs)),
      h('div', {},
        h('div', { class: 'inline' },
          field('timeout', 'Timeout', input('timeout', { placeholder: 'none', size: 8 })),
          field('retries', 'Retries', input('retries', { type: 'number', min: 0, max: 100, placeholder: '0' })),
          field('max_concurrent', 'Max concurrent', input('max_concurrent', { type: 'number', min: 1, placeholder: 'unbounded' }))),
        h('div', { class: 'inline' },
          field('misfire', 'Misfire', select('misfire', [['fire_once', 'fire once'], ['skip', 'skip'], ['catch_up', 'catch up']])),
          field('catch_up_max', 'Catch up at most', input('catch_up_max', { type: 'number', min: 1, placeholder: '10' }))),
        h('label', { class: 'check' }, input('enabled', { type: 'checkbox', checked: true }), ' Enabled'),
        h('h3', {}, 'Next fires'), preview)),
    general,
    h('div', { class: 'bar' },
      h('span', {}),
      h('span', { class: 'actions' },
        h('a', { class: 'button', href: editing ? `#/jobs/${enc(name)}` : '#/jobs', 'data-test': 'editor-cancel' }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary', 'data-test': 'editor-save' }, editing ? 'Save' : 'Create'))));
  mount(section('editor-page', [editing ? `Edit ${name}` : 'New job'], form));
  sync();

  const load = async () => {
    if (editing) {
      const d = await get(jobPath(name));
      orig = d.job;
      revision = d.revision;
      const j = orig;
      f.name.value = j.name;
      f.description.value = j.description || '';
      f.stype.value = SCHEDULES.find((k) => j[k] != null && j[k] !== false) || 'manual';
      for (const k of ['cron', 'tz', 'every', 'delay', 'at']) f[k].value = j[k] || '';
      f.shards.value = j.shards ?? 1;
      f.shard_params.value = j.shard_params || '';
      f.param.value = j.param || '';
      f.kind.value = j.command || j.kind === 'script' ? 'script' : j.kind === 'http' || j.http ? 'http' : 'handler';
      f.command.value = joinArgs(j.command);
      f.url.value = j.http?.url || '';
      f.method.value = (j.http?.method || 'GET').toUpperCase();
      f.handler.value = f.kind.value === 'handler' ? j.kind || '' : '';
      f.timeout.value = j.timeout || '';
      f.retries.value = typeof j.retries === 'object' && j.retries ? j.retries.max : j.retries ?? '';
      f.misfire.value = typeof j.misfire === 'string' ? j.misfire : j.misfire?.policy || 'fire_once';
      f.catch_up_max.value = j.catch_up_max ?? '';
      f.max_concurrent.value = j.max_concurrent ?? '';
      f.enabled.checked = j.enabled !== false;
      sync();
    } else {
      f.stype.value = 'every';
      sync();
    }
    f[editing ? 'description' : 'name'].focus();
    if (editing) validate();
  };
  load.live = false;
  return load;
}

// -------------------------------------------------------------- instances

function instanceTable(list, leader, actions) {
  return table(['Name', 'Id', 'Host', 'Role', 'State', 'Items', 'Weight', 'Started', actions ? '' : null].filter((c) => c !== null),
    list.map((i) => row({ 'data-test': 'instance-row', 'data-name': i.name, 'data-id': i.id },
      i.name, h('span', { class: 'mono' }, i.id || '—'), i.host || '—',
      i.leader || i.id === leader ? h('span', { class: 'badge leader', 'data-test': 'leader' }, 'leader') : 'follower',
      onOff(i.enabled !== false), i.items ?? '—', i.weight ?? '—', time(i.started_at),
      ...(!actions ? [] : [admin() && h('span', { class: 'actions' },
        btn(i.enabled !== false ? 'Disable' : 'Enable', () => post(`/api/instances/${enc(i.name)}/${i.enabled !== false ? 'disable' : 'enable'}`),
          { 'data-test': 'instance-toggle', 'data-name': i.name }),
        btn('Shut down', confirmed(`Shut down the instance ${i.name} (${i.host || i.id})? Its items move to the others.`, async () => {
          await post(`/api/instances/${enc(i.id)}/shutdown`);
          return `Shutdown requested for ${i.name}`;
        }), { class: 'danger', 'data-test': 'instance-shutdown', 'data-name': i.name }))]))),
    'No instances are running.', { 'data-test': 'instances-table' });
}

function instancesView() {
  const body = h('div');
  mount(section('instances-page', ['Instances'], body));
  return async () => {
    const d = await get('/api/instances');
    body.replaceChildren(instanceTable(d.instances, d.leader, true));
  };
}

// ---------------------------------------------------------------- history

const STATUSES = ['RUNNING', 'SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED', 'LOST', 'SKIPPED'];
const FAILURES = 'FAILED,TIMED_OUT,LOST';
const PAGE = 50;

const toLocalInput = (iso) => (Number.isNaN(Date.parse(iso)) ? '' : fmtTime(iso, true).replace(' ', 'T'));
const fromLocalInput = (v) => (v ? new Date(v).toISOString() : '');

function historyView(m, query) {
  const q = Object.fromEntries(query);
  const offset = Number(q.offset) || 0;
  const fl = (key, label, control) => h('label', { class: 'field' }, h('span', { class: 'lbl' }, label), control);
  const inp = (key, attrs = {}) => h('input', { name: key, 'data-test': `filter-${key}`, value: q[key] || '', ...attrs });
  const form = h('form', { class: 'filters', 'data-test': 'history-filters', onsubmit: (e) => {
    e.preventDefault();
    const v = Object.fromEntries(new FormData(form));
    v.from = fromLocalInput(v.from);
    v.to = fromLocalInput(v.to);
    go(`#/history?${qs(v)}`);
  } },
  fl('job', 'Job', inp('job', { placeholder: 'any' })),
  fl('status', 'Status', h('select', { name: 'status', 'data-test': 'filter-status', value: q.status || '' },
    h('option', { value: '' }, 'any'), h('option', { value: FAILURES }, 'any failure'), STATUSES.map((st) => h('option', { value: st }, st)))),
  fl('instance', 'Instance', inp('instance', { placeholder: 'any' })),
  fl('item', 'Item', inp('item', { type: 'number', min: 0, size: 4 })),
  fl('from', 'From', inp('from', { type: 'datetime-local', step: 1, value: q.from ? toLocalInput(q.from) : '' })),
  fl('to', 'To', inp('to', { type: 'datetime-local', step: 1, value: q.to ? toLocalInput(q.to) : '' })),
  h('span', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', 'data-test': 'filter-apply' }, 'Apply'),
    h('a', { class: 'button', href: '#/history', 'data-test': 'filter-reset' }, 'Reset')));
  const body = h('div');
  const pager = h('div', { class: 'pager' });
  mount(section('history-page', ['History'], form, body, pager));
  const refresh = async () => {
    const params = { job: q.job, status: q.status, instance: q.instance, item: q.item, from: q.from, to: q.to };
    const d = await get(`/api/executions?${qs({ ...params, limit: PAGE, offset })}`);
    body.replaceChildren(execTable(d.executions, 'No executions match.'));
    pager.replaceChildren(
      offset > 0 ? h('a', { class: 'button', href: `#/history?${qs({ ...params, offset: Math.max(0, offset - PAGE) || null })}`, 'data-test': 'page-newer' }, '← Newer') : h('span'),
      h('span', { class: 'muted' }, d.executions.length ? `${offset + 1}–${offset + d.executions.length}` : ''),
      d.next_offset != null ? h('a', { class: 'button', href: `#/history?${qs({ ...params, offset: d.next_offset })}`, 'data-test': 'page-older' }, 'Older →') : h('span'));
  };
  refresh.live = offset === 0;
  return refresh;
}

function executionView(id) {
  const body = h('div');
  mount(h('section', { 'data-test': 'execution-page', 'data-id': id }, body));
  const refresh = async () => {
    const d = await get(`/api/executions/${enc(id)}`);
    const e = d.execution;
    refresh.live = e.status === 'RUNNING'; // follow it until it ends
    body.replaceChildren(
      h('div', { class: 'bar' }, h('h1', {}, 'Execution ', h('span', { class: 'mono', 'data-test': 'exec-id' }, e.id), ' ', badge(e.status)),
        h('span', { class: 'actions' }, e.status === 'RUNNING' && admin() && cancelBtn(e.id),
          h('a', { class: 'button', href: `#/history?${qs({ job: e.job, item: e.item })}` }, 'This item’s history'))),
      dl([['Job', h('a', { href: `#/jobs/${enc(e.job)}` }, e.job)], ['Item', `${e.item} of ${e.total ?? '?'}`],
        ['Source', e.source], ['Attempt', String(e.attempt ?? '')], ['Instance', `${e.instance || '—'}${e.host ? ` on ${e.host}` : ''}`],
        ['Fire time', time(e.fire_time, true)], e.fire_time_end ? ['Last fire covered', time(e.fire_time_end, true)] : null,
        ['Started', time(e.started_at, true)], ['Ended', time(e.ended_at, true)], ['Took', duration(e)],
        ['Fencing token', String(e.token ?? '—')], e.cause ? ['Cause', e.cause] : null,
        e.skip_reason ? ['Skipped', `${e.skip_reason}${e.skipped_count ? ` (${e.skipped_count} fires)` : ''}`] : null]),
      h('h2', {}, 'Output'),
      e.output ? h('pre', { class: 'output', 'data-test': 'exec-output' }, e.output) : h('p', { class: 'muted', 'data-test': 'exec-output' }, 'No output.'),
      h('h2', {}, 'Transitions'),
      table(['Status', 'At', 'Message'], (d.transitions || []).map((t) => row({ 'data-test': 'transition' }, badge(t.status), time(t.at, true), t.message || '')), 'None recorded.'));
  };
  return refresh;
}

// --------------------------------------------------------- admin pages

function auditView(m, query) {
  const offset = Number(query.get('offset')) || 0;
  const body = h('div');
  const pager = h('div', { class: 'pager' });
  mount(section('audit-page', ['Audit log'], body, pager));
  const refresh = async () => {
    const d = await get(`/api/audit?${qs({ limit: PAGE, offset })}`);
    body.replaceChildren(table(['At', 'Actor', 'Action', 'Target', 'Detail'],
      d.entries.map((e) => row({ 'data-test': 'audit-row' }, time(e.at), e.actor, e.action, e.target || '',
        typeof e.detail === 'string' ? e.detail : e.detail == null ? '' : h('code', { class: 'detail' }, JSON.stringify(e.detail)))), 'No entries.'));
    pager.replaceChildren(
      offset > 0 ? h('a', { class: 'button', href: `#/audit?${qs({ offset: Math.max(0, offset - PAGE) || null })}` }, '← Newer') : h('span'),
      h('span'),
      d.next_offset != null ? h('a', { class: 'button', href: `#/audit?offset=${d.next_offset}` }, 'Older →') : h('span'));
  };
  refresh.live = false;
  return refresh;
}

const roleSelect = (test) => h('select', { name: 'role', 'data-test': test }, h('option', { value: 'viewer' }, 'viewer'), h('option', { value: 'admin' }, 'admin'));

function tokensView() {
  const body = h('div');
  const shown = h('div', { 'data-test': 'new-token-box' });
  const name = h('input', { name: 'name', required: true, placeholder: 'ci-deploy', 'data-test': 'token-name' });
  const role = roleSelect('token-role');
  const form = h('form', { class: 'inline card', 'data-test': 'token-form', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const t = await post('/api/tokens', { name: name.value.trim(), role: role.value });
      name.value = '';
      shown.replaceChildren(h('div', { class: 'ok-box' },
        h('p', {}, `Token "${t.name}" (${t.role}) created. Copy it now: it is not shown again.`),
        h('code', { class: 'token', 'data-test': 'new-token' }, t.token)));
      await refreshNow();
    } catch (x) { if (x.status !== 401) flash(x.message); }
  } }, h('label', { class: 'field grow' }, h('span', { class: 'lbl' }, 'Name'), name), h('label', { class: 'field' }, h('span', { class: 'lbl' }, 'Role'), role),
  h('button', { type: 'submit', class: 'primary', 'data-test': 'token-create' }, 'Create token'));
  mount(section('tokens-page', ['API tokens'], h('p', { class: 'muted' }, 'Send a token as "Authorization: Bearer TOKEN".'), form, shown, body));
  const refresh = async () => {
    const d = await get('/api/tokens');
    body.replaceChildren(table(['Name', 'Role', 'Created', 'By', ''], d.tokens.map((t) => row({ 'data-test': 'token-row', 'data-id': t.id },
      t.name, t.role, time(t.created_at), t.created_by || '—',
      btn('Revoke', confirmed(`Revoke the token "${t.name}"? Clients using it stop working.`, async () => { await del(`/api/tokens/${enc(t.id)}`); return 'Revoked'; }),
        { class: 'danger', 'data-test': 'token-revoke' }))), 'No tokens.'));
  };
  refresh.live = false;
  return refresh;
}

function usersView() {
  const body = h('div');
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', 'data-test': 'user-name' });
  const pass = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password', 'data-test': 'user-password' });
  const role = roleSelect('user-role');
  const form = h('form', { class: 'inline card', 'data-test': 'user-form', onsubmit: async (e) => {
    e.preventDefault();
    try {
      await post('/api/users', { name: name.value.trim(), password: pass.value, role: role.value });
      flash(`Created ${name.value.trim()}`, 'ok');
      name.value = pass.value = '';
      await refreshNow();
    } catch (x) { if (x.status !== 401) flash(x.message); }
  } }, h('label', { class: 'field grow' }, h('span', { class: 'lbl' }, 'Name'), name), h('label', { class: 'field grow' }, h('span', { class: 'lbl' }, 'Password'), pass),
  h('label', { class: 'field' }, h('span', { class: 'lbl' }, 'Role'), role), h('button', { type: 'submit', class: 'primary', 'data-test': 'user-create' }, 'Add user'));
  mount(section('users-page', ['Users'], form, body));
  const refresh = async () => {
    const d = await get('/api/users');
    body.replaceChildren(table(['Name', 'Role', 'Created', ''], d.users.map((u) => {
      const pw = h('input', { type: 'password', placeholder: 'new password', autocomplete: 'new-password', 'data-test': 'user-new-password' });
      return row({ 'data-test': 'user-row', 'data-name': u.name }, u.name, u.role, time(u.created_at), h('span', { class: 'actions' }, pw,
        btn('Set password', async () => { await put(`/api/users/${enc(u.name)}/password`, { password: pw.value }); return `Password of ${u.name} changed`; }, { 'data-test': 'user-set-password' }),
        u.name !== session?.user && btn('Delete', confirmed(`Delete the user ${u.name}?`, async () => { await del(`/api/users/${enc(u.name)}`); return 'Deleted'; }),
          { class: 'danger', 'data-test': 'user-delete' })));
    }), 'No users.'));
  };
  refresh.live = false;
  return refresh;
}

// ------------------------------------------------------------------ start

$('#logout').addEventListener('click', logout);
window.addEventListener('hashchange', route);
route();

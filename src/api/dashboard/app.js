// Hopper's dashboard: one vanilla-JS app, no build step, served from the binary.
//
// It is a plain client of the public API: GET /v1/queues (and GET /v1/circuits, the
// notification endpoints whose circuit breaker is open), GET /v1/jobs (one page at a time,
// never everything), GET /v1/jobs/{id}, the job and queue actions, and the event stream
// ws://HOST/v1/events. With the stream it redraws on events; without it (an older server, a
// proxy that drops WebSockets) it polls every second or two, and says which in the header.
// Redraws are batched into animation frames, so a burst of events costs one redraw.
const FINAL = new Set(['succeeded', 'dead', 'cancelled']);
// What the API takes as a queue name and a kind (`GET /v1/jobs?queue=&kind=`).
const QUEUE_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_KIND_BYTES = 128;
const STATES = ['queued', 'running', 'scheduled', 'retrying', 'waiting', 'succeeded', 'dead', 'cancelled'];
const PAGE = 50;
const POLL_MS = 1000;           // jobs list and job page without the stream
const QUEUES_POLL_MS = 2000;    // queue counts without the stream
const LIVE_SAFETY_MS = 10000;   // with the stream, a full refresh now and then all the same
const SPARK_SAMPLES = 60;
const SPARK_MS = 5000;          // one sample every 5 s: the sparkline spans the last 5 minutes
const TOKEN_KEY = 'hopper.token';

import { EventStream } from './stream.js';
import { $, h, svg, arrange, toast, ago, when, shortId, debounce, coalesce } from './util.js';

// ---------------------------------------------------------------- the API, with the token

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let asking = null; // the token prompt in progress, shared by every request that met a 401

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(method, path) {
  for (;;) {
    const headers = { accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(path, { method, headers, cache: 'no-store' });
    if (res.status === 401) {
      await askToken(token ? 'That token was refused.' : '');
      continue;
    }
    const body = await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }
}

function askToken(why) {
  if (asking) return asking;
  const dialog = $('#token-dialog');
  $('#token-error').textContent = why;
  setConn('locked');
  $('#token-input').value = '';
  asking = new Promise((resolve) => {
    const form = $('#token-form');
    form.onsubmit = (e) => {
      e.preventDefault();
      const t = $('#token-input').value.trim();
      if (!t) return;
      // A header carries printable ASCII only: a pasted curly quote or non-breaking space
      // would make every request fail in the browser, which looks like a server gone.
      if (!/^[\x20-\x7e]+$/.test(t)) {
        $('#token-error').textContent = 'A token is printable ASCII: this one has other characters (a curly quote, a non-breaking space?).';
        return;
      }
      token = t;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('#forget-token').hidden = false;
      asking = null;
      dialog.close();
      resolve();
      // The stream was refused too (4001) or never tried with a token: try it now.
      stream.restart();
    };
    // Escape would leave the page without data and without a way back. Chromium lets a
    // second Escape close the dialog all the same: then it opens again while a token is due.
    dialog.oncancel = (e) => e.preventDefault();
    dialog.onclose = () => { if (asking && !dialog.open) { dialog.showModal(); $('#token-input').focus(); } };
  });
  if (!dialog.open) dialog.showModal();
  $('#token-input').focus();
  return asking;
}

// ---------------------------------------------------------------- state

const state = {
  route: { view: 'list' },
  filters: { queue: '', state: '', kind: '' },
  cursors: [null],          // the cursor of each page up to the one shown
  next: null,               // next_cursor of the page shown
  jobs: [],
  queues: [],
  circuits: [],             // open and half-open circuits of notification endpoints
  spark: new Map(),         // queue -> [processed_last_minute samples]
  kinds: new Set(),
  job: null,                // the job page's job (with history)
};

// ---------------------------------------------------------------- routing (the URL hash)

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const m = /^jobs\/(.+)$/.exec(path || '');
  if (m) return { route: { view: 'job', id: decoded(m[1]) }, filters: null };
  const p = new URLSearchParams(query || '');
  return {
    route: { view: 'list' },
    filters: { queue: p.get('queue') || '', state: p.get('state') || '', kind: p.get('kind') || '' },
  };
}

// A link cut short or typed by hand (`#/jobs/%E0%A4`) is not valid percent-encoding: it is
// shown as typed (a job page saying there is no such job), not a page that stopped working.
function decoded(s) {
  try { return decodeURIComponent(s); } catch { return s; }
}

function listHash(f) {
  const p = new URLSearchParams();
  for (const k of ['queue', 'state', 'kind']) if (f[k]) p.set(k, f[k]);
  const q = p.toString();
  return q ? `#/?${q}` : '#/';
}

function setFilters(f) {
  const next = { ...state.filters, ...f };
  location.hash = listHash(next);
}

function onRoute() {
  const { route, filters } = parseHash();
  state.route = route;
  $('#list-view').hidden = route.view !== 'list';
  $('#job-view').hidden = route.view !== 'job';
  if (route.view === 'list') {
    // A filter the API would refuse (a link typed by hand or cut short) is dropped and said
    // once, rather than an empty table under a select reading "all" and the same error
    // toasted on every refresh.
    const dropped = [];
    if (filters.state && !STATES.includes(filters.state)) {
      dropped.push(`no state "${filters.state}"`);
      filters.state = '';
    }
    if (filters.queue && !QUEUE_NAME.test(filters.queue)) {
      dropped.push(`"${filters.queue}" is not a queue name`);
      filters.queue = '';
    }
    if (new TextEncoder().encode(filters.kind).length > MAX_KIND_BYTES) {
      dropped.push(`a kind is at most ${MAX_KIND_BYTES} bytes`);
      filters.kind = '';
    }
    if (dropped.length) {
      history.replaceState(null, '', listHash(filters));
      toast(`Filter ignored: ${dropped.join('; ')}`, true);
    }
    const changed = JSON.stringify(filters) !== JSON.stringify(state.filters);
    state.filters = filters;
    $('#filter-queue').value = filters.queue;
    $('#filter-state').value = filters.state;
    if (document.activeElement !== $('#filter-kind')) $('#filter-kind').value = filters.kind;
    if (changed) { state.cursors = [null]; state.jobs = []; }
    document.title = 'Hopper';
    refreshJobs();
    refreshQueues();
    refreshCircuits();
  } else {
    state.job = null;
    jobParts = null;
    $('#job-view').replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    refreshJob();
  }
  window.scrollTo(0, 0);
}

// ---------------------------------------------------------------- fetching

// One request of each sort at a time: a slow broker gets no pile-up from the timers.
function single(fn) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try { await fn(); } catch (e) { onFetchError(e); } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  };
  return run;
}

let lastError = '';
function onFetchError(e) {
  const refused = e instanceof ApiError;
  const msg = refused ? e.message : 'the server does not answer';
  if (msg !== lastError) toast(`Could not refresh: ${msg}`, true);
  lastError = msg;
  // Said until a refresh succeeds: after the toast, the page still shows it is out of date.
  setConn(refused ? 'stale' : 'offline', msg);
}
function fetched() {
  if (lastError) { lastError = ''; setConn(stream.live ? 'live' : 'polling'); }
}

const refreshQueues = single(async () => {
  lastQueues = Date.now();
  const body = await api('GET', '/v1/queues');
  fetched();
  state.queues = body.queues || [];
  // A queue seen for the first time starts its sparkline at once; later samples are the
  // clock's (`sampleSpark`).
  for (const q of state.queues) {
    if (!state.spark.has(q.queue)) state.spark.set(q.queue, [q.processed_last_minute || 0]);
  }
  schedule(renderQueues);
});

// The sparkline's samples, taken on a clock (`tick`, every SPARK_MS) from the counts last
// fetched: one sample a refresh, as before, put time on the x-axis only when refreshes were
// regular, and they follow events (every 300 ms when busy, every few seconds when idle), so a
// short burst was drawn as a long plateau.
function sampleSpark() {
  for (const q of state.queues) {
    const s = state.spark.get(q.queue) || [];
    s.push(q.processed_last_minute || 0);
    if (s.length > SPARK_SAMPLES) s.shift();
    state.spark.set(q.queue, s);
  }
  schedule(renderQueues);
}

// The open circuits; a server without the route (404) has none to show.
const refreshCircuits = single(async () => {
  lastCircuits = Date.now();
  try {
    const body = await api('GET', '/v1/circuits');
    state.circuits = body.circuits || [];
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    state.circuits = [];
  }
  schedule(renderCircuits);
});

/** The query of the page of jobs the table should show now. */
function listQuery() {
  // Brief: the table shows no payload or result, and a page of them may weigh megabytes.
  const p = new URLSearchParams({ limit: String(PAGE), brief: 'true' });
  for (const k of ['queue', 'state', 'kind']) if (state.filters[k]) p.set(k, state.filters[k]);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) p.set('cursor', cursor);
  return p.toString();
}

const refreshJobs = single(async () => {
  if (state.route.view !== 'list') return;
  lastList = Date.now();
  const query = listQuery();
  const page = await api('GET', `/v1/jobs?${query}`);
  fetched();
  // Asked for another page (Older, Newer, a filter) while this one was on its way: that
  // page's refresh follows (`single`), and this answer must not pass for it.
  if (state.route.view !== 'list' || listQuery() !== query) return;
  state.jobs = page.jobs || [];
  state.next = page.next_cursor || null;
  for (const j of state.jobs) state.kinds.add(j.kind);
  schedule(renderJobs);
});

const refreshJob = single(async () => {
  if (state.route.view !== 'job') return;
  lastList = Date.now();
  const id = state.route.id;
  try {
    const job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
    fetched();
    if (state.route.view === 'job' && state.route.id === id) { state.job = job; schedule(renderJob); }
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      jobParts = null;
      $('#job-view').replaceChildren(h('div', { class: 'panel empty' }, `No job ${id}. `, h('a', { href: '#/' }, 'Back to the list')));
      return;
    }
    throw e;
  }
});

// ---------------------------------------------------------------- actions

// The actions in flight, by request: a second click (a double click, an impatient user) while
// the first is under way is not sent again, which would answer a confusing 409 ("not dead")
// or pause twice. The button is not disabled meanwhile: that would take the keyboard focus
// away from it.
const inFlight = new Set();

async function act(label, method, path, then) {
  const key = `${method} ${path}`;
  if (inFlight.has(key)) return;
  inFlight.add(key);
  try {
    const body = await api(method, path);
    toast(label(body));
  } catch (e) {
    toast(e.message, true);
  } finally {
    inFlight.delete(key);
  }
  then?.();
}

function retryJob(id) {
  act(() => `Job ${shortId(id)} queued again`, 'POST', `/v1/jobs/${encodeURIComponent(id)}/retry`, refreshAll);
}
function cancelJob(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}/cancel`;
  if (inFlight.has(`POST ${path}`) || !confirm(`Cancel job ${id}?`)) return;
  act(() => `Job ${shortId(id)} cancelled`, 'POST', path, refreshAll);
}
function queueAction(name, what) {
  if (inFlight.has(`POST /v1/queues/${encodeURIComponent(name)}/${what}`)) return;
  if (what === 'retry-dead' && !confirm(`Retry every dead job of ${name}?`)) return;
  const path = `/v1/queues/${encodeURIComponent(name)}/${what}`;
  const label = (b) => what === 'retry-dead'
    ? `${typeof b?.retried === 'number' ? b.retried : 'The'} dead job${b?.retried === 1 ? '' : 's'} of ${name} queued again`
    : what === 'pause' ? `Queue ${name} paused`
      // Resume answers `paused: true` when this node's own config pauses the queue.
      : b?.paused ? `Queue ${name} resumed in the broker, still paused by the server's config` : `Queue ${name} resumed`;
  act(label, 'POST', path, refreshAll);
}

function refreshAll() {
  refreshQueues();
  refreshCircuits();
  if (state.route.view === 'list') refreshJobs(); else refreshJob();
}

// ---------------------------------------------------------------- rendering

// Redraws are queued and run once per animation frame, whatever the number of events.
const pending = new Set();
let frame = 0;
function schedule(fn) {
  pending.add(fn);
  if (!frame) frame = requestAnimationFrame(() => {
    frame = 0;
    const fns = [...pending];
    pending.clear();
    for (const f of fns) f();
  });
}

function badge(s) {
  return h('span', { class: 'badge', 'data-state': s }, s);
}

function progress(p, s, msg) {
  const pct = s === 'succeeded' ? 100 : Math.max(0, Math.min(100, p || 0));
  const fill = h('span');
  fill.style.width = `${pct}%`;
  return h('div', { class: 'progress', 'data-state': s },
    h('div', { class: 'bar', role: 'progressbar', 'aria-valuenow': pct, 'aria-valuemin': 0, 'aria-valuemax': 100 }, fill),
    h('span', { class: 'pct' }, `${pct}%`),
    msg ? h('span', { class: 'msg', title: msg }, msg) : null);
}

function renderCircuits() {
  const box = $('#circuits');
  box.hidden = !state.circuits.length;
  if (!state.circuits.length) { box.replaceChildren(); return; }
  const rows = state.circuits.map((c) => h('tr', { 'data-endpoint': c.endpoint, 'data-state': c.state },
    h('td', { class: 'endpoint', title: c.endpoint }, c.endpoint),
    h('td', {}, h('span', { class: 'circuit-state' }, c.state.replace('_', '-'))),
    h('td', {}, String(c.failures)),
    h('td', {}, c.probing ? 'probing' : c.probe_in_ms > 0 ? `in ${Math.ceil(c.probe_in_ms / 1000)} s` : 'now')));
  box.replaceChildren(
    h('div', { class: 'toolbar' }, h('h2', {}, 'Open circuits'),
      h('span', { class: 'muted' }, 'Notification endpoints that keep failing: deliveries to them wait for a probe')),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Endpoint'), h('th', {}, 'State'), h('th', {}, 'Failures'), h('th', {}, 'Probe'))),
      h('tbody', {}, ...rows))));
}

function renderQueues() {
  const grid = $('#queues');
  if (!state.queues.length) {
    cards.clear();
    grid.replaceChildren(h('p', { class: 'muted' }, 'No queues yet: enqueue a job to see one.'));
  } else {
    const names = new Set(state.queues.map((q) => q.queue));
    for (const name of cards.keys()) if (!names.has(name)) cards.delete(name);
    arrange(grid, state.queues.map(queueCard));
  }
  const sel = $('#filter-queue');
  const want = ['', ...state.queues.map((q) => q.queue)];
  if (state.filters.queue && !want.includes(state.filters.queue)) want.push(state.filters.queue);
  const have = [...sel.options].map((o) => o.value);
  if (want.join('\n') !== have.join('\n')) {
    sel.replaceChildren(...want.map((v) => h('option', { value: v }, v || 'all')));
    sel.value = state.filters.queue;
  }
}

function renderKinds() {
  const list = $('#kinds');
  if (list.options.length !== state.kinds.size) {
    list.replaceChildren(...[...state.kinds].sort().map((k) => h('option', { value: k })));
  }
}

// The queue cards, one a queue, kept from one redraw to the next and updated in place: a
// button or count the user has focused (or is pressing) stays the same element.
const cards = new Map(); // queue -> { el, q, head, name, pausedTag, counts, spark, actions, pause, retryDead }
// A count of 10,000 or more is shown as 10K, 1.2M (the exact number in its title): a card's
// quarter width holds five characters, not "1,234,567".
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

function queueCard(q) {
  let c = cards.get(q.queue);
  if (!c) c = newQueueCard(q.queue);
  c.q = q;
  const counts = q.counts || {};
  const head = q.paused ? [c.name, c.pausedTag] : [c.name];
  if (c.head.childNodes.length !== head.length) c.head.replaceChildren(...head);
  for (const s of STATES) {
    const n = counts[s] || 0;
    const { link, num } = c.counts.get(s);
    link.classList.toggle('zero', !n);
    link.href = listHash({ ...state.filters, queue: q.queue, state: s });
    num.textContent = n >= 10000 ? compact.format(n) : n.toLocaleString();
    num.title = n.toLocaleString();
  }
  c.spark.replaceChildren(sparkline(state.spark.get(q.queue) || []),
    h('div', { class: 'rate' }, h('b', {}, (q.processed_last_minute || 0).toLocaleString()), ' /min',
      q.failed_last_minute ? h('div', { class: 'error' }, `${q.failed_last_minute} failed`) : null));
  const what = q.paused ? 'resume' : 'pause';
  c.pause.dataset.action = what;
  c.pause.textContent = q.paused ? 'Resume' : 'Pause';
  c.retryDead.disabled = !counts.dead;
  c.retryDead.textContent = `Retry all dead${counts.dead ? ` (${counts.dead.toLocaleString()})` : ''}`;
  arrange(c.el, [c.head, c.countsBox, c.spark, c.actions]);
  return c.el;
}

function newQueueCard(name) {
  const c = {};
  c.name = h('span', { class: 'name', title: name }, name);
  c.pausedTag = h('span', { class: 'paused' }, 'paused');
  c.head = h('header', {}, c.name);
  // Each count is a link to the queue's jobs in that state: Tab reaches it, Enter follows it.
  c.counts = new Map(STATES.map((s) => {
    const num = h('b', { 'data-count': s });
    const link = h('a', { class: 'count', 'data-state': s, title: `Show ${s} jobs of ${name}` }, num, h('span', {}, s));
    return [s, { link, num }];
  }));
  c.countsBox = h('div', { class: 'counts' }, [...c.counts.values()].map((x) => x.link));
  c.spark = h('div', { class: 'spark' });
  c.pause = h('button', {
    type: 'button', class: 'small', onclick: () => queueAction(name, c.q.paused ? 'resume' : 'pause'),
  });
  c.retryDead = h('button', {
    type: 'button', class: 'small danger', 'data-action': 'retry-dead', onclick: () => queueAction(name, 'retry-dead'),
  });
  c.actions = h('div', { class: 'actions' }, c.pause, c.retryDead);
  c.el = h('article', { class: 'queue-card', dataset: { queue: name } });
  cards.set(name, c);
  return c;
}

function sparkline(samples) {
  const w = 100, hgt = 30;
  const el = svg('svg', { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', 'aria-label': 'jobs processed per minute, recent samples' });
  if (samples.length < 2) return el;
  const max = Math.max(1, ...samples);
  const step = w / (SPARK_SAMPLES - 1);
  const x0 = w - step * (samples.length - 1);
  const pts = samples.map((v, i) => `${(x0 + i * step).toFixed(1)},${(hgt - 1 - (v / max) * (hgt - 3)).toFixed(1)}`);
  el.append(svg('polygon', { points: `${x0.toFixed(1)},${hgt} ${pts.join(' ')} ${w},${hgt}` }));
  el.append(svg('polyline', { points: pts.join(' ') }));
  return el;
}

const rows = new Map(); // job id -> { tr, sig }

function renderJobs() {
  const tbody = $('#jobs tbody');
  const keep = new Set();
  let prev = null;
  for (const j of state.jobs) {
    keep.add(j.id);
    let r = rows.get(j.id);
    // A progress update redraws the bar's cell alone: the row's link and buttons stay the
    // elements a user is pressing or has focused.
    const sig = [j.state, j.attempt, j.queue].join('|');
    const bar = [j.progress, j.progress_message].join('|');
    if (!r) { r = { tr: h('tr'), sig: '', bar: '' }; rows.set(j.id, r); }
    if (r.sig !== sig) {
      fillRow(r.tr, j);
      r.sig = sig;
      r.bar = bar;
    } else if (r.bar !== bar) {
      setProgress(r.tr, j);
      r.bar = bar;
    }
    r.tr.querySelector('.col-time').textContent = ago(j.created_at);
    // Move only what is out of place, so a steady list costs no layout.
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== r.tr) tbody.insertBefore(r.tr, want);
    prev = r.tr;
  }
  for (const [id, r] of rows) if (!keep.has(id)) { r.tr.remove(); rows.delete(id); }
  // A page may come back empty with older jobs still to look through (a filter matching few
  // jobs of a big queue): not "no jobs match".
  const empty = $('#jobs-empty');
  empty.hidden = state.jobs.length > 0;
  empty.textContent = state.next ? 'None on this page: Older → looks further back.' : 'No jobs match.';
  const n = state.cursors.length;
  $('#newer').disabled = n <= 1;
  $('#older').disabled = !state.next;
  $('#page-info').textContent = state.jobs.length ? `page ${n} · newest first` : '';
  renderKinds();
}

/** Redraws a row's progress cell (and its `data-progress`) only. */
function setProgress(tr, j) {
  tr.dataset.progress = j.state === 'succeeded' ? 100 : (j.progress || 0);
  tr.querySelector('.col-progress').replaceChildren(progress(j.progress, j.state, j.progress_message));
}

function fillRow(tr, j) {
  tr.dataset.id = j.id;
  tr.dataset.state = j.state;
  tr.dataset.progress = j.state === 'succeeded' ? 100 : (j.progress || 0);
  const href = `#/jobs/${encodeURIComponent(j.id)}`;
  tr.replaceChildren(
    h('td', {}, h('a', { class: 'job-link', href }, h('span', { class: 'kind' }, j.kind), h('span', { class: 'id', title: j.id }, shortId(j.id)))),
    h('td', { class: 'col-queue' }, j.queue),
    h('td', {}, badge(j.state)),
    h('td', { class: 'col-progress' }, progress(j.progress, j.state, j.progress_message)),
    h('td', { class: 'col-attempt' }, `${j.attempt} / ${j.max_retries + 1}`),
    h('td', { class: 'col-time', title: when(j.created_at) }),
    h('td', { class: 'col-actions' }, actions(j, 'small')));
}

function actions(j, size) {
  const out = [];
  if (j.state === 'dead' || j.state === 'cancelled') {
    out.push(h('button', { type: 'button', class: size, 'data-action': 'retry', onclick: () => retryJob(j.id) }, 'Retry'));
  }
  if (!FINAL.has(j.state)) {
    out.push(h('button', { type: 'button', class: `${size} danger`, 'data-action': 'cancel', onclick: () => cancelJob(j.id) }, 'Cancel'));
  }
  return out;
}

// A progress event moves the bar at once, without waiting for the next page.
function applyProgress(ev) {
  const r = rows.get(ev.job_id);
  if (r) {
    const j = state.jobs.find((x) => x.id === ev.job_id);
    if (j && !FINAL.has(j.state)) {
      j.progress = ev.progress;
      j.progress_message = ev.message ?? null; // none clears it, as the broker does
      schedule(renderJobs);
    }
  }
  if (state.job && state.job.id === ev.job_id && !FINAL.has(state.job.state)) {
    state.job.progress = ev.progress;
    state.job.progress_message = ev.message ?? null;
    schedule(renderJob);
  }
}

// The job page's parts, kept while one job is shown and each rebuilt only when what it shows
// changed: a progress event or a poll redraws the bar, not the payload the user scrolled, the
// error they are selecting or the button they focused.
let jobParts = null; // { id, parts: Map(key -> { sig, el }), head, history }

/** The element of part `key`: the one shown while `sig` is unchanged, else `build()`'s in its place. */
function part(key, sig, build) {
  const p = jobParts.parts.get(key);
  if (p && p.sig === sig) return p.el;
  // A part with nothing to show keeps its slot, hidden.
  const el = build() || h('section', { hidden: true });
  p?.el.replaceWith(el);
  jobParts.parts.set(key, { sig, el });
  return el;
}

function renderJob() {
  const j = state.job;
  if (!j) return;
  document.title = `${j.kind} · ${j.state} · Hopper`;
  const view = $('#job-view');
  const fresh = !jobParts || jobParts.id !== j.id;
  if (fresh) jobParts = { id: j.id, parts: new Map() };
  const json = (v) => JSON.stringify(v, null, 2);
  const facts = [
    ['Queue', j.queue, listHash({ queue: j.queue })],
    ['Attempt', `${j.attempt} of ${j.max_retries + 1}`],
    ['Priority', String(j.priority)],
    ['Created', when(j.created_at)],
    ['Run at', when(j.run_at)],
    ['Started', when(j.started_at)],
    ['Finished', when(j.finished_at)],
    ['Lease until', when(j.lease_until)],
    ['Timeout', j.timeout_ms ? `${j.timeout_ms} ms` : '—'],
    ['Interruptions', String(j.interruptions ?? 0)],
    ['Unique key', j.unique_key || '—'],
  ];
  const payload = json(j.payload);
  const result = j.result === null || j.result === undefined ? '—' : json(j.result);
  const back = listHash(state.filters);
  const parts = {
    back: part('back', back, () => h('div', {}, h('a', { href: back }, '← All jobs'))),
    title: part('title', JSON.stringify([j.kind, j.state]), () => h('div', { class: 'title' },
      h('h2', {}, j.kind), badge(j.state),
      h('div', { class: 'actions' }, actions(j, '')))),
    progress: part('progress', JSON.stringify([j.progress, j.state, j.progress_message]),
      () => progress(j.progress, j.state, j.progress_message)),
    // Why a job that is not running yet is not (the API's `waiting`; null once it runs).
    waiting: part('waiting', JSON.stringify(j.waiting || null), () => j.waiting ? h('div', {
      class: 'waiting', 'data-field': 'waiting', 'data-reason': j.waiting.reason,
    }, h('span', { class: 'muted' }, 'Why it is not running: '), j.waiting.message) : null),
    facts: part('facts', JSON.stringify(facts), () => h('dl', { class: 'facts' },
      facts.map(([k, v, href]) => h('div', {}, h('dt', {}, k), h('dd', { title: v }, href ? h('a', { href }, v) : v))))),
    payload: part('payload', payload, () => h('section', { class: 'panel' }, h('h3', {}, 'Payload'),
      h('pre', { 'data-field': 'payload' }, payload))),
    result: part('result', result, () => h('section', { class: 'panel' }, h('h3', {}, 'Result'),
      h('pre', { 'data-field': 'result' }, result))),
    error: part('error', j.last_error || '', () => j.last_error ? h('section', { class: 'panel' }, h('h3', {}, 'Last error'),
      h('pre', { class: 'error-text', 'data-field': 'last_error' }, j.last_error)) : null),
    chain: part('chain', JSON.stringify(j.steps || []), () => j.steps?.length ? h('section', { class: 'panel' }, h('h3', {}, 'Chain'),
      h('ol', { class: 'steps' }, j.steps.map((s) => h('li', { class: s.id === j.id ? 'current' : '' },
        h('span', { class: 'n' }, s.index + 1),
        s.id === j.id ? h('span', {}, s.kind) : h('a', { href: `#/jobs/${encodeURIComponent(s.id)}` }, s.kind),
        badge(s.state),
        s.last_error ? h('span', { class: 'error', title: s.last_error }, '⚠') : null)))) : null),
  };
  if (fresh) {
    const ol = h('ol', { class: 'history' });
    const title = h('h3', {});
    jobParts.history = { title, ol, first: undefined, count: 0 };
    jobParts.head = h('section', { class: 'panel job-head' },
      parts.title, h('div', { class: 'id' }, j.id), parts.progress, parts.waiting, parts.facts);
    view.replaceChildren(parts.back, jobParts.head,
      h('div', { class: 'job-grid' }, parts.payload, parts.result, parts.error, parts.chain,
        h('section', { class: 'panel' }, title, ol)));
    view.dataset.id = j.id;
  }
  jobParts.head.dataset.state = j.state;
  renderHistory(j.history || []);
}

// The history only grows: new events are appended to the list shown, which keeps its scroll.
function renderHistory(all) {
  const hist = jobParts.history;
  const shown = all.slice(-500);
  hist.title.textContent = `History (${all.length})`;
  const first = shown[0]?.id;
  if (first !== undefined && first === hist.first && shown.length >= hist.count) {
    hist.ol.append(...shown.slice(hist.count).map(historyItem));
  } else {
    hist.ol.replaceChildren(...shown.map(historyItem));
  }
  hist.first = first;
  hist.count = shown.length;
}

const KNOWN = new Set(['id', 'type', 'job_id', 'queue', 'kind', 'at', 'attempt', 'progress', 'message']);
function historyItem(ev) {
  const detail = [];
  if (ev.progress !== undefined) detail.push(`${ev.progress}%`);
  if (ev.message) detail.push(ev.message);
  for (const [k, v] of Object.entries(ev)) {
    if (!KNOWN.has(k)) detail.push(`${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return h('li', { 'data-type': ev.type },
    h('span', { class: 'what' }, ev.type.replace(/^job\./, '')),
    h('span', { class: 'when', title: ev.at }, `${new Date(ev.at).toLocaleTimeString()} · attempt ${ev.attempt}`),
    detail.length ? h('div', { class: 'detail' }, detail.join(' · ')) : null);
}

// ---------------------------------------------------------------- the event stream

function setConn(mode, why = '') {
  // While the token prompt is open, nothing refreshes: the header says so, whatever a failed
  // request or the closed stream would say (it read "polling", or "server unreachable" for a
  // server that answered 401).
  if (asking && mode !== 'locked') return;
  const el = $('#conn');
  if (el.dataset.mode === mode && el.dataset.why === why) return;
  el.dataset.mode = mode;
  el.dataset.why = why;
  el.textContent = { live: 'live', polling: 'polling', offline: 'server unreachable', stale: 'not refreshing', connecting: 'connecting…', locked: 'token needed' }[mode];
  el.title = {
    live: 'Following the event stream',
    polling: 'The event stream is not available: refreshing every second or two',
    offline: 'The server does not answer: retrying',
    stale: `The server refuses to refresh this page (${why}): what it shows may be out of date; retrying`,
    connecting: 'Connecting',
    locked: 'The server needs a token: nothing refreshes until one is given',
  }[mode];
}

const stream = new EventStream({
  token: () => token,
  onOpen: () => { setConn('live'); refreshAll(); }, // whatever happened while away
  onClose: () => { if (!lastError) setConn('polling'); },
  onRefused: () => askToken('The event stream refused the token.'),
  onEvent,
});

function onEvent(ev) {
  // Behind or past retention: the pages shown are refetched rather than patched.
  if (ev.type === 'lagged' || ev.type === 'gap') { refreshAll(); return; }
  if (ev.type === 'job.progress') { applyProgress(ev); return; }
  // Any other change moves counts and may move the list: refetch both, once for a burst of
  // events. Coalesced, not debounced: a server that never pauses must not starve the page of
  // refreshes until the safety tick.
  onCounts();
  if (state.route.view === 'list' && shownInList(ev)) onListChange();
  // The job page shows its chain's steps too: a later step's change is the page's.
  if (state.job && (state.job.id === ev.job_id || (state.job.steps || []).some((s) => s.id === ev.job_id))) onJobChange();
}

/** Whether `ev` may change the page of jobs shown: a job of another queue or kind cannot. */
function shownInList(ev) {
  const f = state.filters;
  return (!f.queue || ev.queue === f.queue) && (!f.kind || ev.kind === f.kind);
}

const onCounts = coalesce(() => refreshQueues(), 300);
const onListChange = coalesce(() => refreshJobs(), 300);
const onJobChange = coalesce(() => refreshJob(), 200);

// ---------------------------------------------------------------- the clock

// When the counts and the list (or job) were last asked for, by whatever asked (the route, the
// stream's opening, an event, this clock): the clock asks only when nothing else did lately,
// not a third time as the page opens.
let lastQueues = 0;
let lastList = 0;
let lastCircuits = 0;
let lastSpark = Date.now();
function tick() {
  const now = Date.now();
  // Not while hidden: nothing refreshes the counts then (and browsers slow hidden timers), so
  // the samples would repeat the last value, the very plateau the clock is here to avoid.
  if (document.hidden) return;
  if (now - lastSpark >= SPARK_MS) { lastSpark = now; sampleSpark(); }
  const every = stream.live ? LIVE_SAFETY_MS : POLL_MS;
  const countsEvery = stream.live ? LIVE_SAFETY_MS / 2 : QUEUES_POLL_MS;
  if (now - lastQueues >= countsEvery) refreshQueues();
  if (now - lastCircuits >= countsEvery) refreshCircuits();
  if (now - lastList >= every) {
    if (state.route.view === 'list') refreshJobs();
    // A job page is polled while anything it shows may change: the job, or a step of its
    // chain (without the stream, no event says a later step moved).
    else if (state.job && [state.job, ...(state.job.steps || [])].some((j) => !FINAL.has(j.state))) refreshJob();
  }
  // Relative times move even when nothing else does.
  if (state.route.view === 'list') for (const j of state.jobs) {
    const r = rows.get(j.id);
    if (r) r.tr.querySelector('.col-time').textContent = ago(j.created_at);
  }
}

// ---------------------------------------------------------------- wiring

// Another page of jobs starts at its top, not where the pager was.
function toTable() {
  const panel = $('#jobs').closest('.panel');
  if (panel.getBoundingClientRect().top < 0) panel.scrollIntoView({ block: 'start' });
}

function init() {
  $('#filter-queue').addEventListener('change', (e) => setFilters({ queue: e.target.value }));
  $('#filter-state').addEventListener('change', (e) => setFilters({ state: e.target.value }));
  $('#filter-kind').addEventListener('input', debounce((e) => setFilters({ kind: e.target.value.trim() }), 350));
  $('#clear-filters').addEventListener('click', () => { $('#filter-kind').value = ''; location.hash = '#/'; });
  $('#older').addEventListener('click', () => {
    // A second click (a double click) before the older page has come is not another step
    // back: the cursor is the same, and Newer would then have to be pressed twice.
    if (!state.next || state.cursors[state.cursors.length - 1] === state.next) return;
    state.cursors.push(state.next);
    // Until the older page comes, there is no next one to go to.
    state.next = null;
    $('#older').disabled = true;
    refreshJobs();
    toTable();
  });
  $('#newer').addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    refreshJobs();
    toTable();
  });
  $('#forget-token').hidden = !token;
  $('#forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = '';
    location.reload();
  });
  // Back in view: the counts are refetched, and the next sparkline sample waits for them.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) { lastSpark = Date.now(); refreshAll(); }
  });
  window.addEventListener('hashchange', onRoute);
  setConn('connecting');
  onRoute();
  stream.start();
  setInterval(tick, 250);
}

init();

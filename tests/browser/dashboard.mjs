// The dashboard's acceptance test in a real headless Chromium, started by
// tests/e2e_dashboard.rs: `node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR`, with CHROMIUM
// (the browser binary) and BROWSER_PROFILE (a fresh directory) in the environment.
//
// It drives the page as a user would (token prompt, buttons) against the real server, its real
// event stream and its real queue routes, and talks to the API itself only to enqueue jobs and
// to read the truth the page must show. Only a `lagged` frame, which the server sends to a
// reader that fell a whole buffer behind, comes from a stand-in stream. Every wait has a
// generous deadline: the machine running it may be loaded.

import { join } from 'node:path';
import { client, launch, step } from './client.mjs';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) throw new Error('usage: dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR');
const DEADLINE = 60_000;

const { api, enqueue } = client(base, token);

const browser = await launch();
// What the page does on the wire, recorded in the page itself with one clock: every fetch
// (start, end of headers) and every WebSocket (url, opened, close code). Installed in every tab
// before the app's scripts run.
await browser.addInitScript(() => {
  const log = { fetches: [], sockets: [], bars: [] };
  window.__wire = log;
  const realFetch = window.fetch;
  window.fetch = async function (input, init) {
    const rec = { url: String(input instanceof Request ? input.url : input), start: performance.now(), end: Infinity };
    log.fetches.push(rec);
    try { return await realFetch.call(this, input, init); } finally { rec.end = performance.now(); }
  };
  const RealWebSocket = window.WebSocket;
  window.WebSocket = class extends RealWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = { url: String(url), protocols: protocols ?? [], protocol: null, opened: false, closed: null };
      log.sockets.push(rec);
      this.addEventListener('open', () => { rec.opened = true; rec.protocol = this.protocol; });
      this.addEventListener('close', (e) => { rec.closed = { code: e.code, reason: e.reason }; });
    }
  };
  // Every change of a row's progress, with its time: [{ id, p, t }].
  const last = new Map();
  const look = () => {
    for (const tr of document.querySelectorAll('#jobs tr[data-id]')) {
      const p = Number(tr.dataset.progress);
      if (last.get(tr.dataset.id) !== p) {
        last.set(tr.dataset.id, p);
        log.bars.push({ id: tr.dataset.id, p, t: performance.now() });
      }
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    new MutationObserver(look).observe(document.querySelector('#jobs tbody'), {
      subtree: true, childList: true, attributes: true, attributeFilter: ['data-progress'],
    });
  });
});

const wire = (p) => p.evaluate(() => window.__wire);
const listFetches = (w) => w.fetches.filter((f) => new URL(f.url, 'http://x').pathname === '/v1/jobs');

let page;
try {
  page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(DEADLINE);
  page.on('pageerror', (e) => console.log(`page error: ${e.stack || e}`));
  // Console errors (a failed request shows as one), checked while the page has a good token.
  const consoleErrors = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    console.log(`console: ${m.text()}`);
    consoleErrors.push(m.text());
  });
  // Cancel and "Retry all dead" ask first; the user says yes.
  page.on('dialog', (d) => d.accept());
  // The real frames the page's stream receives.
  const frames = [];
  page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
    try { frames.push(JSON.parse(payload)); } catch { /* not an event */ }
  }));

  step('open the dashboard: the server needs a token, so the page asks for one, then goes live');
  await page.goto(base + '/');
  await page.locator('#token-dialog').waitFor({ state: 'visible' });
  // Nothing refreshes until a token is given, and the header says that, not "polling".
  await page.locator('#conn[data-mode="locked"]').waitFor();
  await page.fill('#token-input', token);
  await page.click('#token-save');
  await page.locator('#token-dialog').waitFor({ state: 'hidden' });
  // The requests refused before the token was given are behind us.
  consoleErrors.length = 0;
  await page.locator('.queue-card[data-queue="default"]').waitFor();
  // "live" is the real /v1/events WebSocket, opened with the token as a subprotocol, not in
  // the URL (which proxies write to their access logs); the server answers `hopper`.
  await page.locator('#conn[data-mode="live"]').waitFor();
  {
    const open = (await wire(page)).sockets.filter((s) => s.opened && !s.closed);
    if (open.length !== 1) throw new Error(`open event streams: ${JSON.stringify(open)}`);
    const url = new URL(open[0].url);
    if (url.pathname !== '/v1/events' || url.search !== '') throw new Error(`the stream's url: ${open[0].url}`);
    const asked = JSON.stringify(open[0].protocols);
    if (asked !== JSON.stringify(['hopper', `token.${token}`]) || open[0].protocol !== 'hopper') {
      throw new Error(`the stream's subprotocols: asked ${asked}, got ${open[0].protocol}`);
    }
  }
  {
    // The table shows no payloads: it asks for brief pages, which leave them out.
    const lists = listFetches(await wire(page));
    const full = lists.filter((f) => new URL(f.url, 'http://x').searchParams.get('brief') !== 'true');
    if (!lists.length || full.length) throw new Error(`list requests not brief: ${JSON.stringify(full)}`);
  }

  step('an open circuit (stored in the broker by the Rust side) shows under the queues, without its path or query');
  {
    // Named as everywhere else: the origin, and a hash for the path and query.
    const circuit = page.locator('#circuits tr[data-endpoint^="https://hooks.example/…#"][data-state="open"]');
    await circuit.waitFor();
    const text = await page.locator('#circuits').textContent();
    if (text.includes('s3cret') || text.includes('/in')) throw new Error(`the circuit shows its path or query: ${text}`);
  }

  step('a sys.sleep job: real job.progress frames move its bar, then it succeeds');
  const sleeper = await enqueue('sys.sleep', { ms: 4000 });
  const row = (id) => page.locator(`#jobs tr[data-id="${id}"]`);
  await row(sleeper).waitFor();
  const t0 = Date.now();
  // The running row's Cancel button, and the progress it had when taken: a progress update
  // redraws the bar, not the button a user is pressing or has focused.
  let pressed = null;
  let movedUnderIt = false;
  for (;;) {
    // One read of the row, so that state, number and bar are of the same redraw.
    const { state, progress, width } = await row(sleeper).evaluate((tr) => ({
      state: tr.dataset.state,
      progress: Number(tr.dataset.progress),
      width: tr.querySelector('.bar > span').style.width,
    }));
    if (progress > 0 && progress < 100 && width !== `${progress}%`) throw new Error(`bar width ${width} for progress ${progress}`);
    if (state === 'running' && progress < 100) {
      if (!pressed) {
        pressed = { p: progress, button: await row(sleeper).locator('button[data-action="cancel"]').elementHandle() };
      } else if (progress !== pressed.p && !movedUnderIt) {
        movedUnderIt = true;
        if (!(await pressed.button.evaluate((b) => b.isConnected))) {
          throw new Error(`the Cancel button was replaced when the bar moved from ${pressed.p} to ${progress} %`);
        }
      }
    }
    if (state === 'succeeded') break;
    if (Date.now() - t0 > DEADLINE) throw new Error(`sleeper still ${state} after ${DEADLINE} ms`);
    await page.waitForTimeout(100);
  }
  {
    // A move of the bar no jobs-list response could have drawn: none had arrived in the second
    // before it (time to parse and draw, generously) nor was under way. Those moves came from
    // the stream, and each shows a value a real frame carried.
    const w = await wire(page);
    const polls = listFetches(w);
    const moves = w.bars.filter((b) => b.id === sleeper && b.p > 0 && b.p < 100);
    const byFrame = moves.filter((b) => !polls.some((f) => f.start < b.t && b.t < f.end + 1000));
    const sent = new Set(frames.filter((f) => f.type === 'job.progress' && f.job_id === sleeper).map((f) => f.progress));
    const unsent = byFrame.filter((b) => !sent.has(b.p));
    step(`the bar went through ${moves.map((b) => b.p).join(', ')} %; ${byFrame.length} moves with no list poll near; frames carried ${[...sent].join(', ')}`);
    if (byFrame.length < 2) throw new Error(`the bar moved ${byFrame.length} times between list polls: ${JSON.stringify({ moves, polls })}`);
    if (unsent.length) throw new Error(`the bar showed values no frame carried: ${JSON.stringify(unsent)}`);
  }
  if (!movedUnderIt) throw new Error('the sleeper\'s bar never moved while the page watched it run');
  await page.locator(`#jobs tr[data-id="${sleeper}"] .bar > span`).evaluate((e) => {
    if (e.style.width !== '100%') throw new Error(`a succeeded job's bar is ${e.style.width}`);
  });

  // A retry starts the job over (attempt 1, a fresh set of retries), so this sys.fail fails
  // again: what the user sees is a second run in the job's history.
  step('a dead job: Retry runs it again');
  const failer = await enqueue('sys.fail', { times: 1, permanent: true });
  await page.locator(`#jobs tr[data-id="${failer}"][data-state="dead"]`).waitFor();
  await row(failer).locator('button[data-action="retry"]').click();
  await page.locator('#toast', { hasText: 'queued again' }).waitFor();
  await row(failer).locator('a.job-link').click();
  await page.locator(`#job-view[data-id="${failer}"]`).waitFor();
  await page.waitForFunction(
    () => document.querySelectorAll('#job-view .history li[data-type="job.started"]').length === 2,
  );
  await page.locator('#job-view .job-head[data-state="dead"]').waitFor();
  const runsOf = async (id) => {
    const j = await api('GET', `/v1/jobs/${id}`);
    return { state: j.state, runs: j.history.filter((e) => e.type === 'job.started').length };
  };
  const retried = await runsOf(failer);
  if (retried.runs !== 2 || retried.state !== 'dead') throw new Error(`the retried job: ${JSON.stringify(retried)}`);
  await page.goBack();
  await row(failer).waitFor();

  step('a running job: Cancel stops it');
  const long = await enqueue('sys.sleep', { ms: 120000 });
  await page.locator(`#jobs tr[data-id="${long}"][data-state="running"]`).waitFor();
  await row(long).locator('button[data-action="cancel"]').click();
  await page.locator(`#jobs tr[data-id="${long}"][data-state="cancelled"]`).waitFor();
  const cancelled = await api('GET', `/v1/jobs/${long}`);
  if (cancelled.state !== 'cancelled') throw new Error(`the cancelled job is ${cancelled.state}`);

  step('filters: state=cancelled shows only the cancelled job');
  await page.selectOption('#filter-state', 'cancelled');
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('#jobs tr[data-id]')];
    return rows.length === 1 && rows[0].dataset.id === id;
  }, long);
  await page.selectOption('#filter-state', '');
  await row(sleeper).waitFor();

  step('the queue card counts what the broker counts');
  const q = (await api('GET', '/v1/queues')).queues.find((x) => x.queue === 'default');
  await page.waitForFunction(
    (n) => document.querySelector('.queue-card[data-queue="default"] [data-count="succeeded"]')?.textContent.trim() === String(n),
    q.counts.succeeded,
  );

  step('Pause on the queue card: a new job stays queued; Resume: it runs');
  const card = page.locator('.queue-card[data-queue="default"]');
  await card.locator('button[data-action="pause"]:not([disabled])').click();
  await page.locator('#toast', { hasText: 'Queue default paused' }).waitFor();
  await card.locator('header .paused').waitFor();
  if (!(await api('GET', '/v1/queues')).queues.find((x) => x.queue === 'default').paused) throw new Error('the broker does not say default is paused');
  const held = await enqueue('sys.sleep', { ms: 300 });
  await page.locator(`#jobs tr[data-id="${held}"][data-state="queued"]`).waitFor();
  const heldFrom = Date.now();
  while (Date.now() - heldFrom < 2000) {
    const s = await row(held).getAttribute('data-state');
    if (s !== 'queued') throw new Error(`a job of a paused queue is ${s}`);
    await page.waitForTimeout(200);
  }
  const stillHeld = await runsOf(held);
  if (stillHeld.state !== 'queued' || stillHeld.runs !== 0) throw new Error(`a job of a paused queue: ${JSON.stringify(stillHeld)}`);
  await card.locator('button[data-action="resume"]').click();
  await page.locator('#toast', { hasText: 'Queue default resumed' }).waitFor();
  await page.locator(`#jobs tr[data-id="${held}"][data-state="succeeded"]`).waitFor();
  await card.locator('button[data-action="pause"]').waitFor();
  if (await card.locator('header .paused').count()) throw new Error('the card still says paused');

  step('Retry all dead on the queue card: the dead job runs again');
  await card.locator('button[data-action="retry-dead"]:not([disabled])', { hasText: '(1)' }).click();
  await page.locator('#toast', { hasText: '1 dead job of default queued again' }).waitFor();
  const t1 = Date.now();
  for (;;) {
    const again = await runsOf(failer);
    if (again.runs === 3 && again.state === 'dead') break;
    if (Date.now() - t1 > DEADLINE) throw new Error(`after Retry all dead: ${JSON.stringify(again)}`);
    await page.waitForTimeout(200);
  }
  await page.locator(`#jobs tr[data-id="${failer}"][data-state="dead"]`).waitFor();

  // A few more jobs, so the screenshot shows a dashboard at work.
  await enqueue('sys.sleep', { ms: 30000 });
  await enqueue('sys.sleep', { ms: 20000 }, 'reports');
  await enqueue('sys.fail', { permanent: true }, 'reports');
  await enqueue('sys.sleep', { ms: 60000, }, 'reports');
  await page.locator('.queue-card[data-queue="reports"]').waitFor();
  await page.waitForFunction(() => [...document.querySelectorAll('#jobs tr[data-state="running"]')]
    .some((r) => Number(r.dataset.progress) > 0));
  await page.screenshot({ path: join(shots, 'dashboard.png') });

  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: join(shots, 'dashboard-dark.png') });
  await page.emulateMedia({ colorScheme: 'light' });

  if (consoleErrors.length) throw new Error(`console errors with a good token: ${JSON.stringify(consoleErrors)}`);

  step('the job page: payload, result, history');
  await row(sleeper).locator('a.job-link').click();
  await page.locator('#job-view[data-id="' + sleeper + '"]').waitFor();
  await page.locator('#job-view [data-field="payload"]', { hasText: '4000' }).waitFor();
  await page.locator('#job-view [data-field="result"]', { hasText: 'slept_ms' }).waitFor();
  await page.locator('#job-view .history li[data-type="job.succeeded"]').waitFor();
  await page.locator('#job-view .history li[data-type="job.progress"]').first().waitFor();
  await page.screenshot({ path: join(shots, 'dashboard-job.png') });

  step('back to the list');
  await page.goBack();
  await row(sleeper).waitFor();

  step("a chain's first step, finished: its page follows the later steps as they run");
  {
    const chain = await api('POST', '/v1/jobs', {
      kind: 'sys.noop', payload: {},
      then: [{ kind: 'sys.sleep', payload: { ms: 1500 } }, { kind: 'sys.noop', payload: {} }],
    });
    const first = chain.id;
    await page.goto(`${base}/#/jobs/${encodeURIComponent(first)}`);
    // Its own page stops polling once it has finished: only the steps' events move the list.
    const steps = page.locator(`#job-view[data-id="${first}"] ol.steps li`);
    await steps.nth(2).waitFor();
    await page.locator(`#job-view[data-id="${first}"] ol.steps li:nth-child(3) .badge[data-state="succeeded"]`).waitFor();
    await page.locator(`#job-view[data-id="${first}"] ol.steps li:nth-child(2) .badge[data-state="succeeded"]`).waitFor();
    await page.goto(`${base}/#/`);
    await row(sleeper).waitFor();
  }

  step("a delayed job's page says why it is not running (the API's waiting reason)");
  {
    const later = (await api('POST', '/v1/jobs', { kind: 'sys.noop', payload: {}, delay: '1h' })).id;
    await page.goto(`${base}/#/jobs/${encodeURIComponent(later)}`);
    const waiting = page.locator(`#job-view[data-id="${later}"] [data-field="waiting"][data-reason="run_at"]`);
    await waiting.waitFor();
    const text = await waiting.textContent();
    if (!/not running/.test(text) || !/due/i.test(text)) throw new Error(`the waiting line: ${text}`);
    // A running or finished job has none.
    await page.goto(`${base}/#/jobs/${encodeURIComponent(sleeper)}`);
    await page.locator(`#job-view[data-id="${sleeper}"] .history li[data-type="job.succeeded"]`).waitFor();
    if (await page.locator('#job-view [data-field="waiting"]').count()) throw new Error('a finished job says why it is waiting');
    await page.goto(`${base}/#/`);
    await row(sleeper).waitFor();
  }

  step('a list link with filters the API refuses: they are dropped and said, the jobs shown');
  await page.goto(`${base}/#/?state=bogus&queue=a%20b&kind=${'k'.repeat(129)}`);
  await page.locator('#toast', { hasText: 'Filter ignored' }).waitFor();
  await row(sleeper).waitFor();
  if (await page.locator('#filter-state').inputValue() !== '') throw new Error('the state select is not "all"');
  if (new URL(page.url()).hash !== '#/') throw new Error(`the link was not cleaned: ${page.url()}`);
  await page.goto(`${base}/#/`);

  step('a deep link that is not valid percent-encoding says there is no such job');
  await page.goto(`${base}/#/jobs/%E0%A4`);
  await page.locator('#job-view .empty', { hasText: 'No job' }).waitFor();
  await page.goto(`${base}/#/`);
  await row(sleeper).waitFor();

  step('a bad stored token: the real stream closes with 4001 and the page asks again');
  const tab = await browser.newPage();
  tab.setDefaultTimeout(DEADLINE);
  tab.on('pageerror', (e) => console.log(`page error (second tab): ${e.stack || e}`));
  tab.on('dialog', (d) => d.accept());
  const wrong = `not-${token}`;
  // The tab's first load finds a wrong token in its session storage; its reloads keep the one
  // the user gives.
  await tab.addInitScript((t) => {
    if (sessionStorage.getItem('test.seeded')) return;
    sessionStorage.setItem('test.seeded', '1');
    sessionStorage.setItem('hopper.token', t);
  }, wrong);
  await tab.goto(base + '/');
  await tab.locator('#token-dialog').waitFor({ state: 'visible' });
  await tab.waitForFunction(() => window.__wire.sockets.some((s) => s.closed));
  {
    const refused = (await wire(tab)).sockets.find((s) => s.closed);
    if (refused.closed.code !== 4001 || !refused.protocols.includes(`token.${wrong}`)) {
      throw new Error(`the stream with a wrong token: ${JSON.stringify(refused)}`);
    }
  }
  await tab.locator('#token-error', { hasText: 'refused' }).waitFor();
  // Escape does not dismiss the prompt, not even twice (Chromium closes a dialog on the second
  // Escape whatever the page says: the page opens it again).
  await tab.keyboard.press('Escape');
  await tab.keyboard.press('Escape');
  await tab.waitForTimeout(500);
  if (!(await tab.locator('#token-dialog').isVisible())) throw new Error('Escape twice left the page without its token prompt');
  // A token pasted with a curly quote can never go in a header: the prompt says so and stays,
  // rather than every request failing as if the server were gone.
  await tab.fill('#token-input', `${token}\u201d`);
  await tab.click('#token-save');
  await tab.locator('#token-error', { hasText: 'printable ASCII' }).waitFor();
  await tab.waitForTimeout(1500);
  if (!(await tab.locator('#token-dialog').isVisible())) throw new Error('the prompt closed on a token no header can carry');
  {
    const mode = await tab.locator('#conn').getAttribute('data-mode');
    if (mode === 'offline') throw new Error('a token no header can carry shows the server as unreachable');
  }
  await tab.fill('#token-input', token);
  await tab.click('#token-save');
  await tab.locator('#conn[data-mode="live"]').waitFor();

  // The real server sends `lagged` only to a reader that fell behind by its whole buffer,
  // which a test cannot bring about on demand in a browser: a stand-in sends the same frame
  // and close (1008) to check what the page does with them.
  step('lagged (a stand-in stream): the page refetches its lists and reconnects');
  const standIns = [];
  await tab.routeWebSocket(/\/v1\/events/, (ws) => { standIns.push(ws); });
  await tab.reload();
  await tab.locator('#token-dialog').waitFor({ state: 'hidden' });
  await tab.locator('#conn[data-mode="live"]').waitFor();
  await tab.locator('.queue-card[data-queue="default"]').waitFor();
  await tab.waitForFunction(() => window.__wire.fetches.every((f) => f.end < Infinity));
  const before = listFetches(await wire(tab)).length;
  standIns[0].send(JSON.stringify({ type: 'lagged', resume: '12345' }));
  standIns[0].close({ code: 1008, reason: 'lagged: reconnect with since=resume' });
  await tab.waitForFunction((n) => window.__wire.fetches.filter((f) => new URL(f.url, location.href).pathname === '/v1/jobs').length > n, before);
  const t2 = Date.now();
  while (standIns.length < 2) {
    if (Date.now() - t2 > DEADLINE) throw new Error('the page did not reconnect after lagged');
    await tab.waitForTimeout(100);
  }
  await tab.locator('#conn[data-mode="live"]').waitFor();
  await tab.close();

  step('narrow screens: the list and the job page still fit, down to a 360 px phone');
  for (const width of [420, 360]) {
    await page.setViewportSize({ width, height: 900 });
    for (const [what, hash] of [['list', '#/'], ['job page', `#/jobs/${failer}`]]) {
      await page.evaluate((h) => { location.hash = h; }, hash);
      await page.locator(what === 'list' ? `#jobs tr[data-id="${failer}"]` : `#job-view[data-id="${failer}"] .job-head`).waitFor();
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 1) throw new Error(`the ${what} is ${overflow}px wider than a ${width} px screen`);
    }
  }
  step('done');
} catch (e) {
  if (page) await page.screenshot({ path: join(shots, 'dashboard-failure.png') }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}

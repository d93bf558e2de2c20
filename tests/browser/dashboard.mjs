// The dashboard's acceptance test in a real headless Chromium, started by
// tests/e2e_dashboard.rs: `node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR`, with CHROMIUM
// (the browser binary) and BROWSER_PROFILE (a fresh directory) in the environment.
//
// It drives the page as a user would (token prompt, buttons) and talks to the API itself only
// to enqueue jobs and to read the truth the page must show. Every wait has a generous deadline:
// the machine running it may be loaded.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) throw new Error('usage: dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR');
const DEADLINE = 60_000;

async function api(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

const enqueue = (kind, payload, queue = 'default') => api('POST', '/v1/jobs', { kind, payload, queue }).then((j) => j.id);

function step(what) {
  console.log(`[${new Date().toISOString()}] ${what}`);
}

const profile = process.env.BROWSER_PROFILE;
mkdirSync(profile, { recursive: true });
// A persistent context is playwright's way of passing a fresh --user-data-dir.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM,
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let page;
try {
  page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(DEADLINE);
  page.on('pageerror', (e) => console.log(`page error: ${e.stack || e}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`console: ${m.text()}`); });
  // Cancel and "Retry all dead" ask first; the user says yes.
  page.on('dialog', (d) => d.accept());

  step('open the dashboard: the server needs a token, so the page asks for one');
  await page.goto(base + '/');
  await page.locator('#token-dialog').waitFor({ state: 'visible' });
  await page.fill('#token-input', token);
  await page.click('#token-save');
  await page.locator('#token-dialog').waitFor({ state: 'hidden' });
  await page.locator('.queue-card[data-queue="default"]').waitFor();

  step('a sys.sleep job: its bar moves, then it succeeds');
  const sleeper = await enqueue('sys.sleep', { ms: 4000 });
  const row = (id) => page.locator(`#jobs tr[data-id="${id}"]`);
  await row(sleeper).waitFor();
  const seen = new Set();
  const t0 = Date.now();
  for (;;) {
    // One read of the row, so that state, number and bar are of the same redraw.
    const { state, progress, width } = await row(sleeper).evaluate((tr) => ({
      state: tr.dataset.state,
      progress: Number(tr.dataset.progress),
      width: tr.querySelector('.bar > span').style.width,
    }));
    if (progress > 0 && progress < 100) {
      if (width !== `${progress}%`) throw new Error(`bar width ${width} for progress ${progress}`);
      seen.add(progress);
    }
    if (state === 'succeeded') break;
    if (Date.now() - t0 > DEADLINE) throw new Error(`sleeper still ${state} after ${DEADLINE} ms`);
    await page.waitForTimeout(100);
  }
  if (seen.size < 2) throw new Error(`the bar did not move: saw progress ${[...seen]}`);
  step(`the bar went through ${[...seen].sort((a, b) => a - b).join(', ')} %`);
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
  const retried = await api('GET', `/v1/jobs/${failer}`);
  const runs = retried.history.filter((e) => e.type === 'job.started').length;
  if (runs !== 2 || retried.state !== 'dead') throw new Error(`the retried job: ${runs} runs, ${retried.state}`);
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

  // The stream itself is tested against the server in Rust; here, what the page does with its
  // frames, on a second tab whose /v1/events is a stand-in under the test's control.
  step('the live path: a progress frame moves the bar at once; a 4001 close asks for the token');
  const running = (await api('GET', '/v1/jobs?state=running&queue=default')).jobs[0];
  if (!running) throw new Error('no running job left for the live check');
  const live = await browser.newPage();
  live.setDefaultTimeout(DEADLINE);
  live.on('dialog', (d) => d.accept());
  let server;
  await live.routeWebSocket(/\/v1\/events/, (ws) => {
    server = ws;
    const url = new URL(ws.url());
    if (url.searchParams.get('token') !== token) ws.close({ code: 4001, reason: 'bad token' });
  });
  await live.goto(base + '/');
  // A new tab has its own session storage: it asks again.
  await live.locator('#token-dialog').waitFor({ state: 'visible' });
  await live.fill('#token-input', token);
  await live.click('#token-save');
  await live.locator('#conn[data-mode="live"]').waitFor();
  await live.locator(`#jobs tr[data-id="${running.id}"]`).waitFor();
  server.send(JSON.stringify({
    id: '999999', type: 'job.progress', job_id: running.id, queue: 'default', kind: running.kind,
    at: new Date().toISOString(), attempt: 1, progress: 97, message: 'almost there',
  }));
  // Bar and message in one look: the real job goes on running meanwhile, and a refresh of the
  // list (the page's own, on a loaded machine) may replace the stand-in's values right after.
  await live.waitForFunction((id) => {
    const tr = document.querySelector(`#jobs tr[data-id="${id}"]`);
    const msg = tr && tr.querySelector('.msg');
    return tr && tr.dataset.progress === '97' && msg && msg.textContent.includes('almost there');
  }, running.id, { timeout: 5000, polling: 'raf' });

  // The queue routes are another part's; this tab stands in for them to check what the buttons
  // send (a GET on them, the page's probe, answers 405 where they exist).
  step('queue controls: Pause and Retry all dead post to the queue routes');
  const posted = [];
  await live.route(/\/v1\/queues\/[^/]+\/(pause|resume|retry-dead)$/, (route) => {
    const req = route.request();
    if (req.method() !== 'POST') return route.fulfill({ status: 405, contentType: 'application/json', body: '{"error":{"code":"method_not_allowed","message":"no"}}' });
    posted.push([new URL(req.url()).pathname, req.headers().authorization]);
    const retried = req.url().endsWith('retry-dead') ? { retried: 1 } : {};
    return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ queue: 'default', ...retried }) });
  });
  await live.reload();
  await live.locator('#token-dialog').waitFor({ state: 'hidden' });
  const card = live.locator('.queue-card[data-queue="default"]');
  await card.locator('button[data-action="pause"]:not([disabled])').click();
  await live.locator('#toast', { hasText: 'Queue default paused' }).waitFor();
  await card.locator('button[data-action="retry-dead"]:not([disabled])').click();
  await live.locator('#toast', { hasText: 'of default queued again' }).waitFor();
  const want = [['/v1/queues/default/pause', `Bearer ${token}`], ['/v1/queues/default/retry-dead', `Bearer ${token}`]];
  if (JSON.stringify(posted) !== JSON.stringify(want)) throw new Error(`queue buttons posted ${JSON.stringify(posted)}`);
  await live.locator('#conn[data-mode="live"]').waitFor();

  server.close({ code: 4001, reason: 'token revoked' });
  await live.locator('#token-dialog').waitFor({ state: 'visible' });
  await live.locator('#token-error', { hasText: 'refused' }).waitFor();
  await live.fill('#token-input', token);
  await live.click('#token-save');
  await live.locator('#conn[data-mode="live"]').waitFor();
  await live.close();

  step('narrow screen: the page still fits');
  await page.setViewportSize({ width: 420, height: 900 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone's screen`);
  step('done');
} catch (e) {
  if (page) await page.screenshot({ path: join(shots, 'dashboard-failure.png') }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}

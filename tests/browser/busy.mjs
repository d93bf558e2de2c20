// The dashboard on a busy server, in a real headless Chromium, started by tests/e2e_dashboard.rs:
// `node busy.mjs BASE_URL TOKEN SCREENSHOT_DIR`, with CHROMIUM and BROWSER_PROFILE in the
// environment, against a `hopper serve` whose workers take the `default` queue only.
//
// While jobs stream through the server without a pause, the list must keep up (a job enqueued
// shows within a couple of seconds, not at the next safety refresh), and the redraws must not
// get in the user's way: a focused button keeps its focus, a scrolled payload its scroll, and
// every control works from the keyboard.

import { join } from 'node:path';
import { client, launch, step } from './client.mjs';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) throw new Error('usage: busy.mjs BASE_URL TOKEN SCREENSHOT_DIR');
const DEADLINE = 60_000;
/** How soon a change must show while the stream is live (the page's safety refresh is 10 s). */
const PROMPTLY = 2500;

const { api, enqueue } = client(base, token);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Keeps events flowing: ten `sys.noop` jobs every 100 ms until `stop()`. */
function busy() {
  let on = true;
  let count = 0;
  const done = (async () => {
    while (on) {
      const jobs = Array.from({ length: 10 }, () => ({ kind: 'sys.noop', payload: {}, queue: 'default' }));
      await api('POST', '/v1/jobs/batch', { jobs });
      count += jobs.length;
      await sleep(100);
    }
  })();
  return { stop: async () => { on = false; await done; return count; } };
}

const browser = await launch();
// The token is in the tab's session storage, as after the prompt (dashboard.mjs tests that).
await browser.addInitScript((t) => sessionStorage.setItem('hopper.token', t), token);

let page;
let traffic = null;
try {
  page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(DEADLINE);
  page.on('pageerror', (e) => console.log(`page error: ${e.stack || e}`));
  page.on('dialog', (d) => d.accept());
  const focused = () => page.evaluate(() => {
    const a = document.activeElement;
    return { tag: a.tagName, action: a.dataset.action ?? null, card: a.closest('.queue-card')?.dataset.queue ?? null };
  });

  step('jobs stream through the server without a pause; the list filtered on queue "held" is open');
  // A job of `held` stays queued (no worker takes that queue), so it is there to be seen.
  await enqueue('sys.noop', {}, 'held');
  await page.goto(`${base}/#/?queue=held`);
  await page.locator('#conn[data-mode="live"]').waitFor();
  await page.locator('.queue-card[data-queue="held"]').waitFor();
  traffic = busy();
  await sleep(1000);

  step('events of the other queue do not refetch the list filtered on held');
  {
    let lists = 0;
    const onRequest = (r) => { if (new URL(r.url()).pathname === '/v1/jobs') lists += 1; };
    page.on('request', onRequest);
    await sleep(3000);
    page.off('request', onRequest);
    step(`${lists} list requests in 3 s of traffic on default only`);
    // One may be the page's safety refresh (every 10 s); each event used to cost one (~10).
    if (lists > 1) throw new Error(`the list of held was fetched ${lists} times in 3 s while only default had events`);
  }

  step('each job enqueued while the stream is busy shows within a couple of seconds');
  for (let i = 0; i < 4; i++) {
    const id = await enqueue('sys.noop', { marker: i }, 'held');
    const t0 = Date.now();
    await page.locator(`#jobs tr[data-id="${id}"]`).waitFor({ timeout: 15_000 });
    const took = Date.now() - t0;
    step(`job ${i} of held showed after ${took} ms`);
    if (took > PROMPTLY) throw new Error(`a job enqueued on a busy server showed after ${took} ms (more than ${PROMPTLY} ms)`);
    await sleep(1500);
  }

  step('a focused queue button keeps its focus while the cards are redrawn, and works from the keyboard');
  const card = page.locator('.queue-card[data-queue="default"]');
  await card.locator('button[data-action="pause"]:not([disabled])').focus();
  await sleep(6000);
  {
    const f = await focused();
    if (f.tag !== 'BUTTON' || f.action !== 'pause' || f.card !== 'default') throw new Error(`after 6 s of redraws the focus is on ${JSON.stringify(f)}`);
  }
  await page.keyboard.press('Enter');
  await page.locator('#toast', { hasText: 'Queue default paused' }).waitFor();
  await card.locator('button[data-action="resume"]').waitFor();
  {
    const f = await focused();
    if (f.action !== 'resume' || f.card !== 'default') throw new Error(`after Pause the focus is on ${JSON.stringify(f)}`);
  }
  await page.keyboard.press('Enter');
  await page.locator('#toast', { hasText: 'Queue default resumed' }).waitFor();
  await card.locator('button[data-action="pause"]').waitFor();

  step('a count of a queue card is reached with Tab and opens its jobs with Enter');
  {
    const count = page.locator('.queue-card[data-queue="held"] [data-state="queued"]:has([data-count="queued"])');
    await count.focus();
    const isFocused = await count.evaluate((el) => el === document.activeElement);
    if (!isFocused) throw new Error('a count of a queue card cannot take the keyboard focus');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => location.hash.includes('state=queued') && location.hash.includes('queue=held'));
    // The filters follow the hash on the page's next redraw: wait for it, then say what shows.
    await page.waitForFunction(() => document.querySelector('#filter-state')?.value === 'queued', null, { timeout: 10_000 })
      .catch(() => {});
    const shown = await page.locator('#filter-state').inputValue();
    if (shown !== 'queued') throw new Error(`Enter on the queued count filters on ${shown}`);
  }

  step('the job page of a running job: progress redraws keep the payload\'s scroll and the focus on Cancel');
  // Long enough that it is still running when Cancel is pressed, however slow the machine
  // (6 s once ran out first: the job succeeded and was never cancelled).
  const sleeper = await enqueue('sys.sleep', { ms: 30_000, input: 'a line of the payload\n'.repeat(20_000) });
  await page.goto(`${base}/#/jobs/${sleeper}`);
  await page.locator(`#job-view[data-id="${sleeper}"] .job-head[data-state="running"]`).waitFor();
  const pre = page.locator('#job-view [data-field="payload"]');
  await pre.evaluate((el) => { el.scrollTop = 1000; window.__payload = el; });
  await page.locator('#job-view button[data-action="cancel"]').focus();
  await page.waitForFunction(() => Number(document.querySelector('#job-view .job-head .bar')?.getAttribute('aria-valuenow')) >= 30);
  {
    const kept = await page.evaluate(() => ({
      same: window.__payload === document.querySelector('#job-view [data-field="payload"]'),
      scrollTop: document.querySelector('#job-view [data-field="payload"]').scrollTop,
      focus: document.activeElement.dataset.action ?? document.activeElement.tagName,
    }));
    if (!kept.same || kept.scrollTop !== 1000) throw new Error(`after progress redraws the payload is ${JSON.stringify(kept)}`);
    if (kept.focus !== 'cancel') throw new Error(`after progress redraws the focus is on ${kept.focus}`);
  }
  await page.keyboard.press('Enter');
  await page.locator('#job-view .job-head[data-state="cancelled"]').waitFor();
  await page.locator('#job-view button[data-action="retry"]').waitFor();
  const sent = await traffic.stop();
  traffic = null;
  step(`${sent} jobs streamed meanwhile`);
  await page.screenshot({ path: join(shots, 'dashboard-busy.png') });

  step('a double click on Older goes back one page, and Newer comes back to the first');
  // The jobs streamed above fill many pages of default.
  await page.goto(`${base}/#/?queue=default`);
  await page.locator('#page-info', { hasText: 'page 1' }).waitFor();
  await page.locator('#older:not([disabled])').waitFor();
  // Two clicks before the older page has come (what a double click does on a slow link).
  await page.evaluate(() => { const b = document.querySelector('#older'); b.click(); b.click(); });
  await page.waitForFunction(() => /page [2-9]/.test(document.querySelector('#page-info').textContent));
  {
    const info = await page.locator('#page-info').textContent();
    if (!info.startsWith('page 2')) throw new Error(`after a double click on Older the pager says ${info}`);
  }
  await page.locator('#newer').click();
  await page.waitForFunction(() => document.querySelector('#page-info').textContent.startsWith('page 1'), null, { timeout: 10_000 })
    .catch(() => {});
  {
    const info = await page.locator('#page-info').textContent();
    if (!info.startsWith('page 1')) throw new Error(`Newer after a double click on Older left the pager on ${info}`);
  }
  step('done');
} catch (e) {
  if (page) await page.screenshot({ path: join(shots, 'dashboard-busy-failure.png') }).catch(() => {});
  throw e;
} finally {
  await traffic?.stop().catch(() => {});
  await browser.close();
}

// What the browser scripts share: the browser (Debian's chromium, CHROMIUM, in a fresh profile,
// BROWSER_PROFILE), the API as the tests call it (with the token), and the step lines they
// print.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

/** Headless chromium in the fresh profile directory BROWSER_PROFILE (a persistent context is
 *  playwright's way of passing a fresh --user-data-dir). */
export async function launch() {
  const profile = process.env.BROWSER_PROFILE;
  mkdirSync(profile, { recursive: true });
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/** The API of the server at `base`, called with `token`: `api(method, path, body)` answers the
 *  parsed JSON or throws with the status and body; `enqueue` answers the new job's id. */
export function client(base, token) {
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
  const enqueue = (kind, payload, queue = 'default') =>
    api('POST', '/v1/jobs', { kind, payload, queue }).then((j) => j.id);
  return { api, enqueue };
}

/** One line saying what the script does next, timestamped. */
export function step(what) {
  console.log(`[${new Date().toISOString()}] ${what}`);
}

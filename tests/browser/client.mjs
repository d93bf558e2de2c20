// What the browser scripts share: the API as the tests call it (with the token), and the step
// lines they print.

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

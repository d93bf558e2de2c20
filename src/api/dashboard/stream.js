// The dashboard's side of the event stream: a WebSocket on /v1/events that reconnects with
// backoff, and says whether it is live. What an event means for the page is the app's
// business (the `onEvent` callback); the token comes from the app too.
//
// It never resumes with `since`: on every (re)connect the app refetches the pages it shows,
// which is cheaper than replaying a backlog, and a reader that fell behind (`lagged`) is better
// served by fresh pages than by the events it missed.

// What a subprotocol name may hold (RFC 6455: an HTTP token).
const PROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const FIRST_RETRY_MS = 2000;
const MAX_RETRY_MS = 60000;

export class EventStream {
  /**
   * @param {{ token: () => string, onOpen: () => void, onClose: () => void,
   *           onRefused: () => void, onEvent: (ev: object) => void }} hooks
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.ws = null;
    this.live = false;
    this.retryMs = FIRST_RETRY_MS;
    this.timer = 0;
  }

  start() {
    clearTimeout(this.timer);
    const url = new URL('/v1/events', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set headers on a WebSocket: the token goes as a subprotocol
    // (`hopper, token.TOKEN`), which proxies do not write to their access logs as they do a
    // URL; a token with characters a protocol name cannot hold goes in the query instead.
    const token = this.hooks.token();
    const protocols = [];
    if (token && PROTOCOL_TOKEN.test(token)) protocols.push('hopper', `token.${token}`);
    else if (token) url.searchParams.set('token', token);
    let ws;
    try { ws = new WebSocket(url, protocols); } catch { this.later(); return; }
    this.ws = ws;
    ws.onopen = () => {
      this.live = true;
      this.retryMs = FIRST_RETRY_MS;
      this.hooks.onOpen();
    };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      this.hooks.onEvent(ev);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return; // replaced by restart()
      this.ws = null;
      const was = this.live;
      this.live = false;
      this.hooks.onClose();
      if (e.code === 4001) { this.hooks.onRefused(); return; }
      // A server without the stream answers the upgrade 404 every time: back off, so polling
      // does the work and the stream is picked up within a minute of an upgrade.
      if (!was) this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
      this.later();
    };
  }

  later() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), this.retryMs);
  }

  /** Reconnects now (a new token). */
  restart() {
    const ws = this.ws;
    this.ws = null;
    this.live = false;
    ws?.close();
    this.retryMs = FIRST_RETRY_MS;
    this.start();
  }
}

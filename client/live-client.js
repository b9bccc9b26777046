// live-client.js: watch aiagent-live executions from a browser, without missing or repeating
// an update. A dependency-free ES module: import it from the service itself at
// /static/live-client.js, or install this folder as the package `@aiagent-live/client` (types in
// live-client.d.ts, a Vue composable in use-execution.js). This file is the one source of both.
//
//   const watcher = watchExecution(id, {getToken, onStatus, onNode, onLog, onResync, onState, onError});
//   watcher.state; watcher.close();
//   const feed = watchFeed({getToken, workflowId, onSync, onStatus, onState, onError});
//
// Protocol (see the service's README): every status, node and log message carries the
// execution's `seq`, gap-free and increasing. The client keeps the last seq it has applied and
// reconnects with ?since=<it>, so the server sends exactly what it lacks; anything not newer is
// dropped here too. A fresh connect (or a `resync: true` snapshot) is a view rather than a
// history (in workflow order, not seq order): it ends with {"type": "synced", "seq": N}, and only
// then does the view count as applied, up to N. A catch-up after `since` ends with one too.

export const TERMINAL_STATUSES = new Set(['completed', 'failed', 'cancelled']);

// Close codes the service uses.
export const CLOSE = Object.freeze({
  FINISHED: 1000, GOING_AWAY: 1001, ABNORMAL: 1006, TOO_SLOW: 1013, UNAUTHORIZED: 4401, NOT_FOUND: 4404,
  TOO_MANY_SOCKETS: 4429,
});

// onError's code when the service refused the handshake for this page's origin (an HTTP 403,
// which the browser shows the page only as a socket that failed to open).
const ORIGIN_REFUSED = 403;

const DEFAULTS = {
  baseUrl: undefined,          // the service's origin; default: where this module was loaded from
  backoffMinMs: 500,           // first reconnect delay; doubles each failed try ...
  backoffMaxMs: 15000,         // ... up to this, each delay jittered to 50-100 %
  pingIntervalMs: 25000,       // application ping (the server also pings at the protocol level)
  pongTimeoutMs: 10000,        // no pong by then: the connection is dead, reconnect
  refreshBeforeExpiryMs: 60000, // ask getToken() for a new token this long before `exp`
};

/** The `exp` claim of a JWT, in ms since the epoch; null when it cannot be read. */
export function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(payload + '='.repeat((4 - payload.length % 4) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function socketBase(baseUrl) {
  const base = new URL(baseUrl || import.meta.url);
  base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
  return base;
}

/**
 * Why the service refuses this page's origin (its own words, naming the setting to change), or
 * null: allowed, the same origin, or the service cannot be asked (down, or too old to know).
 */
async function originRefusal(baseUrl) {
  const service = new URL(baseUrl || import.meta.url);
  if (typeof location !== 'undefined' && location.origin === service.origin) return null;
  if (typeof fetch !== 'function') return null;
  try {
    const url = new URL('/api/v1/origin-check', service);
    const response = await fetch(url, { credentials: 'omit', cache: 'no-store' });
    if (!response.ok) return null;
    const answer = await response.json();
    return answer.allowed === false ? String(answer.message) : null;
  } catch {
    return null;
  }
}

/**
 * One WebSocket that reconnects by itself: backoff with jitter, heartbeat, token refresh.
 * Subclasses say what to send on open and what a message means.
 */
class LiveSocket {
  constructor(path, options) {
    this.options = { ...DEFAULTS, ...options };
    this.path = path;
    this.state = 'idle';
    this.connections = 0;       // sockets opened so far (1 + reconnects)
    this.lastError = null;
    this._ws = null;
    this._attempt = 0;
    this._timers = new Set();
    this._token = options.token || null;
    this._freshToken = false;   // the token in hand was just given by getToken()
    this._stopped = false;
    this._onOnline = () => { if (this.state === 'reconnecting') this._reconnectNow(); };
    if (typeof window !== 'undefined') window.addEventListener('online', this._onOnline);
    queueMicrotask(() => this._connect());
  }

  /** Stop for good; no callback fires after this. */
  close() {
    if (this._stopped) return;
    this._setState('closed');
    this._stop();
  }

  // -- subclass hooks ------------------------------------------------------------------------
  _url(base) { return new URL(this.path, base); }
  _opened() {}
  _message(_msg) {}
  _firstMessage() {} // the server accepted us and speaks: live
  _dropped() {}   // the socket ended; it will be reopened unless stopped

  // -- connecting ----------------------------------------------------------------------------
  async _connect() {
    if (this._stopped) return;
    if (this.connections === 0) this._setState('connecting');
    let token;
    try {
      token = await this._currentToken();
    } catch (err) {
      return this._fail(CLOSE.UNAUTHORIZED, `could not get a token: ${err && err.message || err}`);
    }
    if (this._stopped) return;
    const url = this._url(socketBase(this.options.baseUrl));
    if (token) url.searchParams.set('access_token', token);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      return this._fail(0, `cannot open ${url.origin}: ${err.message}`);
    }
    this._ws = ws;
    this._heard = false;
    this.connections += 1;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._scheduleRefresh(token);
      this._heartbeat();
      this._opened();
    };
    ws.onmessage = (event) => {
      this._alive();
      if (!this._heard) {
        this._heard = true;
        this._firstMessage();
      }
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg.type === 'pong') return this._pong(msg);
      if (msg.type === 'auth_ok') return;
      if (msg.type === 'error') return this._report({ code: 0, message: msg.message, fatal: false, detail: msg });
      this._message(msg);
    };
    ws.onclose = (event) => this._closed(ws, event.code, event.reason, opened);
  }

  async _currentToken() {
    const expiry = this._token && tokenExpiry(this._token);
    if (expiry && expiry <= Date.now() && this.options.getToken) this._token = null;
    if (!this._token && this.options.getToken) {
      this._token = await this.options.getToken();
      this._freshToken = true;
    }
    return this._token;
  }

  _closed(ws, code, reason, opened) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._clearTimers();
    this._dropped();
    if (this._stopped) return;
    if (this._finished) {
      this._setState('finished', { code });
      return this._stop();
    }
    if (code === CLOSE.FINISHED) {
      this._setState('finished', { code });
      return this._stop();
    }
    if (code === CLOSE.NOT_FOUND) return this._fail(code, reason || 'no such execution');
    if (code === CLOSE.UNAUTHORIZED) {
      // One fresh token per refusal: a token getToken() has just handed over and that was
      // refused as well is final (it would be refused again).
      if (this.options.getToken && !this._freshToken) {
        this._token = null;
        return this._retry(code, reason, 0);
      }
      return this._fail(code, reason || 'token refused');
    }
    if (code === 1008 || code === 1003) return this._fail(code, reason || 'refused by the server');
    // A socket that never opened may have been refused for this page's origin, which no retry
    // would change: ask the service (the browser hides the handshake's 403 from us).
    if (!opened && code === CLOSE.ABNORMAL) return this._retryUnlessOriginRefused(code, reason);
    // 1001 going away, 1013 too slow, 1006 network loss, 1011/1012 server trouble, 4429 too
    // many sockets for this token (one may close meanwhile): come back, later each time.
    this._retry(code, reason);
  }

  _retry(code, reason, delay) {
    const { backoffMinMs, backoffMaxMs } = this.options;
    if (delay === undefined) {
      const ceiling = Math.min(backoffMaxMs, backoffMinMs * 2 ** this._attempt);
      delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
      this._attempt += 1;
    }
    this._setState('reconnecting', { code, reason, delayMs: delay, attempt: this._attempt });
    this._later(delay, () => this._connect());
  }

  async _retryUnlessOriginRefused(code, reason) {
    const refusal = await originRefusal(this.options.baseUrl);
    if (this._stopped) return;
    if (refusal) return this._fail(ORIGIN_REFUSED, refusal);
    this._retry(code, reason);
  }

  _reconnectNow() {
    this._clearTimers();
    this._connect();
  }

  _fail(code, message) {
    this._report({ code, message, fatal: true });
    this._setState('failed', { code, reason: message });
    this._stop();
  }

  _stop() {
    this._stopped = true;
    this._clearTimers();
    if (typeof window !== 'undefined') window.removeEventListener('online', this._onOnline);
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000);
  }

  /** A connection proved good: the next failure starts the backoff from the bottom again. */
  _healthy() {
    this._attempt = 0;
    this._freshToken = false;
  }

  // -- heartbeat -----------------------------------------------------------------------------
  _send(message) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(message));
  }

  _heartbeat() {
    this._send({ type: 'ping' });
    this._pongTimer = this._later(this.options.pongTimeoutMs, () => this._ws && this._ws.close(4000, 'no pong'));
    this._pingTimer = this._later(this.options.pingIntervalMs, () => this._heartbeat());
  }

  _alive() {
    // A long catch-up delays the pong: while messages flow, the connection is alive.
    if (this._pongTimer) {
      this._clear(this._pongTimer);
      this._pongTimer = this._later(this.options.pongTimeoutMs, () => this._ws && this._ws.close(4000, 'no pong'));
    }
  }

  _pong() {
    if (this._pongTimer) { this._clear(this._pongTimer); this._pongTimer = null; }
  }

  // -- tokens --------------------------------------------------------------------------------
  _scheduleRefresh(token) {
    if (!token || !this.options.getToken) return;
    const expiry = tokenExpiry(token);
    if (expiry === null) return;
    const delay = Math.max(0, expiry - Date.now() - this.options.refreshBeforeExpiryMs);
    this._later(Math.min(delay, 2 ** 31 - 1), async () => {
      try {
        const fresh = await this.options.getToken();
        // The same token again: nothing to refresh to (the server closes 4401 at its expiry).
        if (this._stopped || !fresh || fresh === token) return;
        this._token = fresh;
        this._send({ type: 'auth', token: fresh });
        this._scheduleRefresh(fresh);
      } catch (err) {
        this._report({ code: CLOSE.UNAUTHORIZED, message: `token refresh failed: ${err && err.message || err}`,
                       fatal: false });
      }
    });
  }

  // -- plumbing ------------------------------------------------------------------------------
  _later(ms, fn) {
    const timer = setTimeout(() => { this._timers.delete(timer); fn(); }, ms);
    this._timers.add(timer);
    return timer;
  }

  _clear(timer) {
    clearTimeout(timer);
    this._timers.delete(timer);
  }

  _clearTimers() {
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._pongTimer = this._pingTimer = null;
  }

  _setState(state, info = {}) {
    if (this.state === state && state !== 'reconnecting') return;
    this.state = state;
    this._call('onState', state, info);
  }

  _report(error) {
    this.lastError = error;
    this._call('onError', error);
  }

  _call(name, ...args) {
    const fn = this.options[name];
    if (!fn) return;
    try {
      fn(...args);
    } catch (err) {
      console.error(`live-client: ${name} threw`, err);
    }
  }
}

/**
 * Watch one execution on /api/v1/ws/executions/{id}.
 *
 * options: token | getToken (async, called at start, on 4401 and before `exp`), onStatus, onNode,
 * onLog, onResync (forget what you hold: a fresh view follows), onState(state, info),
 * onError({code, message, fatal}), baseUrl, backoffMinMs, backoffMaxMs, pingIntervalMs.
 * States: connecting, live, reconnecting, finished (terminal status: stops), failed (4404, a
 * token refused, or this page's origin refused (code 403): stops), closed (by close()).
 * `info.resumed` is true when a reconnect resumed.
 */
export function watchExecution(executionId, options = {}) {
  return new ExecutionWatcher(executionId, options);
}

class ExecutionWatcher extends LiveSocket {
  constructor(executionId, options) {
    super(`/api/v1/ws/executions/${encodeURIComponent(executionId)}`, options);
    this.executionId = executionId;
    this.lastSeq = null;     // the resume cursor: every event up to it has been applied
    this.status = null;      // the latest status message
    this.resumes = 0;        // reconnects that resumed with since
    this._finished = false;
    this._since = null;
    this._viewing = false;   // receiving a snapshot (fresh or resync), before its `synced`
    this._mustReset = false; // a snapshot was cut short: the next view replaces it
  }

  _url(base) {
    const url = super._url(base);
    this._since = this._mustReset ? null : this.lastSeq;
    if (this._since !== null) url.searchParams.set('since', String(this._since));
    return url;
  }

  _firstMessage() {
    this._healthy();
    const resumed = this._since !== null;
    if (resumed) this.resumes += 1;
    this._setState('live', { resumed, since: this._since });
  }

  _opened() {
    this._viewing = this._since === null;
    if (this._viewing && (this._mustReset || this.lastSeq !== null)) this._call('onResync', { reason: 'reconnect' });
    this._mustReset = false;
  }

  _message(msg) {
    if (msg.type === 'synced') {
      // The snapshot or catch-up is complete: everything up to msg.seq is applied (a view
      // replaces the cursor; a catch-up has brought it there).
      this.lastSeq = this._viewing || this.lastSeq === null ? msg.seq : Math.max(this.lastSeq, msg.seq);
      this._viewing = false;
      return;
    }
    if (!('seq' in msg) || !['status', 'node', 'log'].includes(msg.type)) return;
    if (msg.resync && !this._viewing) {
      // The server no longer has the history after our cursor: a fresh view replaces ours.
      this._viewing = true;
      this._call('onResync', { reason: 'resync' });
    }
    if (!this._viewing) {
      if (this.lastSeq !== null && msg.seq <= this.lastSeq) return; // already applied
      this.lastSeq = msg.seq;
    }
    if (msg.type === 'status') {
      this.status = msg;
      if (TERMINAL_STATUSES.has(msg.status)) this._finished = true;
      this._call('onStatus', msg);
    } else if (msg.type === 'node') {
      this._call('onNode', msg);
    } else {
      this._call('onLog', msg);
    }
  }

  _dropped() {
    if (this._viewing) {
      // Cut off inside a snapshot: what it delivered is partial and the cursor never moved.
      this._viewing = false;
      if (!this._finished) this._mustReset = true;
    }
  }
}

/**
 * Watch the executions feed on /api/v1/ws: every status change of every execution the token may
 * see (optionally one workflow's, or one status). The feed does not replay what was missed
 * while disconnected: onSync() is called each time it is (re)subscribed, and each time the
 * server may have missed a change, which is when to (re)load the list over REST; status
 * messages newer than what you hold (by `seq`) follow.
 */
export function watchFeed(options = {}) {
  return new FeedWatcher(options);
}

class FeedWatcher extends LiveSocket {
  constructor(options) {
    super('/api/v1/ws', options);
    this._seqs = new Map(); // execution id -> highest status seq passed on
    this.resumes = 0;
  }

  _opened() {
    const subscribe = { type: 'subscribe', feed: 'executions' };
    if (this.options.workflowId) subscribe.workflow_id = this.options.workflowId;
    if (this.options.status) subscribe.status = this.options.status;
    this._send(subscribe);
  }

  _message(msg) {
    if (msg.type === 'subscribed') {
      this._healthy();
      // Again on the same connection: the server may have missed a change; reload, nothing more.
      const again = this._subscribedOn === this.connections;
      this._subscribedOn = this.connections;
      const resumed = this.connections > 1;
      if (resumed && !again) this.resumes += 1;
      this._setState('live', { resumed });
      this._call('onSync', { resumed });
      return;
    }
    if (msg.type !== 'status') return;
    if ((this._seqs.get(msg.execution_id) || 0) >= msg.seq) return;
    this._seqs.set(msg.execution_id, msg.seq);
    if (this._seqs.size > 5000) this._seqs.delete(this._seqs.keys().next().value);
    this._call('onStatus', msg);
  }
}

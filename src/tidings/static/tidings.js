// tidings.js — the browser client of tidings: one ES module, no dependencies, no build step.
//
//   import { connect } from "/tidings.js";
//   const client = connect("http://127.0.0.1:8000");
//   client.subscribe("stocks", { onMessage: (m) => console.log(m.id, m.data) });
//
// It reads with the best technique that works (WebSocket, then SSE, then long
// poll, then poll), resumes from the last id of every channel after any
// disconnect or technique change, never delivers a message twice or out of
// order, and reports a gap when the server could not keep what was missed.
// docs/browser-client.md is the user's guide; docs/protocol.md the wire contract.

export const TECHNIQUES = Object.freeze(["websocket", "sse", "longpoll", "poll"]);

/** Every time is in milliseconds. */
export const DEFAULTS = Object.freeze({
  transports: TECHNIQUES,
  attemptTimeout: 5000, // a technique must work within this, or the next one is tried
  sseFirstEventTimeout: 3000, // an event stream silent this long after its head is buffered
  idleTimeout: 60000, // a stream with no bytes at all (the server's heartbeat is 20 s) is dead
  pingInterval: 25000, // WebSocket ping commands, to notice a dead connection
  requestTimeout: 10000, // publishing, polls, ping answers
  backoff: Object.freeze({ initial: 250, max: 30000, factor: 2 }),
  upgradeAfter: 300000, // on a fallback, try the better techniques again after this long
  pollInterval: 1000,
  longpollWait: 25000, // how long the server may hold a long poll (it cuts to its max_wait)
  // A token (docs/security.md): a string, or a function returning one or a promise of one,
  // called again when the server says the token expired. Sent as ?token= on reads (an
  // EventSource-style request and a WebSocket cannot carry headers without a preflight),
  // as Authorization: Bearer on publish. With a function and a JWT, an open WebSocket
  // gets a fresh token ahead of expiry with an `auth` command (see refreshDelay).
  token: null,
  // One connection per origin for all tabs using the same server and options: "auto"
  // (a SharedWorker where there is one, else a leader tab), "worker", "leader", or false.
  shareTabs: "auto",
  // Fewer bytes (docs/protocol.md): `delta` asks the server for deltas (?delta=1, "delta":
  // true), applied here so that onMessage still gets whole messages; `latest` asks for the
  // newest message of each channel only, the skipped ones counted in a "latest" gap.
  delta: false,
  latest: false,
  // This client's id in presence (1 to 64 of A-Z a-z 0-9 _ -); null: the one the server
  // assigns first, then kept across reconnects and technique switches (sent as ?client=).
  clientId: null,
});

// Refreshing a JWT over an open WebSocket (the same rule as the Python client): this share
// of its remaining lifetime before `exp`, at least REFRESH_MIN_LEAD seconds before, never
// before half the remaining lifetime; with less than REFRESH_MIN_REMAINING seconds left,
// not at all (the server closes with 4001 and the client resumes with a fresh token).
const REFRESH_SHARE = 0.15;
const REFRESH_MIN_LEAD = 5;
const REFRESH_MIN_REMAINING = 1;
const BASE64URL_RE = /^[A-Za-z0-9_-]+$/;

/** The `exp` of a JWT in Unix seconds, unverified (the server verifies); null if opaque. */
export function tokenExpiry(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3 || !BASE64URL_RE.test(parts[1])) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64 + "===".slice((base64.length + 3) % 4)),
                                  (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    const exp = payload && typeof payload === "object" ? payload.exp : null;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null; // not base64url, not UTF-8, not JSON
  }
}

/** Seconds to wait before refreshing a token that expires in `remaining` seconds, or null. */
export function refreshDelay(remaining) {
  if (!(remaining >= REFRESH_MIN_REMAINING)) return null;
  const lead = Math.min(Math.max(remaining * REFRESH_SHARE, REFRESH_MIN_LEAD), remaining / 2);
  return remaining - lead;
}

const STATES = ["connecting", "open", "fallback", "reconnecting", "closed"];
// Refusals that say "not now" (docs/protocol.md): the message store is away, the node shuts
// down, it is full. Every technique would get the same: back off and try the same one again.
const RETRYABLE_REFUSALS = new Set(["broker_unavailable", "shutdown", "too_many_connections"]);
const CHANNEL_RE = /^[A-Za-z0-9_\-.:@]{1,128}$/;
const ID_RE = /^([a-z0-9]{8})-(0|[1-9][0-9]{0,17})$/;
// An idempotency key: the server's MAX_IDEMPOTENCY_KEY_LENGTH and IDEMPOTENCY_KEY_CHARSET.
const IDEMPOTENCY_KEY = /^[A-Za-z0-9\-_.:~+\/=]{1,128}$/;
// A client id (docs/protocol.md, "The client id"): the server's check_client_id.
const CLIENT_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** An error answered by the server (`status` is null over a WebSocket) or a client misuse. */
export class TidingsError extends Error {
  constructor(message, { status = null, code = "client_error" } = {}) {
    super(message);
    this.name = "TidingsError";
    this.status = status;
    this.code = code;
  }
}

/**
 * Connect to the tidings server at `url` (http or https; relative to the page in a browser).
 * Nothing is read until the first `subscribe()`. Throws a `TidingsError` for a URL that is
 * not http(s) or unknown `transports`. Types: tidings.d.ts, beside this file.
 * @param {string | URL} url
 * @param {import("./tidings.d.ts").Options} [options]
 * @returns {import("./tidings.d.ts").Client}
 */
export function connect(url, options = {}) {
  return sharedClient(url, options) || new Client(url, options);
}

// ---------------------------------------------------------------------------
// Positions and cursors: the client's resume rules, without I/O.

function parseId(text) {
  const match = typeof text === "string" ? ID_RE.exec(text) : null;
  if (match === null) throw new Outcome("retry", `malformed id from the server: ${text}`);
  return { epoch: match[1], seq: BigInt(match[2]), id: text };
}

function checkChannel(name) {
  if (typeof name !== "string" || !CHANNEL_RE.test(name)) {
    throw new TidingsError(
      `invalid channel name ${JSON.stringify(name)}: 1 to 128 of A-Z a-z 0-9 _ - . : @`);
  }
  return name;
}

/** `since` of a subscription → Map channel → {pos, fromOrigin}; throws on a bad value. */
function parseSince(since, names) {
  const starts = new Map(names.map((name) => [name, { pos: null, fromOrigin: false }]));
  if (since === undefined || since === null) return starts;
  const bad = (why) => new TidingsError(`invalid since ${JSON.stringify(since)}: ${why}`);
  if (typeof since !== "string" || since === "") throw bad("use 0, a message id or a=ID,b=ID");
  const startOf = (text) => {
    if (text === "0") return { pos: null, fromOrigin: true };
    if (!ID_RE.test(text)) throw bad(`${JSON.stringify(text)} is not EPOCH-SEQ`);
    return { pos: parseId(text), fromOrigin: false };
  };
  if (!since.includes("=")) {
    if (since !== "0" && names.length > 1) throw bad("a message id names one channel");
    for (const name of names) starts.set(name, startOf(since));
    return starts;
  }
  for (const part of since.split(",")) {
    const at = part.indexOf("=");
    if (at < 0) throw bad(`${JSON.stringify(part)} is not CHANNEL=ID`);
    const name = part.slice(0, at);
    if (starts.has(name)) starts.set(name, startOf(part.slice(at + 1)));
  }
  return starts;
}

/** Why a reader ended: "failed" → try the next technique now; "retry" → back off, same one. */
class Outcome extends Error {
  constructor(kind, reason, code = null) {
    super(reason);
    this.kind = kind;
    this.code = code; // the server's error code, when it refused
  }
}

const STOPPED = new Outcome("stopped", "stopped");

// ---------------------------------------------------------------------------
// The client.

class Client {
  constructor(url, options = {}) {
    const base = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TidingsError(`the server URL must be http(s), not ${base.protocol}`);
    }
    this.url = base.origin + base.pathname.replace(/\/+$/, "");
    this._wsUrl = this.url.replace(/^http/, "ws");
    this.options = {
      ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
    };
    const order = [...this.options.transports];
    if (!order.length || order.some((t) => !TECHNIQUES.includes(t)) ||
        new Set(order).size !== order.length) {
      throw new TidingsError(`transports must be distinct names from ${TECHNIQUES.join(", ")}`);
    }
    this.options.transports = techniquesAvailable(order);
    /** This client's id in presence: the one chosen, or the first the server assigned. */
    this.clientId = checkClientId(this.options.clientId);
    /** One of connecting, open, fallback, reconnecting, closed. */
    this.state = "connecting";
    /** The technique in use (null while none works). */
    this.transport = null;
    /** What reading has cost: requests made (WebSocket handshakes too), bytes and messages. */
    this.stats = { requests: 0, bytesReceived: 0, messages: 0 };
    this._channels = new Map(); // name → {pos, fromOrigin, subs: Set<Subscription>}
    this._listeners = { state: new Set(), broker: new Set(), error: new Set() };
    this._index = 0; // the technique tried now: everything before it failed
    this._attempt = 0; // reconnections since the last connection that worked
    this._reader = null;
    this._wake = null;
    this._closed = false;
    this._why = null; // why the technique before this one failed, for the next state event
    this._disabled = new Set(); // techniques the server said it turned off, since the last success
    this._disabledReported = false;
    this._tokenValue = typeof this.options.token === "string" ? this.options.token : null;
    this._serverSide = null; // the ServerSideSubscription reading the user's channels, if any
    this._run().catch((error) => this._report(error));
  }

  /**
   * `on("state", fn(state, {transport, previous, reason}))` on each change;
   * `on("broker", fn({broker, message}))` when the server's message store (Redis)
   * becomes "unavailable" (stay connected: nothing is lost yet) or is "ok" again;
   * `on("error", fn(error))`. Returns a function that stops it.
   */
  on(event, fn) {
    return listen(this._listeners, event, fn);
  }

  /**
   * Read `channels` (a name or an array): `onMessage({channel, id, data, time})` once per
   * message, in order; `onGap({channel, from, to, reason, missed})` when messages were lost.
   * `since`: omitted → from now on, "0" → the oldest retained, an id, or "a=ID,b=ID".
   * A channel that the client already reads keeps its position; `since` applies to new ones.
   */
  subscribe(channels, options = {}) {
    checkMix(this, false);
    const { subscription, added, watched } = register(this, channels, options);
    // A channel read without joins and leaves until now is read again, asking for them.
    if (added.length || watched.length) this._channelsChanged([...added, ...watched], watched);
    return subscription;
  }

  /**
   * Read the channels the server reads for this client's user (docs/protocol.md, "A user's
   * channels"): `GET /subscribe` without `channel`, on every technique. `onSubscribed({channel,
   * next})` when the server starts reading one for the user (at the connection, or added by
   * `server.subscribe_user` while reading), `onUnsubscribed({channel})` when it stops;
   * `onMessage` and `onGap` as in `subscribe`. Their positions stay in the client's cursor:
   * a reconnection, or a switch of technique, resumes each exactly. `since` ("a=ID,b=ID",
   * e.g. a cursor kept from an earlier page) resumes those channels from there. One per
   * client; named channels beside it need `transports: ["websocket"]` (an HTTP read is
   * one or the other).
   */
  subscribeServerSide(options = {}) {
    const subscription = registerServerSide(this, options);
    this._wakeUp();
    if (this._reader) this._reader.stop(); // read again, without channel
    return subscription;
  }

  /**
   * Call the application's `on_rpc` hook over the WebSocket: resolves with its result.
   * Rejects with a `TidingsError`: the code the hook refused with (`forbidden` by default),
   * `no_rpc` (the server has no hook), `hook_unavailable` (retry), `timeout`, or
   * `not_websocket` when the client is not on an open WebSocket (it waits up to
   * `requestTimeout` for one being opened).
   */
  async rpc(method, data) {
    const command = rpcRequest({ type: "rpc" }, method, data);
    if (this._closed) throw new TidingsError("the client is closed");
    const reader = await this._openWebSocket();
    const ack = await reader.command(command);
    return ack.result === undefined ? null : ack.result;
  }

  /** The open WebSocket reader, waiting up to `requestTimeout` for one being opened. */
  async _openWebSocket() {
    const open = () => {
      const reader = this._reader;
      return reader && reader.technique === "websocket" && reader.isOpen() ? reader : null;
    };
    let reader = open();
    const reading = this._channels.size > 0 || this._serverSide !== null;
    const waiting = this.options.transports[0] === "websocket" && !this._closed && reading &&
      (this.state === "connecting" || this.state === "reconnecting" ||
       (this._reader && this._reader.technique === "websocket"));
    if (reader === null && waiting) {
      reader = await new Promise((resolve) => {
        const timer = setTimeout(() => { stop(); resolve(open()); }, this.options.requestTimeout);
        const stop = this.on("state", () => {
          const ready = open();
          if (ready || this._closed || (this.transport && this.transport !== "websocket")) {
            clearTimeout(timer);
            stop();
            resolve(ready);
          }
        });
      });
    }
    if (reader === null) {
      throw new TidingsError(reading
        ? `rpc needs an open WebSocket; this client is ${this.state}` +
          (this.transport ? ` on ${this.transport}` : "")
        : "rpc needs an open WebSocket, and this client reads nothing yet " +
          "(subscribe or subscribeServerSide first)",
                             { code: "not_websocket" });
    }
    return reader;
  }

  /**
   * Who is on `channel` now: resolves with `{channel, count, users, members, more}` (with
   * `{count: true}`, only `{channel, count, users}`), over the WebSocket when one is open,
   * else `GET /channels/{channel}/presence`. Rejects with a `TidingsError` (`presence_disabled`
   * when the channel's namespace has no presence, `forbidden`, `connection_failed`).
   */
  async presence(channel, { count = false } = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    const reader = this._reader;
    if (reader && reader.technique === "websocket" && reader.isOpen()) {
      const command = { type: "presence", channel };
      if (count) command.count = true;
      const { type, req, ...answer } = await reader.command(command);
      return answer;
    }
    return readPresence(this.url, channel, count, {
      token: () => this._token(), requestTimeout: this.options.requestTimeout, stats: this.stats,
    });
  }

  /**
   * Publish `data` (any JSON value); resolves with the message id once it is in the log.
   * With `{idempotencyKey}` (1 to 128 of A-Z a-z 0-9 - _ . : ~ + / =), a retry with the same
   * key is safe: the server stores the message once and answers the first id (a replay).
   */
  async publish(channel, data, { idempotencyKey } = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    const body = JSON.stringify(data);
    if (body === undefined) throw new TidingsError("data must be a JSON value");
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(idempotencyKey)) {
      throw new TidingsError("idempotencyKey must be 1 to 128 of A-Z a-z 0-9 - _ . : ~ + / =");
    }
    const reader = this._reader;
    if (reader && reader.technique === "websocket" && reader.isOpen()) {
      return reader.publish(channel, JSON.parse(body), idempotencyKey);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.requestTimeout);
    let response;
    let answer;
    try {
      const token = await this._token();
      const headers = { "Content-Type": "application/json" };
      if (token !== null) headers.Authorization = `Bearer ${token}`;
      if (idempotencyKey !== undefined) headers["Idempotency-Key"] = idempotencyKey;
      this.stats.requests += 1;
      response = await fetch(`${this.url}/channels/${encodeURIComponent(channel)}`, {
        method: "POST", body, headers,
        cache: "no-store", signal: controller.signal,
      });
      answer = await response.json().catch(() => null);
    } catch (error) {
      throw new TidingsError(`cannot publish: ${error.message}`, { code: "connection_failed" });
    } finally {
      clearTimeout(timer);
    }
    // 200: a replay of an earlier publish with the same idempotency key.
    if ((response.status !== 201 && response.status !== 200) || !answer
        || typeof answer.id !== "string") {
      throw refusal(response.status, answer);
    }
    return answer.id;
  }

  /**
   * A page of `channel`'s retained messages, newest first (chat scroll-back): resolves with
   * `{messages, next, before, gaps}`. Without `before`, the newest messages; with `before`
   * (an id, such as the `before` of the page above), those older than it; `before` is null
   * on the page that reached the oldest retained message. `since` ("0" or an id) stops the
   * page there; `limit` is the page size. `subscribe(channel, {since: page.next})` goes on
   * after the page's newest message, nothing missed. docs/protocol.md: History backwards.
   */
  async history(channel, page = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    return readHistory(this.url, channel, page, {
      token: () => this._token(), requestTimeout: this.options.requestTimeout, stats: this.stats,
    });
  }

  /** Stop reading and end every subscription; the client cannot be used again. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._setState("closed", null, "closed by the page");
    if (this._reader) this._reader.stop();
    this._wakeUp();
    for (const channel of this._channels.values()) {
      for (const subscription of channel.subs) subscription.closed = true;
    }
    this._channels.clear();
  }

  // the token ----------------------------------------------------------------

  /** The token to send (null: none); calls the token function when none is held. */
  async _token() {
    const source = this.options.token;
    if (this._tokenValue === null && typeof source === "function") {
      const value = await source();
      if (typeof value !== "string" || value === "") {
        throw new TidingsError("the token function must return a non-empty string");
      }
      this._tokenValue = value;
    }
    return this._tokenValue;
  }

  /**
   * A token to replace `stale` before it expires (only with a function): the one held if
   * another reader already replaced it, else a new one. If the function fails, the token
   * held stays and the promise rejects.
   */
  async _freshToken(stale) {
    if (this._tokenValue === null || this._tokenValue === stale) {
      const value = await this.options.token();
      if (typeof value !== "string" || value === "") {
        throw new TidingsError("the token function must return a non-empty string");
      }
      this._tokenValue = value;
    }
    return this._tokenValue;
  }

  /** `?token=…` or `&token=…` for a read URL, or "" without a token. */
  async _tokenParam(first) {
    const token = await this._token();
    return token === null ? "" : `${first ? "?" : "&"}token=${encodeURIComponent(token)}`;
  }

  /** The server refused the token as expired: the next request fetches a new one. */
  _tokenExpired() {
    if (typeof this.options.token === "function") this._tokenValue = null;
  }

  // the reconnect loop ------------------------------------------------------

  async _run() {
    const order = this.options.transports;
    while (!this._closed) {
      if (this._channels.size === 0 && this._serverSide === null) {
        await new Promise((resolve) => { this._wake = resolve; });
        continue;
      }
      const technique = order[this._index];
      const reader = new READERS[technique](this, technique);
      this._reader = reader;
      let outcome = null;
      try {
        await reader.run();
      } catch (error) {
        outcome = error instanceof Outcome ? error : new Outcome("retry", String(error));
      } finally {
        reader.dispose();
        this._reader = null;
      }
      if (this._closed || outcome === null || outcome === STOPPED) continue; // restart at once
      this._noteDisabled(technique, outcome);
      if (outcome.kind === "failed" && this._index + 1 < order.length) {
        this._index += 1;
        this._why = `${technique} failed: ${outcome.message}`;
        continue;
      }
      if (outcome.kind === "failed") this._index = 0; // all failed: from the best, later
      const delay = this._backoffDelay();
      this._setState(this.transport === null && this.state === "connecting"
        ? "connecting" : "reconnecting", null, outcome.message, delay);
      await this._sleep(delay);
    }
  }

  /** Tell the page once when the server has turned off every technique this client may use. */
  _noteDisabled(technique, outcome) {
    if (outcome.code !== "transport_disabled") return;
    this._disabled.add(technique);
    const order = this.options.transports;
    if (this._disabledReported || !order.every((t) => this._disabled.has(t))) return;
    this._disabledReported = true;
    this._report(new TidingsError(
      `the server serves none of the techniques this client may use (${order.join(", ")}); ` +
      "it keeps trying, in case the server is reconfigured", { code: "transport_disabled" }));
  }

  _working(reader) {
    this._attempt = 0;
    this._disabled.clear();
    this._disabledReported = false;
    const best = this._index === 0;
    this._setState(best ? "open" : "fallback", reader.technique, this._why);
    this._why = null;
    if (!best) {
      reader.upgradeTimer = setTimeout(() => {
        if (this._reader !== reader) return;
        this._index = 0;
        this._why = `trying ${this.options.transports[0]} again after ${reader.technique}`;
        reader.stop();
      }, this.options.upgradeAfter);
    }
  }

  _backoffDelay() {
    const { initial, max, factor } = this.options.backoff;
    const ceiling = Math.min(max, initial * factor ** this._attempt);
    this._attempt += 1;
    return Math.random() * ceiling; // full jitter: clients cut off together come back apart
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this._wake = () => { clearTimeout(timer); resolve(); };
    });
  }

  _wakeUp() {
    const wake = this._wake;
    this._wake = null;
    if (wake) wake();
  }

  _setState(state, transport, reason, retryIn) {
    const previous = this.transport;
    if (state === this.state && transport === previous) return;
    this.state = state;
    this.transport = transport;
    const detail = { transport, previous, reason: reason || null };
    if (retryIn !== undefined) detail.retryIn = retryIn;
    for (const fn of [...this._listeners.state]) guard(() => fn(state, detail), this);
  }

  _brokerStatus(value) {
    if (!value || typeof value.broker !== "string") return;
    const status = { broker: value.broker, message: String(value.message || "") };
    for (const fn of [...this._listeners.broker]) guard(() => fn(status), this);
  }

  _report(error) {
    if (this._listeners.error.size === 0) {
      console.error("tidings:", error);
      return;
    }
    for (const fn of [...this._listeners.error]) {
      try { fn(error); } catch (inner) { console.error("tidings:", inner); }
    }
  }

  // channels and what readers hand in -------------------------------------------

  _channelsChanged(added, removed) {
    this._wakeUp(); // the loop may be waiting for a first channel
    if (this._reader) this._reader.channelsChanged(added, removed);
  }

  _unsubscribe(subscription) {
    if (subscription === this._serverSide) {
      this._serverSide = null;
      for (const name of [...subscription.channels]) this._dropServerChannel(name);
      if (this._reader && !this._closed) this._reader.stop(); // read again, with channels
      return;
    }
    const removed = [];
    for (const name of subscription.channels) {
      const channel = this._channels.get(name);
      if (!channel) continue;
      channel.subs.delete(subscription);
      if (channel.subs.size === 0) {
        this._channels.delete(name);
        removed.push(name);
      }
    }
    if (removed.length && !this._closed) this._channelsChanged([], removed);
  }

  /** The `since` of one channel: its last id, "0", or null (the end). */
  _sinceOf(name) {
    const channel = this._channels.get(name);
    if (!channel) return null;
    if (channel.pos) return channel.pos.id;
    return channel.fromOrigin ? "0" : null;
  }

  /**
   * /subscribe?channel=..&since=a=ID,b=ID — one multi-channel cursor for every HTTP technique;
   * with the client id once known, and `presence=1` (and where the joins and leaves resume)
   * when a subscription asked for them: a poller asking needs an id, so it makes one.
   */
  _readUrl(names, extra = "", poller = false) {
    // The user's channels: no `channel`, and the cursor of every channel heard of.
    if (this._serverSide) names = [...this._channels.keys()];
    const query = this._serverSide ? []
      : names.map((name) => `channel=${encodeURIComponent(name)}`);
    const parts = names.filter((n) => this._sinceOf(n) !== null)
      .map((n) => `${n}=${this._sinceOf(n)}`);
    if (parts.length) query.push(`since=${encodeURIComponent(parts.join(","))}`);
    // A cursor naming no channel, once the server named the user's (empty) set: a channel
    // added meanwhile is then read from where it was added, not from its end.
    else if (this._serverSide && this._serverSide.heard) query.push("since=");
    for (const flag of readFlags(this.options)) query.push(`${flag}=1`);
    const watched = names.filter((n) => wantsPresence(this._channels.get(n)));
    if (watched.length) {
      if (poller && this.clientId === null) this._learnClient(newClientId());
      query.push("presence=1");
      const resume = watched.filter((n) => this._channels.get(n).presenceSince)
        .map((n) => `${n}=${this._channels.get(n).presenceSince}`);
      if (poller && resume.length) {
        query.push(`presence_since=${encodeURIComponent(resume.join(","))}`);
      }
    }
    if (this.clientId !== null) query.push(`client=${this.clientId}`);
    return `${this.url}/subscribe?${query.join("&")}${extra}`;
  }

  /** The server told this reader its client id: kept (and sent back) from then on. */
  _learnClient(id) {
    if (this.clientId !== null || typeof id !== "string" || !CLIENT_ID_RE.test(id)) return;
    this.clientId = id;
    if (this._onClient) this._onClient(id); // a Hub tells the tabs
  }

  /** A member list, join or leave from the server: see `acceptPresence`. */
  _acceptPresence(kind, value) {
    acceptPresence(this, kind, value);
  }

  /** The server says reading `name` starts after `id`; kept only while no position is known. */
  _learn(name, id) {
    const channel = this._channels.get(name);
    if (channel && channel.pos === null) {
      channel.pos = parseId(id);
      channel.fromOrigin = false;
      if (this._onLearn) this._onLearn(name, id); // a Hub tells the tabs where reading starts
    }
  }

  // the user's channels (subscribeServerSide) -------------------------------------

  /** The server reads `name` for the user, from `next` (null: from its first message). */
  _serverChannel(name, next) {
    const subscription = this._serverSide;
    if (!subscription || typeof name !== "string" || !CHANNEL_RE.test(name)) return;
    subscription.heard = true;
    if (subscription.channels.includes(name)) {
      this._learn(name, next);
      return;
    }
    let channel = this._channels.get(name);
    if (!channel) {
      channel = { pos: null, fromOrigin: false, subs: new Set(), ...NO_MEMBERS };
      this._channels.set(name, channel);
    }
    channel.subs.add(subscription);
    if (next !== null) this._learn(name, next);
    subscription.channels.push(name);
    subscription._subscribed({ channel: name, next });
  }

  /** The server stopped reading `name` for the user: nothing more of it is handed on. */
  _serverChannelRemoved(name) {
    const subscription = this._serverSide;
    if (!subscription || !subscription.channels.includes(name)) return;
    this._dropServerChannel(name);
    subscription._unsubscribed({ channel: name });
  }

  _dropServerChannel(name) {
    const subscription = this._serverSide || null;
    const channel = this._channels.get(name);
    const owner = subscription || [...(channel ? channel.subs : [])]
      .find((s) => s instanceof ServerSideSubscription);
    if (owner) owner.channels = owner.channels.filter((n) => n !== name);
    if (!channel) return;
    if (owner) channel.subs.delete(owner);
    if (channel.subs.size === 0) this._channels.delete(name);
  }

  /**
   * The whole set the server reads for the user, as a cursor (`a=ID,b=ID`): channels new to
   * the client are announced from their position there, those missing from it removed.
   */
  _serverSet(cursor) {
    if (!this._serverSide || typeof cursor !== "string") return;
    const set = new Map();
    for (const part of cursor ? cursor.split(",") : []) {
      const at = part.indexOf("=");
      if (at > 0) set.set(part.slice(0, at), part.slice(at + 1));
    }
    if (cursor !== "" && set.size === 0) return; // a single-channel cursor: not a set
    this._serverSide.heard = true;
    for (const name of [...this._serverSide.channels]) {
      if (!set.has(name)) this._serverChannelRemoved(name);
    }
    for (const [name, next] of set) this._serverChannel(name, next === "0" ? null : next);
  }

  _learnCursor(cursor, names) {
    if (typeof cursor !== "string" || cursor === "") return;
    if (!cursor.includes("=")) {
      if (names.length === 1) this._learn(names[0], cursor);
      return;
    }
    for (const part of cursor.split(",")) {
      const at = part.indexOf("=");
      const value = part.slice(at + 1);
      if (at > 0 && value !== "0") this._learn(part.slice(0, at), value);
    }
  }

  /** Deliver a message object; "hole" if it does not follow the last one (reconnect from it). */
  _acceptMessage(message) {
    if (!message || typeof message !== "object") throw new Outcome("retry", "not a message");
    const channel = this._channels.get(message.channel);
    if (!channel) return "ok"; // unsubscribed while it was on its way
    const pos = parseId(message.id);
    const last = channel.pos;
    if (last !== null) {
      if (pos.epoch !== last.epoch) return "hole"; // a new epoch comes with a gap, first
      if (pos.seq <= last.seq) return "ok"; // a duplicate after a resume: drop it
      if (pos.seq !== last.seq + 1n) return "hole";
    }
    let data = message.data;
    if (this.options.delta) {
      data = wholeData(channel, message);
      if (data === NO_BASE) return "hole"; // resume from the cursor: a whole message comes first
    }
    channel.pos = pos;
    channel.fromOrigin = false;
    this.stats.messages += 1;
    const delivered = { channel: message.channel, id: message.id, data, time: message.time };
    for (const subscription of [...channel.subs]) subscription._message(delivered);
    return "ok";
  }

  _acceptGap(gap) {
    if (!gap || typeof gap !== "object") throw new Outcome("retry", "not a gap");
    const channel = this._channels.get(gap.channel);
    if (!channel) return;
    const resume = parseId(gap.to);
    const last = channel.pos;
    if (last !== null && last.epoch === resume.epoch && resume.seq <= last.seq) return;
    channel.pos = resume;
    channel.fromOrigin = false;
    const event = { channel: gap.channel, from: gap.from, to: gap.to, reason: gap.reason,
                    missed: typeof gap.missed === "number" ? gap.missed : null };
    for (const subscription of [...channel.subs]) subscription._gap(event);
  }

  /**
   * Is the server there at all? Tells a refused technique from a server that is down
   * (a browser does not say why a WebSocket failed). Resolves with /healthz's answer
   * ({} if it is not JSON), or null when the server cannot be reached.
   */
  async _reachable() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.attemptTimeout);
    try {
      this.stats.requests += 1;
      const response = await fetch(`${this.url}/healthz`,
                                   { cache: "no-store", signal: controller.signal });
      return await response.json().catch(() => ({}));
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }
}

class Subscription {
  constructor(client, channels, { onMessage, onGap, onJoin, onLeave, onPresence, presence }) {
    this.client = client;
    this.channels = channels;
    this.closed = false;
    /** Whether it asked for joins and leaves (`presence`, or any presence callback). */
    this.watchesPresence = presence === undefined ? Boolean(onJoin || onLeave || onPresence)
      : Boolean(presence);
    this._onMessage = onMessage;
    this._onGap = onGap;
    this._onJoin = onJoin;
    this._onLeave = onLeave;
    this._onPresence = onPresence;
  }

  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._unsubscribe(this);
  }

  /**
   * Who is on `channel` (by default the subscription's only channel) now: resolves with
   * `{channel, count, users, members, more}`, or `{channel, count, users}` with
   * `{count: true}`. Needs no `presence` option: it asks the server each time.
   */
  async presence(channel, options = {}) {
    if (channel === undefined) {
      if (this.channels.length !== 1) {
        throw new TidingsError("name the channel: this subscription reads several");
      }
      channel = this.channels[0];
    }
    if (this.closed) throw new TidingsError("the subscription is closed");
    return this.client.presence(channel, options);
  }

  _presenceEvent(kind, event) {
    if (this.closed || !this.watchesPresence) return;
    const fn = kind === "join" ? this._onJoin : kind === "leave" ? this._onLeave
      : this._onPresence;
    if (fn) guard(() => fn(event), this.client);
  }

  _message(message) {
    if (!this.closed && this._onMessage) guard(() => this._onMessage(message), this.client);
  }

  _gap(gap) {
    if (!this.closed && this._onGap) guard(() => this._onGap(gap), this.client);
  }
}

/** The user's channels (`subscribeServerSide`): a subscription whose channels the server names. */
class ServerSideSubscription extends Subscription {
  constructor(client, { onMessage, onGap, onSubscribed, onUnsubscribed } = {}) {
    super(client, [], { onMessage, onGap, presence: false });
    this.heard = false; // the server named the user's set once (an empty one too)
    this._onSubscribed = onSubscribed;
    this._onUnsubscribed = onUnsubscribed;
  }

  /** The user's channels read now (a copy). */
  get serverChannels() {
    return [...this.channels];
  }

  async presence(channel, options = {}) {
    if (channel === undefined) throw new TidingsError("name the channel");
    return super.presence(channel, options);
  }

  _subscribed(event) {
    if (!this.closed && this._onSubscribed) guard(() => this._onSubscribed(event), this.client);
  }

  _unsubscribed(event) {
    if (!this.closed && this._onUnsubscribed) {
      guard(() => this._onUnsubscribed(event), this.client);
    }
  }
}

/** The `since` of `subscribeServerSide`: "a=ID,b=ID" (or nothing) as name → start. */
function serverSideStarts(since) {
  if (since === undefined || since === null) return new Map();
  if (typeof since !== "string" || !since.includes("=")) {
    throw new TidingsError(`invalid since ${JSON.stringify(since)}: use a=ID,b=ID`);
  }
  const names = since.split(",").map((part) => part.slice(0, Math.max(part.indexOf("="), 0)));
  names.forEach(checkChannel);
  return parseSince(since, names);
}

/** A client reads named channels or its user's channels over HTTP, both only on a WebSocket. */
function checkMix(client, serverSide) {
  const named = [...client._channels.values()].some(
    (channel) => [...channel.subs].some((s) => !(s instanceof ServerSideSubscription)));
  const other = serverSide ? named : client._serverSide !== null;
  const order = client.options.transports;
  if (other && (order.length !== 1 || order[0] !== "websocket")) {
    throw new TidingsError("a client reads named channels and its user's channels together " +
                           "only over a WebSocket (transports: [\"websocket\"]): an HTTP " +
                           "read is one or the other; use two clients");
  }
}

// Deltas (docs/protocol.md#deltas) ----------------------------------------------------------
// A delta message carries `base` (the id it applies to) and `delta` (a patch) instead of
// `data`. The client keeps each channel's last whole value; a delta whose base is not the
// one it holds is never applied: the reader resumes from the cursor, and the server sends a
// whole message first after a resume.

const NO_BASE = Symbol("no base");

function readFlags(options) {
  return ["delta", "latest"].filter((flag) => options[flag]);
}

/** The whole data of `message` for `channel` ({base}), or NO_BASE; keeps it as the next base. */
function wholeData(channel, message) {
  let data = message.data;
  if (Object.prototype.hasOwnProperty.call(message, "delta")) {
    const base = channel.base;
    if (!base || base.id !== message.base) return NO_BASE;
    try {
      data = applyDelta(base.data, message.delta);
    } catch {
      return NO_BASE;
    }
  }
  channel.base = { id: message.id, data };
  // The application may change what it is handed: the base stays a copy of its own.
  return data === null || typeof data !== "object" ? data : JSON.parse(JSON.stringify(data));
}

/**
 * `base` with `patch` applied (a new value): a scalar or [v] replaces, an object patches keys
 * or indices ([] removes a key, "len" resizes an array).
 */
export function applyDelta(base, patch) {
  if (Array.isArray(patch)) {
    if (patch.length !== 1) throw new TidingsError("a replacement is an array of one value");
    return patch[0];
  }
  if (patch === null || typeof patch !== "object") return patch;
  if (base === null || typeof base !== "object") {
    throw new TidingsError("a patch that does not fit its base");
  }
  const fresh = (key, change) => {  // a new key or element: a replacement, not an edit
    if (Array.isArray(change) ? change.length !== 1 : change !== null && typeof change === "object") {
      throw new TidingsError(`the new ${key} needs a value or [value]`);
    }
    return Array.isArray(change) ? change[0] : change;
  };
  const own = (object, key) => Object.prototype.hasOwnProperty.call(object, key);
  const put = (object, key, value) => Object.defineProperty(  // "__proto__" is a key too
    object, key, { value, writable: true, enumerable: true, configurable: true });
  if (!Array.isArray(base)) {
    const result = { ...base };
    for (const [key, change] of Object.entries(patch)) {
      if (Array.isArray(change) && change.length === 0) {
        if (!own(result, key)) throw new TidingsError(`removes the missing key ${key}`);
        delete result[key];
      } else if (own(result, key)) {
        put(result, key, applyDelta(result[key], change));
      } else {
        put(result, key, fresh(key, change));
      }
    }
    return result;
  }
  const length = own(patch, "len") ? patch.len : base.length;
  if (!Number.isInteger(length) || length < 0) throw new TidingsError("a bad array length");
  if (length - base.length > Object.keys(patch).length) {  // each new element needs its key
    throw new TidingsError("an array grew without values for its new elements");
  }
  const result = base.slice(0, length);
  const added = new Set();
  for (let index = base.length; index < length; index += 1) added.add(index);
  for (const [key, change] of Object.entries(patch)) {
    if (key === "len") continue;
    const index = Number(key);
    if (!/^[0-9]+$/.test(key) || index >= length) throw new TidingsError(`no element ${key}`);
    if (index >= base.length) {
      result[index] = fresh(key, change);
      added.delete(index);
    } else {
      result[index] = applyDelta(result[index], change);
    }
  }
  if (added.size) throw new TidingsError("an array grew without values for its new elements");
  return result;
}

function guard(fn, client) {
  try {
    fn();
  } catch (error) {
    client._report(error); // a page's callback must not break reading
  }
}

function refusal(status, answer) {
  const code = answer && typeof answer.error === "string" ? answer.error : "http_error";
  const message = answer && typeof answer.message === "string" ? answer.message : `HTTP ${status}`;
  return new TidingsError(`${status} ${code}: ${message}`, { status, code });
}

/** An estimate of a response head's size: the status line and the headers a script can see. */
function headBytes(response) {
  let size = 17;
  for (const [name, value] of response.headers) size += name.length + value.length + 4;
  return size + 2;
}

// ---------------------------------------------------------------------------
// Readers: one per technique. `run()` resolves when stopped on purpose and
// rejects with an Outcome otherwise; `markWorking()` once the technique works.

class Reader {
  constructor(client, technique) {
    this.client = client;
    this.options = client.options;
    this.technique = technique;
    this.names = [...client._channels.keys()];
    this.controller = new AbortController();
    this.stopped = false;
    this.working = false;
    this.upgradeTimer = null;
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
  }

  dispose() {
    clearTimeout(this.upgradeTimer);
    this.stop();
  }

  isOpen() {
    return false;
  }

  /** HTTP readers read a fixed set of channels: a change restarts them from the cursors. */
  channelsChanged() {
    this.stop();
  }

  markWorking() {
    if (!this.working && !this.stopped) {
      this.working = true;
      this.client._working(this);
    }
  }

  async run() {
    try {
      await this.read();
    } catch (error) {
      if (this.stopped) return;
      throw error;
    }
  }

  /** A network failure: before it worked, ask whether the server is there at all. */
  async networkFailure(what) {
    if (this.stopped) throw STOPPED;
    const health = this.working ? null : await this.client._reachable();
    if (this.stopped) throw STOPPED;
    if (health && Array.isArray(health.transports) &&
        !health.transports.includes(this.technique)) {
      throw new Outcome("failed", `transport_disabled: the server turned ${this.technique} off`,
                        "transport_disabled");
    }
    if (health && RETRYABLE_REFUSALS.has(health.error)) {
      // The server refuses every request for now (it holds its limit of connections).
      throw new Outcome("retry", `${what}: ${health.error}: ${health.message}`, health.error);
    }
    if (health) throw new Outcome("failed", `${what}, though the server answers`);
    throw new Outcome("retry", what);
  }

  refused(status, answer) {
    const error = refusal(status, answer);
    if (error.code === "presence_disabled") {
      // Joins and leaves were asked of a channel without presence: tell the page, and read
      // on without them (an HTTP read asks for every channel at once: all go without).
      for (const name of this.names) {
        const channel = this.client._channels.get(name);
        if (wantsPresence(channel)) channel.presenceRefused = true;
      }
      this.client._report(error);
      throw STOPPED;
    }
    if (status === 401 && error.code === "token_expired" &&
        typeof this.options.token === "function") {
      this.client._tokenExpired();
      throw new Outcome("retry", error.message); // again with a fresh token, from the cursor
    }
    if (status >= 500 || status === 408 || status === 429) {
      throw new Outcome("retry", error.message, error.code);
    }
    throw new Outcome("failed", error.message, error.code);
  }

  /** GET `url` and read its whole body within `timeout`: {status, body, response}. */
  async getJson(url, headers, timeout) {
    if (this.stopped) throw STOPPED; // stopped while handling the last answer: ask nothing more
    const controller = new AbortController();
    const abort = () => controller.abort();
    this.controller.signal.addEventListener("abort", abort);
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; controller.abort(); }, timeout);
    try {
      this.client.stats.requests += 1;
      const response = await fetch(url, { headers, cache: "no-store", signal: controller.signal });
      const buffer = await response.arrayBuffer();
      this.client.stats.bytesReceived += headBytes(response) + buffer.byteLength;
      let body = null;
      if (buffer.byteLength) {
        try {
          body = JSON.parse(new TextDecoder().decode(buffer));
        } catch {
          body = null;
        }
      }
      return { status: response.status, body, response };
    } catch (error) {
      if (this.stopped) throw STOPPED;
      if (timedOut) {
        throw new Outcome(this.working ? "retry" : "failed", `no answer within ${timeout} ms`);
      }
      return await this.networkFailure(`request failed (${error.message})`);
    } finally {
      clearTimeout(timer);
      this.controller.signal.removeEventListener("abort", abort);
    }
  }

  /** Gaps, then messages, of a poll answer; false if a message did not follow (ask again). */
  handleAnswer(body, response) {
    if (!body || !Array.isArray(body.messages)) throw new Outcome("retry", "not a poll answer");
    if (response) this.client._learnClient(response.headers.get("Tidings-Client"));
    // Joins and leaves go in order with the messages: each after the message it followed.
    const events = Array.isArray(body.presence) ? body.presence : [];
    const places = new Map(body.messages.map((m, i) => [`${m && m.channel} ${m && m.id}`, i + 1]));
    const at = events.map((e) => (e && e.after ? places.get(`${e.channel} ${e.after}`) || 0 : 0));
    let next = 0;
    const tellUpTo = (place) => {
      for (; next < events.length && at[next] <= place; next += 1) {
        this.client._acceptPresence(events[next].type, events[next]);
      }
    };
    if (this.client._serverSide) this.announceSet(body);
    for (const gap of body.gaps || []) this.client._acceptGap(gap);
    for (const [i, message] of body.messages.entries()) {
      tellUpTo(i);
      if (this.client._acceptMessage(message) === "hole") return false;
    }
    tellUpTo(Infinity);
    for (const [name, members] of Object.entries(body.members || {})) {
      this.client._acceptPresence("list", { channel: name, members, more: false });
    }
    this.learnPresenceCursor(body.presence_next);
    this.client._learnCursor(body.next, this.names);
    return true;
  }

  /**
   * A poll of the user's channels: its `next` is the whole set. A channel new to the client
   * starts before its first message in this answer (or at a gap's end, or at `next`).
   */
  announceSet(body) {
    const client = this.client;
    if (typeof body.next !== "string") return;
    const starts = new Map();
    for (const gap of body.gaps || []) {
      if (gap && !starts.has(gap.channel)) starts.set(gap.channel, null);
    }
    for (const message of body.messages) {
      if (!message || starts.has(message.channel)) continue;
      const pos = parseId(message.id);
      starts.set(message.channel, pos.seq > 0n ? `${pos.epoch}-${pos.seq - 1n}` : null);
    }
    const parts = body.next === "" ? [] : body.next.split(",").map((part) => {
      const at = part.indexOf("=");
      const name = part.slice(0, at);
      return starts.has(name) && !client._channels.has(name)
        ? `${name}=${starts.get(name) || "0"}` : part;
    });
    client._serverSet(parts.join(","));
  }

  /** `presence_next` of a poll answer: where each channel's joins and leaves resume. */
  learnPresenceCursor(cursor) {
    if (typeof cursor !== "string" || cursor === "") return;
    const parts = cursor.includes("=") ? cursor.split(",").map((part) => {
      const equal = part.indexOf("=");
      return [part.slice(0, equal), part.slice(equal + 1)];
    }) : this.names.length === 1 ? [[this.names[0], cursor]] : [];
    for (const [name, since] of parts) {
      const channel = this.client._channels.get(name);
      if (channel) channel.presenceSince = since;
    }
  }

  sleep(ms) {
    return new Promise((resolve, reject) => {
      if (this.stopped) return reject(STOPPED);
      const onAbort = () => { clearTimeout(timer); reject(STOPPED); };
      const timer = setTimeout(() => {
        this.controller.signal.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      this.controller.signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

class PollReader extends Reader {
  async read() {
    let etag = null;
    for (;;) {
      const timeout = this.working ? this.options.requestTimeout : this.options.attemptTimeout;
      const headers = etag ? { "If-None-Match": etag } : {};
      const url = this.client._readUrl(this.names, "", true) +
        await this.client._tokenParam(false);
      const { status, body, response } = await this.getJson(url, headers, timeout);
      let more = false;
      if (status === 200) {
        this.markWorking();
        const inOrder = this.handleAnswer(body, response);
        etag = inOrder ? response.headers.get("ETag") : null;
        more = !inOrder || body.more === true;
      } else if (status !== 304) {
        this.refused(status, body);
      }
      this.markWorking(); // a 304
      if (!more) await this.sleep(this.options.pollInterval);
    }
  }
}

class LongPollReader extends Reader {
  async read() {
    for (;;) {
      // The first request answers at once: it shows the technique works.
      const wait = this.working ? this.options.longpollWait : 0;
      const timeout = this.working ? wait + this.options.requestTimeout
                                   : this.options.attemptTimeout;
      const url = this.client._readUrl(this.names, `&wait=${wait / 1000}`, true) +
        await this.client._tokenParam(false);
      const { status, body, response } = await this.getJson(url, {}, timeout);
      if (status !== 200) this.refused(status, body);
      this.markWorking();
      this.handleAnswer(body, response);
    }
  }
}

/**
 * SSE over fetch streaming rather than EventSource: the reader sees the stream's
 * first bytes (the server's `retry:`/`id:` block, sent at once), so a stream
 * that a proxy buffers is told apart from a quiet one within
 * `sseFirstEventTimeout`, and the cursor is sent as `?since=` by the client.
 */
class SseReader extends Reader {
  async read() {
    const controller = new AbortController();
    const abort = () => controller.abort();
    this.controller.signal.addEventListener("abort", abort);
    let why = null; // why this reader aborted its own request
    const cut = (reason) => { why = reason; controller.abort(); };
    let timer = setTimeout(() => cut("timeout"), this.options.attemptTimeout);
    try {
      let response;
      try {
        const url = this.client._readUrl(this.names) + await this.client._tokenParam(false);
        this.client.stats.requests += 1;
        response = await fetch(url, {
          headers: { Accept: "text/event-stream" }, cache: "no-store", signal: controller.signal,
        });
      } catch (error) {
        if (this.stopped) throw STOPPED;
        if (why === "timeout") {
          throw new Outcome("failed", `no answer within ${this.options.attemptTimeout} ms`);
        }
        return await this.networkFailure(`request failed (${error.message})`);
      }
      clearTimeout(timer);
      if (response.status !== 200) {
        const answer = await response.json().catch(() => null);
        this.refused(response.status, answer);
      }
      const type = response.headers.get("Content-Type") || "";
      if (!type.startsWith("text/event-stream") || !response.body) {
        throw new Outcome("failed", `not an event stream (${type || "no content type"})`);
      }
      this.client.stats.bytesReceived += headBytes(response);
      this.client._learnClient(response.headers.get("Tidings-Client"));
      timer = setTimeout(() => cut("buffered"), this.options.sseFirstEventTimeout);
      // Until the first event the "buffered" timer runs; then each chunk restarts the idle one.
      await this.readStream(response.body.getReader(), () => {
        if (!this.working) return;
        clearTimeout(timer);
        timer = setTimeout(() => cut("idle"), this.options.idleTimeout);
      });
    } catch (error) {
      if (this.stopped) throw STOPPED;
      if (why === "buffered") {
        throw new Outcome("failed", "the stream opened but no event came within " +
                          `${this.options.sseFirstEventTimeout} ms: a proxy buffers it`);
      }
      if (why === "idle") {
        throw new Outcome("retry", `no data for ${this.options.idleTimeout} ms`);
      }
      if (error instanceof Outcome) throw error;
      throw new Outcome("retry", `stream broken (${error.message})`);
    } finally {
      clearTimeout(timer);
      this.controller.signal.removeEventListener("abort", abort);
    }
  }

  /** Parse events as the HTML standard says; `alive()` on every chunk. */
  async readStream(reader, alive) {
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "";
    let data = [];
    let sawField = false;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) throw new Outcome("retry", "the server ended the stream");
      this.client.stats.bytesReceived += value.byteLength;
      let text = buffer + decoder.decode(value, { stream: true });
      // A CR at the end may be the first half of a CRLF: keep it for the next chunk.
      const held = text.endsWith("\r") ? "\r" : "";
      if (held) text = text.slice(0, -1);
      const lines = text.split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === "") {
          if (sawField) this.markWorking(); // the opening block or a heartbeat has arrived
          if (data.length) this.dispatch(event || "message", data.join("\n"));
          event = "";
          data = [];
          sawField = false;
          continue;
        }
        sawField = true;
        if (line.startsWith(":")) continue; // a heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id") {
          if (this.client._serverSide && !this.sawId) this.client._serverSet(value);
          this.sawId = true;
          this.client._learnCursor(value, this.names);
        }
      }
      alive();
    }
  }

  dispatch(event, text) {
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      throw new Outcome("retry", "an event that is not JSON");
    }
    if (event === "message") {
      if (this.client._acceptMessage(value) === "hole") {
        throw new Outcome("retry", "a message out of order; resuming from the last id");
      }
    } else if (event === "gap") {
      this.client._acceptGap(value);
    } else if (event === "status") {
      this.client._brokerStatus(value);
    } else if (event === "subscribed") {
      this.client._serverChannel(value && value.channel, value && value.next);
    } else if (event === "unsubscribed") {
      this.client._serverChannelRemoved(value && value.channel);
    } else if (event === "client") {
      this.client._learnClient(value && value.client); // a cross-origin page sees no header
    } else if (event === "presence") {
      this.client._acceptPresence("list", value);
    } else if (event === "join" || event === "leave") {
      this.client._acceptPresence(event, value);
    } else if (event === "close") {
      if (value && value.error === "token_expired") this.client._tokenExpired();
      throw new Outcome("retry", `the server closed the stream (${value && value.error})`);
    }
  }
}

class WebSocketReader extends Reader {
  constructor(client, technique) {
    super(client, technique);
    this.socket = null;
    this.pending = new Map(); // req → {resolve, reject, timer}
    this.nextReq = 1;
    this.pinger = null;
    this.refreshTimer = null;
    this.opened = false; // the socket opened and subscribed to every channel then
    this.unacknowledged = new Set(); // channels subscribed at the opening, not acked yet
    this.abandon = null; // (outcome) => end this reader with outcome, once read() runs
    this.openTimer = null; // the attempt's deadline: open and acknowledged within it
    this.announced = null; // the user's channels the server announced at the opening
  }

  isOpen() {
    return this.working && this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  channelsChanged(added, removed) {
    // Before the opening, it subscribes to every current channel.
    if (!this.opened || this.socket.readyState !== WebSocket.OPEN) return;
    for (const name of removed) this.command({ type: "unsubscribe", channel: name });
    for (const name of added) this.subscribeChannel(name);
  }

  dispose() {
    super.dispose();
    clearInterval(this.pinger);
    clearTimeout(this.refreshTimer);
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new TidingsError("the WebSocket closed before the answer",
                              { code: "connection_failed" }));
    }
    this.pending.clear();
  }

  publish(channel, data, idempotencyKey) {
    const command = { type: "publish", channel, data };
    if (idempotencyKey !== undefined) command.idempotency_key = idempotencyKey;
    return this.command(command).then((ack) => ack.id);
  }

  /**
   * Send a fresh token with an `auth` command before `token` expires at `expires` (Unix
   * seconds), then again from each new one's `exp`. Stops when the token is opaque, the
   * function fails, or the server refuses it or does not answer: the 4001 close follows.
   */
  keepTokenFresh(token, expires) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (expires === null || this.stopped) return;
    const delay = refreshDelay(expires - Date.now() / 1000);
    if (delay === null) return;
    this.refreshTimer = setTimeout(async () => {
      this.refreshTimer = null;
      let fresh;
      try {
        fresh = await this.client._freshToken(token);
      } catch {
        return; // the function failed: the server closes at expiry, and reading resumes
      }
      if (!this.isOpen()) return;
      if (fresh === token) {
        this.keepTokenFresh(token, expires); // a cached token: ask again, nearer to expiry
        return;
      }
      let ack;
      try {
        ack = await this.command({ type: "auth", token: fresh });
      } catch {
        return; // refused or unanswered: the same fallback
      }
      const exp = typeof ack.exp === "number" ? ack.exp : tokenExpiry(fresh);
      if (this.isOpen()) this.keepTokenFresh(fresh, exp);
    }, delay * 1000);
  }

  /**
   * Subscribe to `name` from its cursor. The technique works once every channel of the
   * opening is acknowledged; a refusal that says "not now" ends the reader, to reconnect
   * after a backoff and resume every channel from its cursor.
   */
  subscribeChannel(name) {
    const command = { type: "subscribe", channel: name };
    for (const flag of readFlags(this.options)) command[flag] = true;
    const since = this.client._sinceOf(name);
    if (since !== null) command.since = since;
    const entry = this.client._channels.get(name);
    if (wantsPresence(entry)) command.presence = true;
    this.command(command).then(
      (ack) => {
        this.client._learnClient(ack.client);
        this.client._learn(name, ack.next);
        this.acknowledged(name);
      },
      (error) => {
        if (error.code === "presence_disabled" && this.client._channels.get(name) === entry) {
          // No joins and leaves on this channel: tell the page, and read it without them.
          entry.presenceRefused = true;
          this.client._report(error);
          if (this.isOpen() || this.opened) this.subscribeChannel(name);
        } else if (RETRYABLE_REFUSALS.has(error.code) && this.abandon !== null) {
          this.abandon(new Outcome("retry", `subscribe ${name}: ${error.message}`, error.code));
        } else if (error.code !== "connection_failed") {
          this.client._report(error);
          this.acknowledged(name); // answered: the others may still make it work
        }
      });
  }

  markWorking() {
    clearTimeout(this.openTimer);
    super.markWorking();
  }

  acknowledged(name) {
    this.unacknowledged.delete(name);
    if (this.opened && this.unacknowledged.size === 0) this.markWorking();
  }

  command(fields) {
    return new Promise((resolve, reject) => {
      const req = this.nextReq++;
      const timer = setTimeout(() => {
        this.pending.delete(req);
        reject(new TidingsError(`no answer to ${fields.type} within ` +
                                `${this.options.requestTimeout} ms`, { code: "timeout" }));
        if (fields.type === "ping" && this.socket) {
          this.socket.close(3000, "no answer to ping");
          this.socket.onclose({ code: 3000, reason: "no answer to ping" });
        }
      }, this.options.requestTimeout);
      this.pending.set(req, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...fields, req }));
    });
  }

  async read() {
    const query = await this.client._tokenParam(true);
    const token = this.client._tokenValue;
    if (this.stopped) return undefined;
    return new Promise((resolve, reject) => {
      let opened = false;
      let failure = null;
      this.client.stats.requests += 1;
      const id = this.client.clientId;
      let named = id === null ? query : `?client=${id}${query.replace(/^\?/, "&")}`;
      const resume = this.client._serverSide ? this.client._serverSide.channels
        .filter((n) => this.client._sinceOf(n) !== null)
        .map((n) => `${n}=${this.client._sinceOf(n)}`) : [];
      if (resume.length || (this.client._serverSide && this.client._serverSide.heard)) {
        // The user's channels resume from the URL's cursor; named ones from their subscribe.
        named += `${named ? "&" : "?"}since=${encodeURIComponent(resume.join(","))}`;
      }
      const socket = new WebSocket(`${this.client._wsUrl}/subscribe${named}`);
      this.socket = socket;
      let settled = false;
      const finish = (event) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearInterval(this.pinger);
        clearTimeout(this.refreshTimer);
        if (this.stopped) resolve();
        else if (failure) reject(failure);
        else if (!opened) {
          // A browser hides why a handshake failed: an expired token looks like any refusal.
          this.client._tokenExpired();
          this.networkFailure("the WebSocket did not open").then(resolve, reject);
        } else if (!this.working && event.reason === "timeout") {
          reject(new Outcome("failed", "no answer to subscribe within " +
                             `${this.options.attemptTimeout} ms`));
        } else {
          if (event.code === 4001) this.client._tokenExpired(); // reconnect with a new one
          const reason = event.reason ? `: ${event.reason}` : "";
          reject(new Outcome("retry", `the WebSocket closed with ${event.code}${reason}`));
        }
      };
      // Settle at once rather than trust a close event to follow close() on every browser.
      const giveUp = (event) => { socket.close(1000); finish(event); };
      const timer = setTimeout(() => giveUp({ code: 1006, reason: "timeout" }),
                               this.options.attemptTimeout);
      this.openTimer = timer;
      this.controller.signal.addEventListener("abort", () => giveUp({ code: 1000 }));
      this.abandon = (outcome) => {
        if (failure || settled) return;
        failure = outcome;
        giveUp({ code: 1000 });
      };
      socket.onopen = () => {
        opened = true;
        this.client.stats.bytesReceived += 160; // about the size of the 101 answer
        // The attempt timer runs on until every channel is acknowledged (markWorking).
        this.unacknowledged = new Set([...this.client._channels.keys()].filter(
          (name) => !this.client._serverSide ||
            !this.client._serverSide.channels.includes(name) ||
            this.client._channels.get(name).subs.size > 1));
        this.opened = true;
        if (this.client._serverSide) {
          // The server announced the user's channels before it reads a command: what it did
          // not announce when the ping's answer comes was removed while the client was away.
          this.announced = new Set();
          this.unacknowledged.add(SERVER_SET);
          this.command({ type: "ping" }).then(() => {
            const server = this.client._serverSide;
            if (server) {
              server.heard = true;
              for (const name of [...server.channels]) {
                if (!this.announced.has(name)) this.client._serverChannelRemoved(name);
              }
            }
            this.announced = null;
            this.acknowledged(SERVER_SET);
          }, () => {});
        }
        for (const name of this.unacknowledged) {
          if (name !== SERVER_SET) this.subscribeChannel(name);
        }
        if (this.unacknowledged.size === 0) this.markWorking();
        this.pinger = setInterval(() => this.command({ type: "ping" }).catch(() => {}),
                                  this.options.pingInterval);
        if (token !== null && typeof this.options.token === "function") {
          this.keepTokenFresh(token, tokenExpiry(token));
        }
      };
      socket.onmessage = (event) => {
        if (failure) return;
        const text = typeof event.data === "string" ? event.data : "";
        this.client.stats.bytesReceived += text.length + (text.length < 126 ? 2 : 4);
        try {
          this.frame(JSON.parse(text));
        } catch (error) {
          failure = error instanceof Outcome ? error : new Outcome("retry", String(error));
          giveUp({ code: 1000 });
        }
      };
      socket.onclose = finish;
    });
  }

  frame(frame) {
    switch (frame && frame.type) {
      case "message":
        if (this.client._acceptMessage(frame) === "hole") {
          throw new Outcome("retry", "a message out of order; resuming from the last id");
        }
        break;
      case "gap":
        this.client._acceptGap(frame);
        break;
      case "subscribed":
        this.client._learnClient(frame.client);
        if (this.announced) this.announced.add(frame.channel);
        if (this.client._serverSide) this.client._serverChannel(frame.channel, frame.next);
        else this.client._learn(frame.channel, frame.next);
        break;
      case "unsubscribed":
        this.client._serverChannelRemoved(frame.channel);
        break;
      case "presence":
        this.client._acceptPresence("list", frame);
        break;
      case "join":
      case "leave":
        this.client._acceptPresence(frame.type, frame);
        break;
      case "status":
        this.client._brokerStatus(frame);
        break;
      case "ack":
      case "error": {
        const pending = this.pending.get(frame.req);
        if (!pending) break;
        this.pending.delete(frame.req);
        clearTimeout(pending.timer);
        if (frame.type === "ack") pending.resolve(frame);
        else pending.reject(new TidingsError(`${frame.error}: ${frame.message}`,
                                             { code: frame.error }));
        break;
      }
      default:
        break;
    }
  }
}

const SERVER_SET = Symbol("the user's channels"); // acknowledged by the opening's ping

const READERS = {
  websocket: WebSocketReader,
  sse: SseReader,
  longpoll: LongPollReader,
  poll: PollReader,
};

export { STATES };

// ---------------------------------------------------------------------------
// Runtimes other than a browser (the npm package under Node, docs/browser-client.md).

/**
 * The techniques of `order` this runtime can use. Node 20 has `fetch` and streams but a
 * WebSocket only with `--experimental-websocket` (Node 22 has it by default): without one,
 * the WebSocket is left out rather than retried for ever; if nothing is left, say why.
 */
function techniquesAvailable(order) {
  if (typeof globalThis.WebSocket === "function") return order;
  const usable = order.filter((technique) => technique !== "websocket");
  if (!usable.length) {
    throw new TidingsError("this runtime has no WebSocket (Node 20 needs " +
                           "--experimental-websocket): allow sse, longpoll or poll too");
  }
  return usable;
}

// ---------------------------------------------------------------------------
// One connection for all tabs (docs/browser-client.md, "One connection for all tabs").
//
// A `Hub` holds the one real `Client` of a (server, options) pair and serves the clients of
// every tab of the origin that use the same pair: in a SharedWorker where there is one, else
// in a leader tab elected with a Web Lock, talking to the others over a BroadcastChannel.
// Each tab's `SharedClient` keeps its own position per channel (the same resume rules as a
// `Client`): it drops what it already has, and announces its positions whenever a new hub
// starts, which reads each channel from the oldest position any tab announced. So a leader
// tab closing mid-stream costs no tab a message, and no tab sees one twice.

const SHARE_MODES = ["auto", "worker", "leader", "off"];
const TAB_LOCK = "tidings-tab:"; // held by each SharedClient while it lives
const LEADER_LOCK = "tidings-leader:"; // held by the tab whose SharedClient runs the hub

/** A shared client for these options, or null when this client must have its own connection. */
function sharedClient(url, options) {
  const mode = options.shareTabs === undefined ? DEFAULTS.shareTabs : options.shareTabs;
  if (mode === false || mode === "off") return null;
  if (mode !== true && !SHARE_MODES.includes(mode)) {
    throw new TidingsError(`shareTabs must be one of ${SHARE_MODES.join(", ")}, true or false`);
  }
  const scope = globalThis;
  const page = typeof scope.document === "object" && scope.location;
  // A function token cannot cross to another context; without locks no tab can watch another.
  if (!page || typeof options.token === "function" || !scope.navigator || !scope.navigator.locks
      || typeof scope.BroadcastChannel !== "function") return null;
  const worker = (mode === "auto" || mode === true || mode === "worker")
    && typeof scope.SharedWorker === "function";
  if (mode === "worker" && !worker) return null;
  return new SharedClient(url, options, worker ? "worker" : "leader");
}

function randomId() {
  return globalThis.crypto && globalThis.crypto.randomUUID ? globalThis.crypto.randomUUID()
    : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function errorFields(error) {
  return { message: String(error && error.message || error),
           status: error && error.status !== undefined ? error.status : null,
           code: error && error.code || "client_error" };
}

function errorOf(fields) {
  return new TidingsError(fields.message, { status: fields.status, code: fields.code });
}

/** Is `since` (a tab's position) before where the hub's client reads `channel` now? */
function before(since, channel) {
  if (since === null || since === undefined) return false;
  if (since === "0") return !(channel.fromOrigin && channel.pos === null);
  if (channel.pos === null) return !channel.fromOrigin;
  const pos = parseId(since);
  return pos.epoch === channel.pos.epoch && pos.seq < channel.pos.seq;
}

/**
 * The one real connection of a (server, options) pair, for every tab that uses it. `send`
 * delivers a packet to every tab (or to `packet.to` only); `handle` takes the tabs' packets.
 */
class Hub {
  constructor(url, options, send, onEmpty) {
    this.client = new Client(url, { ...options, shareTabs: false });
    this.send = send;
    this.onEmpty = onEmpty;
    this.tabs = new Map(); // tab id → Set of channel names
    this.channels = new Map(); // name → {tabs: Set, subscription}
    this.serverTabs = new Set(); // the tabs reading the user's channels
    this.serverSide = null; // the hub client's ServerSideSubscription, while any tab reads
    const client = this.client;
    const stats = () => ({ ...client.stats });
    // The tabs' `stats` follow the connection's: each change is sent (once per task).
    let statsQueued = false;
    client.stats = new Proxy(client.stats, {
      set: (target, name, value) => {
        target[name] = value;
        if (!statsQueued) {
          statsQueued = true;
          queueMicrotask(() => { statsQueued = false; this.send({ t: "stats", stats: stats() }); });
        }
        return true;
      },
    });
    client.on("state", (state, detail) => send({ t: "state", state, detail, stats: stats() }));
    client.on("broker", (status) => send({ t: "broker", status }));
    client.on("error", (error) => send({ t: "error", error: errorFields(error) }));
    client._onLearn = (channel, id) => send({ t: "pos", channel, id });
    client._onClient = (id) => send({ t: "client", id });
    this.deliver = (m) => send({ t: "msg", m, stats: stats() });
    this.gap = (g) => send({ t: "gap", g });
    // Joins, leaves and member lists, already applied to the hub's members: each tab that
    // asked for them applies them to its own (the same set operations, so nothing twice).
    this.watch = {
      presence: true,
      onJoin: (member) => send({ t: "pres", kind: "join", v: member }),
      onLeave: (member) => send({ t: "pres", kind: "leave", v: member }),
      onPresence: (list) => send({ t: "pres", kind: "list", v: list }),
    };
  }

  handle(packet) {
    const { tab } = packet;
    if (packet.t === "hello") {
      // A new hub (its leader tab closed) goes on with the id the tabs had.
      if (typeof packet.clientId === "string") this.client._learnClient(packet.clientId);
      if (!this.tabs.has(tab)) {
        this.tabs.set(tab, new Set());
        // The tab holds this lock while it lives: getting it means the tab is gone.
        navigator.locks.request(TAB_LOCK + tab, () => this.drop(tab));
      }
      const client = this.client;
      this.send({ t: "state", to: tab, state: client.state, stats: { ...client.stats },
                  detail: { transport: client.transport, previous: null, reason: null } });
      if (client.clientId !== null) this.send({ t: "client", to: tab, id: client.clientId });
    } else if (packet.t === "sub" && this.tabs.has(tab)) {
      for (const [name, since, presence] of packet.channels) {
        this.add(tab, name, since, presence);
      }
    } else if (packet.t === "who") {
      const reply = { t: "who", to: tab, req: packet.req };
      this.client.presence(packet.channel, packet.options).then(
        (answer) => this.send({ ...reply, answer }),
        (error) => this.send({ ...reply, error: errorFields(error) }));
    } else if (packet.t === "unsub" && this.tabs.has(tab)) {
      for (const name of packet.channels) this.remove(tab, name);
    } else if (packet.t === "pub") {
      const reply = { t: "pub", to: tab, req: packet.req };
      this.client.publish(packet.channel, packet.data, packet.options).then(
        (id) => this.send({ ...reply, id }),
        (error) => this.send({ ...reply, error: errorFields(error) }));
    } else if (packet.t === "rpc") {
      const reply = { t: "rpc", to: tab, req: packet.req };
      this.client.rpc(packet.method, packet.data).then(
        (result) => this.send({ ...reply, result }),
        (error) => this.send({ ...reply, error: errorFields(error) }));
    } else if (packet.t === "ssub" && this.tabs.has(tab)) {
      this.readServerSide(tab, packet.since);
    } else if (packet.t === "sunsubs") {
      this.stopServerSide(tab);
    } else if (packet.t === "bye") {
      this.drop(tab);
    }
  }

  /**
   * `tab` reads the user's channels: the hub's client does, from the first tab's cursor, and
   * again from an earlier one when a tab that joins is behind on a channel (a new hub after
   * its leader closed, a tab given `since`). The tabs drop what they had already.
   */
  readServerSide(tab, since) {
    this.serverTabs.add(tab);
    if (this.serverSide !== null) {
      const earlier = this.serverCursorBack(since);
      if (earlier === null) {
        for (const name of this.serverSide.channels) { // what the others read already
          const pos = this.client._channels.get(name).pos;
          this.send({ t: "ssubd", to: tab, channel: name, next: pos === null ? null : pos.id });
        }
        return;
      }
      this.serverSide.unsubscribe();
      this.serverSide = null;
      since = earlier;
    }
    try {
      this.serverSide = this.client.subscribeServerSide({
        since: since || undefined, onMessage: this.deliver, onGap: this.gap,
        onSubscribed: (event) => this.send({ t: "ssubd", ...event }),
        onUnsubscribed: (event) => this.send({ t: "sunsub", ...event }),
      });
    } catch (error) {
      this.serverTabs.delete(tab);
      this.send({ t: "error", to: tab, error: errorFields(error) });
    }
  }

  /**
   * The hub's cursor on the user's channels moved back to a tab's `since` ("a=ID,b=ID") where
   * that tab is behind, or null if it is behind on none.
   */
  serverCursorBack(since) {
    let starts;
    try {
      starts = serverSideStarts(since);
    } catch {
      return null; // a tab checks its own `since`; nothing to go back to
    }
    const cursor = new Map();
    for (const name of this.serverSide.channels) {
      const at = this.client._sinceOf(name);
      if (at !== null) cursor.set(name, at);
    }
    let behind = false;
    for (const [name, start] of starts) {
      const at = start.fromOrigin ? "0" : start.pos && start.pos.id;
      const entry = this.client._channels.get(name);
      if (at && (!entry || before(at, entry))) {
        cursor.set(name, at);
        behind = true;
      }
    }
    return behind ? [...cursor].map(([name, at]) => `${name}=${at}`).join(",") : null;
  }

  stopServerSide(tab) {
    this.serverTabs.delete(tab);
    if (this.serverTabs.size === 0 && this.serverSide !== null) {
      this.serverSide.unsubscribe();
      this.serverSide = null;
    }
  }

  add(tab, name, since, presence) {
    this.tabs.get(tab).add(name);
    let channel = this.channels.get(name);
    const read = () => this.client.subscribe(name, { since: since === null ? undefined : since,
                                                     onMessage: this.deliver, onGap: this.gap });
    const watch = () => this.client.subscribe(name, this.watch);
    if (!channel) {
      channel = { tabs: new Set(), subscription: read(), watchers: new Set(), watching: null };
      this.channels.set(name, channel);
    } else if (before(since, this.client._channels.get(name))) {
      // This tab is behind the others: read again from its position (the others drop
      // what they have). The client resumes, or reconnects, from there.
      if (channel.watching) channel.watching.unsubscribe();
      channel.subscription.unsubscribe();
      channel.subscription = read();
      if (channel.watching) channel.watching = watch();
    }
    channel.tabs.add(tab);
    if (presence) {
      channel.watchers.add(tab);
      const entry = this.client._channels.get(name);
      if (!channel.watching) channel.watching = watch();
      else if (entry.members !== null) {
        this.send({ t: "pres", to: tab, kind: "list", v: snapshotOf(name, entry) });
      }
    }
    const pos = this.client._channels.get(name).pos;
    if (pos !== null) this.send({ t: "pos", to: tab, channel: name, id: pos.id });
  }

  remove(tab, name) {
    const names = this.tabs.get(tab);
    if (names) names.delete(name);
    const channel = this.channels.get(name);
    if (!channel) return;
    channel.tabs.delete(tab);
    channel.watchers.delete(tab);
    if (channel.watching && (channel.watchers.size === 0 || channel.tabs.size === 0)) {
      channel.watching.unsubscribe();
      channel.watching = null;
    }
    if (channel.tabs.size === 0) {
      channel.subscription.unsubscribe();
      this.channels.delete(name);
    }
  }

  drop(tab) {
    const names = this.tabs.get(tab);
    if (!names) return;
    for (const name of [...names]) this.remove(tab, name);
    this.stopServerSide(tab);
    this.tabs.delete(tab);
    if (this.onDrop) this.onDrop(tab);
    if (this.tabs.size === 0 && this.onEmpty) this.onEmpty();
  }

  /** Close the connection without telling the tabs (a new hub, if any, takes over). */
  close() {
    this.send = () => {};
    this.client.close();
  }
}

/** `on(event, fn)` of both clients: add `fn` to the event's listeners; returns a remover. */
function listen(listeners, event, fn) {
  const set = listeners[event];
  if (!set) {
    throw new TidingsError(`no event ${JSON.stringify(event)}; use state, broker or error`);
  }
  set.add(fn);
  return () => set.delete(fn);
}

/**
 * What `subscribe` does in both clients before reading: check the names and `since`, make
 * the subscription, add it to each channel (a channel already read keeps its position).
 * Returns it, and the channels that are new to `client`.
 */
function register(client, channels, options = {}) {
  if (client._closed) throw new TidingsError("the client is closed");
  const names = (Array.isArray(channels) ? channels : [channels]).map(checkChannel);
  if (!names.length || new Set(names).size !== names.length) {
    throw new TidingsError("name each channel once, and at least one");
  }
  const starts = parseSince(options.since, names);
  const subscription = new Subscription(client, names, options);
  const added = [];
  const watched = []; // channels read already, and without joins and leaves until now
  for (const name of names) {
    let channel = client._channels.get(name);
    if (!channel) {
      channel = { ...starts.get(name), subs: new Set(), ...NO_MEMBERS };
      client._channels.set(name, channel);
      added.push(name);
    } else if (subscription.watchesPresence && !wantsPresence(channel)) {
      Object.assign(channel, NO_MEMBERS); // what was known then may be stale: a list comes
      watched.push(name);
    }
    channel.subs.add(subscription);
  }
  return { subscription, added, watched };
}

// ---------------------------------------------------------------------------
// Presence in both clients (docs/protocol.md, "Joins and leaves"): each channel read with
// joins and leaves keeps its members, keyed by client id, so that what the server sends is
// applied as set operations: a join of a member already there, or a leave of one that is
// not, is dropped (a member list and the first batch may overlap); a member list after a
// reconnect or a technique switch (or a storm, or a poller that missed too much) is told as
// the joins and leaves it differs by, then as the list, never as a silent difference.

/** The presence fields of a channel entry: no member list yet. */
const NO_MEMBERS = Object.freeze({
  members: null, // Map client → member, once a list came
  complete: false, // the list held every member (the server said no "more")
  count: 0, // members, as the server counts them (with "more", beyond the list)
  presenceSince: null, // the poll cursor of the joins and leaves (presence_next)
  presenceRefused: false, // the server said presence_disabled: read without joins and leaves
});

/** Does any subscription of this channel entry want joins and leaves? */
function wantsPresence(channel) {
  if (!channel || channel.presenceRefused) return false;
  for (const subscription of channel.subs) if (subscription.watchesPresence) return true;
  return false;
}

function checkClientId(id) {
  if (id === null || id === undefined) return null;
  if (typeof id !== "string" || !CLIENT_ID_RE.test(id)) {
    throw new TidingsError("clientId must be 1 to 64 of A-Z a-z 0-9 _ -");
  }
  return id;
}

/** 16 random characters of base64url, as the server draws them. */
function newClientId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

function memberOf(channel, value) {
  return { channel, client: value.client, user: value.user === undefined ? null : value.user,
           info: value.info === undefined ? null : value.info,
           technique: value.technique, since: value.since };
}

function distinctUsers(members) {
  return new Set([...members.values()].map((m) => m.user).filter((u) => u !== null)).size;
}

/** The members of `channel` (an entry) as an answer object. */
function snapshotOf(name, channel) {
  const members = [...channel.members.values()];
  return { channel: name, count: Math.max(channel.count, members.length),
           users: distinctUsers(channel.members), members, more: !channel.complete };
}

/**
 * Apply a member list (`kind` "list": `{channel, count, users, members, more}`), a "join" or
 * a "leave" (a member object with its `channel`) to `client`'s channel, and tell its
 * subscriptions what changed (`onJoin`, `onLeave`, then `onPresence` for a list).
 */
function acceptPresence(client, kind, value) {
  if (!value || typeof value !== "object" || typeof value.channel !== "string") return;
  const name = value.channel;
  const channel = client._channels.get(name);
  if (!channel || !wantsPresence(channel)) return;
  const tell = (event, detail) => {
    for (const subscription of [...channel.subs]) subscription._presenceEvent(event, detail);
  };
  if (kind === "list") {
    if (!Array.isArray(value.members)) return;
    const next = new Map();
    for (const member of value.members) {
      if (member && typeof member.client === "string") {
        next.set(member.client, memberOf(name, member));
      }
    }
    const previous = channel.members;
    channel.members = next;
    channel.complete = value.more !== true;
    channel.count = typeof value.count === "number" ? value.count : next.size;
    if (previous !== null) {
      for (const [id, member] of previous) {
        if (!next.has(id) && channel.complete) tell("leave", member);
      }
      for (const [id, member] of next) if (!previous.has(id)) tell("join", member);
    }
    tell("presence", { channel: name, count: channel.count,
                       users: typeof value.users === "number" ? value.users
                         : distinctUsers(next),
                       members: [...next.values()], more: !channel.complete });
    return;
  }
  if (typeof value.client !== "string") return;
  if (channel.members === null) channel.members = new Map();
  const known = channel.members.has(value.client);
  if (kind === "join") {
    if (known) return;
    const member = memberOf(name, value);
    channel.members.set(value.client, member);
    channel.count += 1;
    tell("join", member);
  } else if (kind === "leave") {
    if (!known && channel.complete) return;
    const member = known ? channel.members.get(value.client) : memberOf(name, value);
    channel.members.delete(value.client);
    channel.count = Math.max(0, channel.count - 1);
    tell("leave", member);
  }
}

/**
 * `subscribeServerSide` of both clients: checked, the channels of `options.since` taken
 * into the client's positions (a named channel keeps its own), the subscription kept.
 */
function registerServerSide(client, options) {
  if (client._closed) throw new TidingsError("the client is closed");
  if (client._serverSide) throw new TidingsError("this client reads its user's channels already");
  checkMix(client, true);
  const starts = serverSideStarts(options.since);
  const subscription = new ServerSideSubscription(client, options);
  subscription.heard = starts.size > 0;
  client._serverSide = subscription;
  for (const [name, start] of starts) {
    if (client._channels.has(name)) continue; // a named channel keeps its position
    client._channels.set(name, { ...start, subs: new Set([subscription]), ...NO_MEMBERS });
    subscription.channels.push(name);
  }
  return subscription;
}

/** `fields` with an `rpc`'s checked `method` and a copy of its `data` (a JSON value). */
function rpcRequest(fields, method, data) {
  if (typeof method !== "string" || method.length < 1 || method.length > 128) {
    throw new TidingsError("method must be a string of 1 to 128 characters");
  }
  const request = { ...fields, method };
  if (data !== undefined) {
    const body = JSON.stringify(data);
    if (body === undefined) throw new TidingsError("data must be a JSON value");
    request.data = JSON.parse(body);
  }
  return request;
}

/** Who is on `channel`, over HTTP (`presence()` without an open WebSocket). */
async function readPresence(url, channel, countOnly, how) {
  const [status, answer] = await getJson(
    `${url}/channels/${encodeURIComponent(channel)}/presence${countOnly ? "?count" : ""}`,
    `ask who is on ${channel}`, how);
  if (status !== 200 || !answer || typeof answer.count !== "number") {
    throw refusal(status, answer);
  }
  return answer;
}

/**
 * `GET target` with the token, under the request timeout, counted in `stats`: the status
 * and the JSON answer (null if it is not JSON). A request that fails rejects with a
 * `connection_failed` TidingsError ("cannot `doing`").
 */
async function getJson(target, doing, { token, requestTimeout, stats }) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), requestTimeout);
  try {
    const bearer = await token();
    const headers = bearer !== null ? { Authorization: `Bearer ${bearer}` } : {};
    stats.requests += 1;
    const response = await fetch(target, { headers, cache: "no-store", signal: controller.signal });
    return [response.status, await response.json().catch(() => null)];
  } catch (error) {
    throw new TidingsError(`cannot ${doing}: ${error.message}`, { code: "connection_failed" });
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A page of `channel`'s history, newest first, over HTTP (`Client.history` and the shared
 * client's, which need no connection for it). `how`: the token (a function), the request
 * timeout, and the stats to count the request in.
 */
async function readHistory(url, channel, { before, since, limit } = {}, how) {
  const query = new URLSearchParams({ order: "desc" });
  if (before !== undefined && before !== null) query.set("before", String(before));
  if (since !== undefined && since !== null) query.set("since", String(since));
  if (limit !== undefined && limit !== null) {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new TidingsError("limit must be an integer of at least 1");
    }
    query.set("limit", String(limit));
  }
  const [status, answer] = await getJson(
    `${url}/channels/${encodeURIComponent(channel)}?${query}`,
    `read the history of ${channel}`, how);
  if (status !== 200 || !answer || !Array.isArray(answer.messages)
      || typeof answer.next !== "string") {
    throw refusal(status, answer);
  }
  return {
    messages: answer.messages, next: answer.next,
    before: typeof answer.before === "string" ? answer.before : null,
    gaps: Array.isArray(answer.gaps) ? answer.gaps : [],
  };
}

/**
 * A tab's client when the connection is shared: the API of `Client`, with its channels read
 * by a hub. It keeps its own position per channel, drops what it already has, and tells
 * every new hub where it stands.
 */
class SharedClient {
  constructor(url, options, mode) {
    const base = new URL(url, globalThis.location.href);
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TidingsError(`the server URL must be http(s), not ${base.protocol}`);
    }
    this.url = base.origin + base.pathname.replace(/\/+$/, "");
    this.options = {
      ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
    };
    const order = [...this.options.transports];
    if (!order.length || order.some((t) => !TECHNIQUES.includes(t)) ||
        new Set(order).size !== order.length) {
      throw new TidingsError(`transports must be distinct names from ${TECHNIQUES.join(", ")}`);
    }
    this.options.transports = order;
    /** The shared connection's client id in presence (the same for every tab sharing it). */
    this.clientId = checkClientId(this.options.clientId);
    /** "worker" (a SharedWorker holds the connection) or "leader" (a leader tab does). */
    this.sharing = mode;
    this.state = "connecting";
    this.transport = null;
    this.stats = { requests: 0, bytesReceived: 0, messages: 0 };
    this._id = randomId();
    const { shareTabs, ...shared } = this.options;
    this._hubOptions = shared;
    this._key = JSON.stringify([this.url, shared]);
    this._channels = new Map(); // name → {pos, fromOrigin, subs: Set<Subscription>}
    this._listeners = { state: new Set(), broker: new Set(), error: new Set() };
    this._pending = new Map(); // req → {resolve, reject, timer}
    this._nextReq = 1;
    this._closed = false;
    this._serverSide = null; // as Client's: the user's channels, read through the hub
    this._queue = []; // publishes asked for before a hub was heard from
    this._hubHeard = false; // a leader tab may not be elected yet: what is sent would be lost
    this._releaseTab = null;
    this._abdicate = null;
    this._hub = null;
    this._link = null;
    navigator.locks.request(TAB_LOCK + this._id, () => {
      if (this._closed) return undefined;
      this._connectLink();
      return new Promise((resolve) => { this._releaseTab = resolve; });
    });
  }

  on(event, fn) {
    return listen(this._listeners, event, fn);
  }

  subscribe(channels, options = {}) {
    const { subscription, added, watched } = register(this, channels, options);
    const changed = [...added, ...watched];
    if (changed.length) this._post({ t: "sub", channels: changed.map((n) => this._subOf(n)) });
    return subscription;
  }

  /** As `Client.subscribeServerSide`: the shared connection reads the user's channels. */
  subscribeServerSide(options = {}) {
    const subscription = registerServerSide(this, options);
    this._post({ t: "ssub", since: this._serverCursor() });
    return subscription;
  }

  /** As `Client.rpc`: sent over the shared connection's WebSocket. */
  async rpc(method, data) {
    const packet = rpcRequest({ t: "rpc" }, method, data);
    if (this._closed) throw new TidingsError("the client is closed");
    return this._ask(packet);
  }

  /** As `Client.presence`: asked by the shared connection (over its WebSocket, if open). */
  async presence(channel, { count = false } = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    return this._ask({ t: "who", channel, options: { count } });
  }

  /** As `Client.history`: a plain HTTP read, from this tab (it needs no shared connection). */
  async history(channel, page = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    const token = typeof this.options.token === "string" ? this.options.token : null;
    return readHistory(this.url, channel, page, {
      token: async () => token, requestTimeout: this.options.requestTimeout, stats: this.stats,
    });
  }

  async publish(channel, data, { idempotencyKey } = {}) {
    checkChannel(channel);
    if (this._closed) throw new TidingsError("the client is closed");
    const body = JSON.stringify(data);
    if (body === undefined) throw new TidingsError("data must be a JSON value");
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(idempotencyKey)) {
      throw new TidingsError("idempotencyKey must be 1 to 128 of A-Z a-z 0-9 - _ . : ~ + / =");
    }
    const options = idempotencyKey === undefined ? {} : { idempotencyKey };
    return this._ask({ t: "pub", channel, data: JSON.parse(body), options });
  }

  /** Send `packet` (a "pub", "who" or "rpc") to the hub; resolves with its answer. */
  _ask(packet) {
    const req = this._nextReq++;
    return new Promise((resolve, reject) => {
      // The hub answers within requestTimeout; this bound is for a hub that went away.
      const timer = setTimeout(() => this._settle(req, null, {
        message: "no answer from the shared connection", status: null, code: "timeout" }),
      this.options.requestTimeout + this.options.attemptTimeout);
      this._pending.set(req, { resolve, reject, timer });
      this._post({ ...packet, req });
    });
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._emitState("closed", { transport: null, previous: this.transport,
                                reason: "closed by the page" });
    this.transport = null;
    this._send({ t: "bye" });
    for (const channel of this._channels.values()) {
      for (const subscription of channel.subs) subscription.closed = true;
    }
    this._channels.clear();
    for (const req of [...this._pending.keys()]) {
      this._settle(req, null, { message: "the client is closed", status: null,
                                code: "connection_failed" });
    }
    if (this._hub) this._hub.close();
    if (this._abdicate) this._abdicate();
    if (this._releaseTab) this._releaseTab();
    if (this._link) this._link.close();
  }

  // the link to the hub --------------------------------------------------------

  _connectLink() {
    if (this.sharing === "worker") {
      let worker;
      try {
        worker = new SharedWorker(new URL("./tidings.js", import.meta.url),
                                  { type: "module", name: "tidings" });
      } catch {
        this.sharing = "leader";
        this._connectLink();
        return;
      }
      const port = worker.port;
      worker.onerror = () => { // the worker script did not load: a leader tab instead
        port.close();
        if (this._closed || this.sharing !== "worker") return;
        this.sharing = "leader";
        this._hubHeard = false;
        this._connectLink();
      };
      port.onmessage = ({ data }) => this._receive(data);
      port.start();
      this._hubHeard = true; // the worker makes its hub on the first packet
      this._link = { send: (packet) => port.postMessage({ key: this._key, url: this.url,
                                                          options: this._hubOptions, packet }),
                     close: () => port.close() };
    } else {
      const channel = new BroadcastChannel(LEADER_LOCK + this._key);
      channel.onmessage = ({ data }) => { if (data.down) this._receive(data.down); };
      this._link = { send: (packet) => channel.postMessage({ up: packet }),
                     close: () => channel.close() };
      navigator.locks.request(LEADER_LOCK + this._key, () => this._lead());
    }
    this._announce();
  }

  /** Run the hub while this tab holds the leader lock, until this client closes. */
  _lead() {
    if (this._closed) return undefined;
    const channel = new BroadcastChannel(LEADER_LOCK + this._key);
    const hub = new Hub(this.url, this._hubOptions,
                        (packet) => channel.postMessage({ down: packet }), null);
    channel.onmessage = ({ data }) => { if (data.up) hub.handle(data.up); };
    this._hub = hub;
    channel.postMessage({ down: { t: "hub" } }); // every tab, this one too: announce yourselves
    return new Promise((resolve) => {
      this._abdicate = () => { channel.close(); resolve(); };
    });
  }

  /** Tell the hub this tab is here, and where it stands on every channel it reads. */
  _announce() {
    this._send({ t: "hello", clientId: this.clientId });
    if (this._channels.size) {
      const channels = [...this._channels.keys()].filter((n) => this._named(n))
        .map((n) => this._subOf(n));
      if (channels.length) this._send({ t: "sub", channels });
    }
    if (this._serverSide) this._send({ t: "ssub", since: this._serverCursor() });
    // Subscribing only recorded channels (announced just now); publishing waited for a hub.
    if (this._hubHeard) for (const packet of this._queue.splice(0)) this._send(packet);
  }

  /** A channel as a "sub" packet names it: [name, since, whether this tab wants presence]. */
  _subOf(name) {
    return [name, this._sinceOf(name), wantsPresence(this._channels.get(name))];
  }

  /** Does a `subscribe()` of this tab read `name` (not only its user's channels)? */
  _named(name) {
    return [...this._channels.get(name).subs].some((s) => s !== this._serverSide);
  }

  /** Where this tab stands on its user's channels: "a=ID,b=ID", or null. */
  _serverCursor() {
    const parts = this._serverSide.channels.filter((n) => this._sinceOf(n) !== null)
      .map((n) => `${n}=${this._sinceOf(n)}`);
    return parts.length ? parts.join(",") : null;
  }

  _serverChannel(name, next) {
    Client.prototype._serverChannel.call(this, name, next);
  }

  _serverChannelRemoved(name) {
    Client.prototype._serverChannelRemoved.call(this, name);
  }

  _dropServerChannel(name) {
    Client.prototype._dropServerChannel.call(this, name);
  }

  _post(packet) {
    const asked = packet.t === "pub" || packet.t === "who" || packet.t === "rpc";
    if (this._link && (this._hubHeard || !asked)) this._send(packet);
    else if (asked) this._queue.push(packet);
  }

  _send(packet) {
    if (!this._link) return;
    const asked = packet.t === "pub" || packet.t === "who" || packet.t === "rpc";
    const pending = asked ? this._pending.get(packet.req) : undefined;
    if (pending) pending.sent = true;
    this._link.send({ ...packet, tab: this._id });
  }

  _receive(packet) {
    if (this._closed || (packet.to !== undefined && packet.to !== this._id)) return;
    if (!this._hubHeard && packet.t !== "hub") {
      this._hubHeard = true;
      for (const queued of this._queue.splice(0)) this._send(queued);
    }
    switch (packet.t) {
      case "hub": // a new leader: it knows nothing yet; what was asked of the old one is lost
        for (const [req, pending] of [...this._pending]) {
          if (!pending.sent) continue;
          this._settle(req, null, { message: "the tab holding the connection went away; " +
                                    "publish with an idempotencyKey to retry safely",
                                    status: null, code: "connection_failed" });
        }
        this._hubHeard = true;
        this._announce();
        break;
      case "state":
        this.stats = packet.stats;
        this._emitState(packet.state, packet.detail);
        break;
      case "msg":
        this.stats = packet.stats;
        this._acceptMessage(packet.m);
        break;
      case "gap":
        this._acceptGap(packet.g);
        break;
      case "stats":
        this.stats = packet.stats;
        break;
      case "pos":
        this._learn(packet.channel, packet.id);
        break;
      case "broker":
        for (const fn of [...this._listeners.broker]) guard(() => fn(packet.status), this);
        break;
      case "error":
        this._report(errorOf(packet.error));
        break;
      case "pub":
        this._settle(packet.req, packet.id, packet.error);
        break;
      case "who":
        this._settle(packet.req, packet.answer, packet.error);
        break;
      case "rpc":
        this._settle(packet.req, packet.result, packet.error);
        break;
      case "ssubd":
        this._serverChannel(packet.channel, packet.next);
        break;
      case "sunsub":
        this._serverChannelRemoved(packet.channel);
        break;
      case "client":
        this.clientId = packet.id;
        break;
      case "pres":
        acceptPresence(this, packet.kind, packet.v);
        break;
      default:
        break;
    }
  }

  _settle(req, value, error) {
    const pending = this._pending.get(req);
    if (!pending) return;
    this._pending.delete(req);
    clearTimeout(pending.timer);
    if (error) pending.reject(errorOf(error));
    else pending.resolve(value);
  }

  _emitState(state, detail) {
    if (state === this.state && detail.transport === this.transport) return;
    this.state = state;
    this.transport = detail.transport;
    for (const fn of [...this._listeners.state]) guard(() => fn(state, { ...detail }), this);
  }

  // positions: the same rules as Client's ------------------------------------------

  _sinceOf(name) {
    const channel = this._channels.get(name);
    if (!channel) return null;
    if (channel.pos) return channel.pos.id;
    return channel.fromOrigin ? "0" : null;
  }

  /** The hub's start on a channel this tab reads "from now" and has no position for yet. */
  _learn(name, id) {
    const channel = this._channels.get(name);
    if (channel && channel.pos === null && !channel.fromOrigin) channel.pos = parseId(id);
  }

  _acceptMessage(message) {
    const channel = this._channels.get(message.channel);
    if (!channel) return;
    const pos = parseId(message.id);
    const last = channel.pos;
    if (last !== null && last.epoch === pos.epoch && pos.seq <= last.seq) return; // had it
    channel.pos = pos;
    channel.fromOrigin = false;
    for (const subscription of [...channel.subs]) subscription._message(message);
  }

  _acceptGap(gap) {
    const channel = this._channels.get(gap.channel);
    if (!channel) return;
    const resume = parseId(gap.to);
    const last = channel.pos;
    if (last !== null && last.epoch === resume.epoch && resume.seq <= last.seq) return;
    channel.pos = resume;
    channel.fromOrigin = false;
    for (const subscription of [...channel.subs]) subscription._gap(gap);
  }

  _unsubscribe(subscription) {
    if (subscription === this._serverSide) {
      this._serverSide = null;
      for (const name of [...subscription.channels]) this._dropServerChannel(name);
      if (!this._closed) this._post({ t: "sunsubs" });
      return;
    }
    const removed = [];
    for (const name of subscription.channels) {
      const channel = this._channels.get(name);
      if (!channel) continue;
      channel.subs.delete(subscription);
      if (channel.subs.size === 0) {
        this._channels.delete(name);
        removed.push(name);
      }
    }
    if (removed.length && !this._closed) this._post({ t: "unsub", channels: removed });
  }

  _report(error) {
    Client.prototype._report.call(this, error);
  }
}

// In a SharedWorker started by a SharedClient (this very module): one hub per
// (server, options) pair, each serving the ports of the tabs that use it.
if (typeof globalThis.SharedWorkerGlobalScope === "function"
    && globalThis instanceof globalThis.SharedWorkerGlobalScope) {
  const hubs = new Map(); // key → {hub, ports: Map tab → port}
  globalThis.addEventListener("connect", (event) => {
    const port = event.ports[0];
    port.onmessage = ({ data }) => {
      let entry = hubs.get(data.key);
      if (!entry) {
        const ports = new Map();
        const send = (packet) => {
          if (packet.to !== undefined) {
            const target = ports.get(packet.to);
            if (target) target.postMessage(packet);
          } else {
            for (const target of ports.values()) target.postMessage(packet);
          }
        };
        entry = { ports, hub: null };
        entry.hub = new Hub(data.url, data.options, send, () => {
          hubs.delete(data.key);
          entry.hub.close();
        });
        entry.hub.onDrop = (tab) => ports.delete(tab);
        hubs.set(data.key, entry);
      }
      if (data.packet.t === "hello") entry.ports.set(data.packet.tab, port);
      entry.hub.handle(data.packet);
    };
    port.start();
  });
}

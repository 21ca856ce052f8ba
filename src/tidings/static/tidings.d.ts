// Type declarations of tidings.js, the browser (and Node) client of tidings.
// They describe src/tidings/static/tidings.js, the file the server serves at /tidings.js
// and the npm package ships; tests/js checks both with `tsc --noEmit` against an example,
// and that every export and public method of the module is declared here.
// The user's guide is docs/browser-client.md.

/** A way to read a channel's log, best first. */
export type Technique = "websocket" | "sse" | "longpoll" | "poll";

/**
 * - `connecting`: no technique has worked yet (at start, or with no subscription);
 * - `open`: reading with the first technique of `transports`;
 * - `fallback`: reading with a lesser technique, because the better ones failed;
 * - `reconnecting`: the connection was lost; waiting `detail.retryIn` ms, then resuming;
 * - `closed`: `close()` was called.
 */
export type State = "connecting" | "open" | "fallback" | "reconnecting" | "closed";

/** Every technique, best first: the default `transports`. */
export const TECHNIQUES: readonly Technique[];

/** Every state a client can be in. */
export const STATES: readonly State[];

/** JSON, as published and delivered. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A message, once and in order per channel. */
export interface Message<T = Json> {
  /** The channel it was published on. */
  channel: string;
  /** Its place in the channel's log, `EPOCH-SEQ`: a cursor to resume after it. */
  id: string;
  /** The published JSON value. */
  data: T;
  /** When the server accepted it, in Unix milliseconds. */
  time: number;
}

/**
 * Messages after `from` up to `to` can no longer be delivered; reading goes on after `to`.
 * `reason` is `"expired"` (the server no longer keeps them; `missed` says how many) or
 * `"epoch"` (the server lost that log; `missed` is null).
 */
export interface Gap {
  channel: string;
  from: string;
  to: string;
  reason: "expired" | "epoch" | string;
  missed: number | null;
}

/** What a state listener receives with the new state. */
export interface StateDetail {
  /** The technique in use now (null unless connected). */
  transport: Technique | null;
  /** The technique used before this change. */
  previous: Technique | null;
  /** Why it changed, for people (e.g. `"sse failed: 403 transport_disabled: ..."`). */
  reason: string | null;
  /** With `reconnecting`: milliseconds until the next attempt. */
  retryIn?: number;
}

/** The server's message store (Redis) is away (`unavailable`) or back (`ok`). */
export interface BrokerStatus {
  broker: "unavailable" | "ok" | string;
  message: string;
}

/** What reading has cost since `connect()`. */
export interface Stats {
  /** HTTP requests made, WebSocket handshakes and `/healthz` probes included. */
  requests: number;
  /** Bytes of response bodies and frames, plus an estimate of each response head. */
  bytesReceived: number;
  /** Messages delivered (duplicates dropped are not counted). */
  messages: number;
}

/** Reconnection delays: attempt n waits a random time in [0, min(max, initial × factor^n)]. */
export interface Backoff {
  initial: number;
  max: number;
  factor: number;
}

/** A token, or a function returning one (or a promise of one), called again when it expired. */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of `connect()`; every time is in milliseconds. */
export interface Options {
  /** Techniques allowed, best first (default: all four). */
  transports?: readonly Technique[];
  /** Time for a technique to work, and for the `/healthz` probe (5000). */
  attemptTimeout?: number;
  /** An event stream whose first event is later than this after its head is buffered (3000). */
  sseFirstEventTimeout?: number;
  /** An event stream with no bytes for this long is dead (60000). */
  idleTimeout?: number;
  /** Between WebSocket `ping` commands (25000). */
  pingInterval?: number;
  /** Publishing, polls, command answers (10000). */
  requestTimeout?: number;
  /** Reconnection delays, with full jitter; give any of the three. */
  backoff?: Partial<Backoff>;
  /** Time on a fallback before trying the better techniques again (300000). */
  upgradeAfter?: number;
  /** Between polls (1000). */
  pollInterval?: number;
  /** How long the server may hold a long poll (25000; it cuts to its `max_wait`). */
  longpollWait?: number;
  /**
   * A token, or a function returning one: `?token=` on reads and WebSockets,
   * `Authorization: Bearer` on publish. With a function, a fresh one is asked for when the
   * server says `token_expired`, and a JWT is replaced over an open WebSocket before `exp`.
   */
  token?: TokenSource | null;
  /**
   * Share one connection between the tabs of this origin that connect to the same server
   * with the same options (`"auto"`, the default: a SharedWorker where there is one, else a
   * leader tab elected with a Web Lock); `"worker"` or `"leader"` to choose; `false` for a
   * connection of this client's own. A client with a `token` function, or outside a page,
   * always has its own.
   */
  shareTabs?: ShareTabs;
  /** Ask for deltas (`?delta=1`, `"delta": true`); applied by the client: `onMessage` still
   *  gets whole messages, with fewer bytes on the wire. Default false. */
  delta?: boolean;
  /** Ask for the newest message of each channel only (`?latest=1`, `"latest": true`); the
   *  skipped ones come as a gap of reason `"latest"`. Default false. */
  latest?: boolean;
  /**
   * This client's id in presence: 1 to 64 of `A-Z a-z 0-9 _ -`. Without it (null, the
   * default), the first id the server assigns is kept and sent back as `?client=` on every
   * technique, so reconnects and technique switches stay one member.
   */
  clientId?: string | null;
}

/** A reader of a channel, as presence lists it (docs/protocol.md, "Presence"). */
export interface Member {
  /** The channel it reads. */
  channel: string;
  /** Its client id: one per client (a `Client`, or the tabs sharing one connection). */
  client: string;
  /** The `sub` of its token, or null for an anonymous reader. */
  user: string | null;
  /** The `info` claim of its token (a display name, an avatar), or null. */
  info: Json;
  /** How it joined. */
  technique: Technique;
  /** When it joined, in Unix milliseconds. */
  since: number;
}

/** Who is on a channel: `presence()`, and each member list of `onPresence`. */
export interface PresenceAnswer {
  channel: string;
  /** Members (client ids) on the channel. */
  count: number;
  /** Distinct non-null users among them. */
  users: number;
  /** Oldest first; at most 1000 (then `more` is true). */
  members: Member[];
  more: boolean;
}

/** `presence(channel, {count: true})`: the numbers alone, for large channels. */
export interface PresenceCount {
  channel: string;
  count: number;
  users: number;
}

/** Options of `presence()`. */
export interface PresenceOptions {
  /** Only `count` and `users`, no member list. */
  count?: boolean;
}

/** How a client shares its connection with the other tabs: see `Options.shareTabs`. */
export type ShareTabs = "auto" | "worker" | "leader" | "off" | boolean;

/** The default options (frozen). */
export const DEFAULTS: Readonly<Required<Omit<Options, "backoff" | "token" | "shareTabs">>> & {
  readonly backoff: Readonly<Backoff>;
  readonly token: null;
  readonly shareTabs: "auto";
};

/** What to do with a subscription's messages, and where it starts. */
export interface SubscribeOptions<T = Json> {
  /** Called once per message, in order, per channel. */
  onMessage?: (message: Message<T>) => void;
  /** Called when messages were lost; reading goes on after `gap.to`. */
  onGap?: (gap: Gap) => void;
  /**
   * Where to start, for channels the client does not read yet: omitted → from now on;
   * `"0"` → the oldest message the server keeps; a message id (one channel);
   * or a multi-channel cursor `"a=ID,b=ID"`. A channel already read keeps its position.
   */
  since?: string;
  /**
   * Ask for joins and leaves on these channels (the channels' namespaces must have
   * presence; else `on("error")` gets `presence_disabled` and reading goes on without).
   * Defaults to true when `onJoin`, `onLeave` or `onPresence` is given.
   */
  presence?: boolean;
  /** A member arrived (once per client id; told again after a reconnect only if it is new). */
  onJoin?: (member: Member) => void;
  /** A member left. */
  onLeave?: (member: Member) => void;
  /**
   * The whole member list: when reading starts, after each reconnect (after the joins and
   * leaves it differs by), and instead of a storm of changes.
   */
  onPresence?: (presence: PresenceAnswer) => void;
}

/** One `subscribe()` call: its channels' messages go to its callbacks until `unsubscribe()`. */
export interface Subscription {
  /** The channels it reads. */
  readonly channels: readonly string[];
  /** True once unsubscribed (or the client closed): no callback runs any more. */
  readonly closed: boolean;
  /** Whether it asked for joins and leaves. */
  readonly watchesPresence: boolean;
  /** Stop this subscription; channels no other subscription reads are no longer read. */
  unsubscribe(): void;
  /**
   * Who is on `channel` now (by default the subscription's only channel), asked of the
   * server; rejects with a `TidingsError` (`presence_disabled`, `forbidden`, ...).
   */
  presence(channel?: string): Promise<PresenceAnswer>;
  presence(channel: string | undefined, options: { count: true }): Promise<PresenceCount>;
  presence(channel?: string, options?: PresenceOptions): Promise<PresenceAnswer | PresenceCount>;
}

/** A channel the server reads for the user: where reading it starts (null: from its first
 *  message, as a poll learns of it). */
export interface ServerSubscribed {
  channel: string;
  next: string | null;
}

/** What to do with the user's channels (`subscribeServerSide()`), and where they resume. */
export interface ServerSideOptions<T = Json> {
  /** Called once per message of any of the user's channels, in order per channel. */
  onMessage?: (message: Message<T>) => void;
  /** Called when messages of one of them were lost; reading goes on after `gap.to`. */
  onGap?: (gap: Gap) => void;
  /**
   * The server reads `channel` for the user: the channels of `on_connect`, of the token's
   * `channels.read`, and of the user's set, at the first connection; then each one the
   * application adds (`server.subscribe_user`, `POST /users/{user}/channels/{channel}`).
   */
  onSubscribed?: (event: ServerSubscribed) => void;
  /** The server stopped reading `channel` for the user (removed while reading or while away). */
  onUnsubscribed?: (event: { channel: string }) => void;
  /** A multi-channel cursor `"a=ID,b=ID"` kept from before: those channels resume there. */
  since?: string;
}

/** The user's channels, read by `subscribeServerSide()`, until `unsubscribe()`. */
export interface ServerSideSubscription extends Subscription {
  /** The user's channels read now, as the server announced them (a copy). */
  readonly serverChannels: string[];
}

/** Options of `history()`: which page of a channel's retained messages, newest first. */
export interface HistoryOptions {
  /** An id: the messages older than it (e.g. the `before` of the page above). */
  before?: string | null;
  /** `"0"` or an id: the page stops there (the messages after it). */
  since?: string | null;
  /** The page size: an integer of at least 1 (the server caps it). */
  limit?: number | null;
}

/** A page of `history()`. */
export interface HistoryPage<T = Json> {
  /** Newest first. */
  messages: Array<Message<T>>;
  /** The cursor after the page's newest message: `subscribe(c, {since: next})` goes on live. */
  next: string;
  /** The id to ask `before` for the next page back; null on the page with the oldest. */
  before: string | null;
  /** What the server could not give (retention, a new epoch) in the range asked for. */
  gaps: Gap[];
}

export interface PublishOptions {
  /**
   * 1 to 128 of `A-Z a-z 0-9 - _ . : ~ + / =` (e.g. `crypto.randomUUID()`): publishing again
   * with the same key within the server's `idempotency_window` stores nothing and resolves
   * with the first id; the same key with other data rejects with `idempotency_conflict`.
   */
  idempotencyKey?: string;
}

/** A connection to a tidings server, made by `connect()`. */
export interface Client {
  /** The server's base URL, without a trailing slash. */
  readonly url: string;
  /** The options in force: the defaults, overridden by those given to `connect()`. */
  readonly options: Readonly<Required<Omit<Options, "backoff" | "token" | "shareTabs">>> & {
    readonly backoff: Readonly<Backoff>;
    readonly token: TokenSource | null;
    readonly shareTabs: ShareTabs;
  };
  /** The current state. */
  readonly state: State;
  /** The technique in use, or null while none works. */
  readonly transport: Technique | null;
  /**
   * What reading has cost since `connect()`; with a shared connection, the shared
   * connection's (as `state` and `transport` are).
   */
  readonly stats: Readonly<Stats>;
  /**
   * Where the shared connection lives: `"worker"` (a SharedWorker) or `"leader"` (one of
   * the tabs); undefined when this client has a connection of its own.
   */
  readonly sharing?: "worker" | "leader";
  /**
   * This client's id in presence (the one chosen with `clientId`, or the first the server
   * assigned), kept across reconnects and technique switches; null until known.
   */
  readonly clientId: string | null;

  /**
   * Read `channels` (a name or an array; each 1 to 128 of `A-Z a-z 0-9 _ - . : @`).
   * Throws a `TidingsError` at once for an invalid name or `since`, or a closed client;
   * never for the network: reading reconnects and resumes by itself.
   */
  subscribe<T = Json>(channels: string | readonly string[],
                      options?: SubscribeOptions<T>): Subscription;

  /**
   * Publish `data` (any JSON value) on `channel`; resolves with the new message id once it is
   * in the log. Over the WebSocket when one is open, else over HTTP POST; never retried by
   * itself. Rejects with a `TidingsError` (`status`, `code` as the server said, or
   * `connection_failed`, `timeout`).
   */
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<string>;

  /**
   * A page of `channel`'s retained messages, newest first (chat scroll-back, "the last 50
   * trades"), over HTTP. Rejects with a `TidingsError` as `publish` does.
   */
  history<T = Json>(channel: string, options?: HistoryOptions): Promise<HistoryPage<T>>;

  /**
   * Who is on `channel` now: over the WebSocket when one is open, else
   * `GET /channels/{channel}/presence`. Rejects with a `TidingsError` (`presence_disabled`
   * when its namespace has no presence, `forbidden`, `connection_failed`).
   */
  presence(channel: string): Promise<PresenceAnswer>;
  presence(channel: string, options: { count: true }): Promise<PresenceCount>;
  presence(channel: string, options?: PresenceOptions): Promise<PresenceAnswer | PresenceCount>;

  /**
   * Read the channels the server reads for this client's user (`GET /subscribe` without
   * `channel`, on every technique): the server names them, announces each one it adds or
   * removes, and their positions stay in the client's cursor, so that a reconnection or a
   * technique switch resumes each exactly. One per client; with named `subscribe()`
   * channels beside it, only over a WebSocket (`transports: ["websocket"]`): throws a
   * `TidingsError` otherwise.
   */
  subscribeServerSide<T = Json>(options?: ServerSideOptions<T>): ServerSideSubscription;

  /**
   * Call the application's `on_rpc` hook over the open WebSocket (waiting up to
   * `requestTimeout` for one being opened); resolves with its result. Rejects with a
   * `TidingsError`: the code the hook refused with (`forbidden` by default), `no_rpc`,
   * `hook_unavailable`, `timeout`, or `not_websocket` when the client is not on a WebSocket.
   */
  rpc<R = Json>(method: string, data?: unknown): Promise<R>;

  /** Stop reading and end every subscription; the client cannot be used again. */
  close(): void;

  /** On each change of state. Returns a function that removes the listener. */
  on(event: "state", listener: (state: State, detail: StateDetail) => void): () => void;
  /** When the server's message store goes away or is back. Returns a remover. */
  on(event: "broker", listener: (status: BrokerStatus) => void): () => void;
  /**
   * Errors thrown by your callbacks, refused commands, and once if the server turned off
   * every technique allowed (code `transport_disabled`). Returns a remover.
   */
  on(event: "error", listener: (error: unknown) => void): () => void;
}

/**
 * Connect to the tidings server at `url` (http or https; relative to the page in a browser).
 * Nothing is read until the first `subscribe()`. Throws a `TidingsError` for a URL that is
 * not http(s) or unknown `transports`.
 */
export function connect(url: string | URL, options?: Options): Client;

/** An error answered by the server, or a misuse of the client. */
export class TidingsError extends Error {
  constructor(message: string, detail?: { status?: number | null; code?: string });
  readonly name: "TidingsError";
  /** The HTTP status, or null (over a WebSocket, or a misuse). */
  readonly status: number | null;
  /**
   * The server's `error` code (e.g. `payload_too_large`, `token_expired`), or
   * `client_error`, `connection_failed`, `timeout`, `transport_disabled`, `not_websocket`.
   */
  readonly code: string;
}

/** The `exp` of a JWT in Unix seconds, unverified (the server verifies); null if opaque. */
export function tokenExpiry(token: string): number | null;

/**
 * Seconds to wait before refreshing a token that expires in `remaining` seconds, or null
 * when it is too late to: the rule the client applies over a WebSocket.
 */
export function refreshDelay(remaining: number): number | null;

/** `base` with a delta's `patch` applied (docs/protocol.md#deltas); throws if it does not fit. */
export function applyDelta(base: unknown, patch: unknown): unknown;

// Checked by `tsc --noEmit` (tests/js/test_types.py) in a project that installed the packed
// package: the declarations must accept what docs/browser-client.md shows, and refuse misuse
// (each `@ts-expect-error` line must be an error, or tsc fails).
import {
  connect, DEFAULTS, refreshDelay, STATES, TECHNIQUES, TidingsError, tokenExpiry,
  type BrokerStatus, type Client, type Gap, type HistoryPage, type Member, type Message,
  type Options, type PresenceAnswer, type PresenceCount, type State,
  type ServerSideSubscription, type ServerSubscribed,
  type ShareTabs, type StateDetail, type Subscription, type Technique,
} from "tidings";

interface Quote { symbol: string; price: number }

const share: ShareTabs = "auto";
const options: Options = {
  shareTabs: share,
  transports: ["websocket", "sse"],
  backoff: { initial: 100 },
  token: async () => "a-token",
};
const ownConnection: Client = connect("/", { shareTabs: false });
const sharing: "worker" | "leader" | undefined = connect("/", { shareTabs: "leader" }).sharing;
console.log(ownConnection, sharing);
const client: Client = connect("http://127.0.0.1:8000", options);
connect(new URL("https://realtime.example.com"));

const off: () => void = client.on("state", (state: State, detail: StateDetail) => {
  const technique: Technique | null = detail.transport;
  const wait: number | undefined = detail.retryIn;
  console.log(state, technique, detail.previous, detail.reason, wait);
});
off();
client.on("broker", ({ broker, message }: BrokerStatus) => console.log(broker, message));
client.on("error", (error) => {
  if (error instanceof TidingsError) console.log(error.status, error.code, error.message);
});

const subscription: Subscription = client.subscribe<Quote>(["stocks", "fx"], {
  since: "0",
  onMessage: (message: Message<Quote>) => {
    const price: number = message.data.price;
    console.log(message.channel, message.id, price, new Date(message.time));
  },
  onGap: ({ channel, from, to, reason, missed }: Gap) =>
    console.warn(channel, from, to, reason, missed ?? "some"),
});
const channels: readonly string[] = subscription.channels;
subscription.unsubscribe();
client.subscribe("news", { onMessage: ({ data }) => console.log(data) });

async function publishing(): Promise<string> {
  const id: string = await client.publish("stocks", { symbol: "AAPL", price: 187.2 });
  await client.publish("stocks", [1, "two", null], { idempotencyKey: crypto.randomUUID() });
  return id;
}

async function scrollBack(): Promise<string | null> {
  const page: HistoryPage<Quote> = await client.history<Quote>("stocks", { limit: 50 });
  const newest: number | undefined = page.messages[0]?.data.price;
  const older = await client.history("stocks", { before: page.before, limit: 50 });
  client.subscribe("stocks", { since: page.next });
  console.log(newest, older.gaps.length);
  return older.before;
}

async function watching(): Promise<number> {
  const room = client.subscribe("room", {
    onJoin: (member: Member) => console.log(member.client, member.user, member.technique),
    onLeave: ({ client: id, since }: Member) => console.log(id, new Date(since)),
    onPresence: ({ count, users, members, more }: PresenceAnswer) =>
      console.log(count, users, members.length, more),
  });
  const who: PresenceAnswer = await room.presence();
  const numbers: PresenceCount = await client.presence("room", { count: true });
  const id: string | null = client.clientId;
  console.log(who.members[0]?.info, id, room.watchesPresence);
  connect("/", { clientId: "kiosk-7" });
  return numbers.count + numbers.users;
}

interface Typing { ok: boolean; others: string[] }

async function mine(): Promise<boolean> {
  const inbox: ServerSideSubscription = client.subscribeServerSide<{ text: string }>({
    onMessage: (message) => console.log(message.channel, message.data.text),
    onGap: (gap: Gap) => console.log(gap.missed),
    onSubscribed: ({ channel, next }: ServerSubscribed) => console.log(channel, next),
    onUnsubscribed: ({ channel }) => console.log(channel),
    since: "inbox:alice=k2j4h5g6-3",
  });
  const channels: string[] = inbox.serverChannels;
  const typing = await client.rpc<Typing>("typing", { room: "lobby" });
  const anything = await client.rpc("ping");
  console.log(channels, anything);
  inbox.unsubscribe();
  return typing.ok;
}

const stats: number = client.stats.requests + client.stats.bytesReceived + client.stats.messages;
const state: State = client.state;
const techniques: readonly Technique[] = TECHNIQUES;
const states: readonly State[] = STATES;
const timeout: number = DEFAULTS.attemptTimeout + DEFAULTS.backoff.max;
const expiry: number | null = tokenExpiry("a.b.c");
const delay: number | null = refreshDelay(60);
const error = new TidingsError("refused", { status: 403, code: "forbidden" });
console.log(channels, publishing, scrollBack, watching, mine, stats, state, techniques, states, timeout, expiry, delay, error);
client.close();

// Misuse the declarations must refuse.
// @ts-expect-error: not a technique
connect("/", { transports: ["carrier-pigeon"] });
// @ts-expect-error: times are numbers
connect("/", { attemptTimeout: "5s" });
// @ts-expect-error: no such event
client.on("message", () => {});
// @ts-expect-error: a state listener gets a State, not a number
client.on("state", (state: number) => console.log(state));
// @ts-expect-error: channels are strings
client.subscribe(42);
client.subscribe<Quote>("stocks", {
  // @ts-expect-error: data is a Quote, whose price is a number
  onMessage: (message) => { const wrong: string = message.data.price; console.log(wrong); },
});
// @ts-expect-error: publish resolves with the id, a string
const wrongId: Promise<number> = client.publish("stocks", 1);
// @ts-expect-error: a page size is a number
client.history("stocks", { limit: "50" });
// @ts-expect-error: no such way to share
connect("/", { shareTabs: "iframe" });
// @ts-expect-error: the state is read-only
client.state = "open";
console.log(wrongId);
// @ts-expect-error: a method is a string
client.rpc(7);
// @ts-expect-error: onSubscribed gets {channel, next}, not a string
client.subscribeServerSide({ onSubscribed: (channel: string) => console.log(channel) });
// @ts-expect-error: a count answer has no member list
client.presence("room", { count: true }).then((answer) => answer.members);

// "/lab": the four techniques side by side on the same channel, measured live.
import { connect } from "/tidings.js";
import { TimeChart } from "/chart.js";

const CHANNEL = "stocks";
const SAMPLES = 1000; // latencies kept per column for p50/p99
const TECHNIQUES = [
  { name: "websocket", title: "WebSocket", color: "#4ea1ff",
    how: "One upgraded connection; the server writes a frame per message." },
  { name: "sse", title: "Server-Sent Events", color: "#b38cff",
    how: "One long HTTP response; the server writes an event per message." },
  { name: "longpoll", title: "Long polling", color: "#e6b34a",
    how: "A request the server holds until a message arrives; then the next request." },
  { name: "poll", title: "Regular polling", color: "#ef7a5a",
    how: "A request on a timer; messages wait in the log for the next one." },
];

const $ = (id) => document.getElementById(id);
const now = () => performance.timeOrigin + performance.now();

// The server's clock minus ours, from the sample with the shortest round trip.
// The server read its clock between the request leaving and the answer's first
// byte arriving (Resource Timing gives both, without the page's own delays);
// taking the midpoint is off by at most half the round trip. Both /healthz
// "time" and message "time" are whole milliseconds truncated the same way, so
// the truncation cancels out in a latency.
async function measureOffset(samples = 10) {
  let best = null;
  await fetch("/healthz?warm-up", { cache: "no-store" }); // opens the connection
  for (let i = 0; i < samples; i++) {
    const url = new URL(`/healthz?clock=${i}`, location.href).href;
    let sent = now();
    const response = await fetch(url, { cache: "no-store" });
    let received = now();
    const body = await response.json();
    if (typeof body.time !== "number") throw new Error("/healthz has no time");
    const [timing] = performance.getEntriesByName(url).slice(-1);
    if (timing && timing.requestStart > 0 && timing.responseStart > timing.requestStart) {
      sent = performance.timeOrigin + timing.requestStart;
      received = performance.timeOrigin + timing.responseStart;
    }
    const rtt = received - sent;
    if (!best || rtt < best.rtt) {
      best = { rtt, offset: body.time - (sent + received) / 2, transports: body.transports };
    }
  }
  return best;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function ms(value) {
  if (value === null) return "–";
  if (Math.abs(value) < 10) return `${value.toFixed(1)} ms`;
  return `${Math.round(value).toLocaleString("en")} ms`;
}

function bytes(value) {
  if (value < 10_000) return `${value.toLocaleString("en")} B`;
  if (value < 10_000_000) return `${(value / 1024).toFixed(1)} KiB`;
  return `${(value / 1048576).toFixed(1)} MiB`;
}

let clock = null;

// The channel's members (presence), as the first column that reads sees them: its four
// columns are four of them, each with its technique and client id.
const members = new Map(); // client id → member
let memberCount = null;

function showMembers() {
  const body = $("members").tBodies[0];
  body.replaceChildren();
  const ours = new Map(columns.filter((c) => c.client && c.client.clientId)
    .map((c) => [c.client.clientId, c.technique.title]));
  for (const member of members.values()) {
    const row = body.insertRow();
    row.dataset.client = member.client;
    row.dataset.technique = member.technique;
    row.classList.toggle("mine", ours.has(member.client));
    for (const [name, text] of [["technique", member.technique], ["client", member.client],
                                ["reader", ours.get(member.client) || "another page"],
                                ["since", new Date(member.since).toLocaleTimeString()]]) {
      const cell = row.insertCell();
      cell.className = name;
      cell.textContent = text;
    }
  }
  $("member-count").textContent = memberCount === null ? "–" : memberCount.toLocaleString("en");
}

const watchMembers = {
  onPresence: (list) => {
    members.clear();
    for (const member of list.members) members.set(member.client, member);
    memberCount = list.count;
    showMembers();
  },
  onJoin: (member) => { members.set(member.client, member); memberCount += 1; showMembers(); },
  onLeave: (member) => {
    members.delete(member.client);
    memberCount = Math.max(0, memberCount - 1);
    showMembers();
  },
};

class Column {
  constructor(technique, offered, watch) {
    this.technique = technique;
    const node = $("column").content.firstElementChild.cloneNode(true);
    node.dataset.technique = technique.name;
    node.querySelector(".title").textContent = technique.title;
    node.querySelector(".how").textContent = technique.how;
    $("columns").appendChild(node);
    this.node = node;
    this.field = (name) => node.querySelector(`.${name}`);
    this.chart = new TimeChart(node.querySelector("canvas"), {
      window: 60, mode: "dots", log: true, min: 0.1, max: 10000, color: technique.color,
      format: (v) => (v >= 1000 ? `${v / 1000}s` : `${v}ms`), empty: "waiting for messages…",
    });
    this.latencies = [];
    this.count = 0;
    this.base = { requests: 0, bytesReceived: 0 };
    this.client = null;
    if (!offered) {
      this.showState("off", { reason: "turned off on this server (--transports)" });
      this.chart.options.empty = "not offered by the server";
      return;
    }
    // One client id for the column: its second client (below) is the same member in presence.
    // (getRandomValues: randomUUID exists only in secure contexts, and the demo may be on http.)
    const clientId = Array.from(crypto.getRandomValues(new Uint8Array(8)),
      (b) => b.toString(16).padStart(2, "0")).join("");
    this.client = connect(location.origin, { transports: [technique.name], delta: true, clientId });
    this.field("client").textContent = clientId;
    this.client.on("state", (state, detail) => this.showState(state, detail));
    this.client.subscribe(CHANNEL, {
      onMessage: (message) => this.received(message),
      onGap: (gap) => console.warn(technique.name, "missed messages", gap),
      ...(watch ? watchMembers : {}),
    });
    this.showState(this.client.state);
    // Deltas compared: a second client of the same technique reads whole messages, for its
    // bytes per message only; with the column's client id, the column stays one member.
    this.plain = connect(location.origin, { transports: [technique.name], clientId });
    this.plainCount = 0;
    this.plainBase = 0;
    this.plain.subscribe(CHANNEL, { onMessage: () => { this.plainCount++; } });
  }

  showState(state, detail) {
    const pill = this.field("state");
    pill.textContent = state;
    pill.className = `pill state state-${state}`;
    pill.title = (detail && detail.reason) || "";
    // why it is not reading (e.g. the server has this technique turned off)
    const reason = this.field("reason");
    if (state === "open") reason.textContent = "";
    else if (detail && detail.reason) reason.textContent = detail.reason;
  }

  received(message) {
    const arrival = now();
    this.count++;
    if (clock) {
      const latency = arrival + clock.offset - message.time;
      this.latencies.push(latency);
      if (this.latencies.length > SAMPLES) this.latencies.shift();
      this.chart.push(Date.now(), Math.max(latency, 0.1));
    }
  }

  reset() {
    this.count = 0;
    this.latencies = [];
    this.chart.clear();
    const stats = (this.client && this.client.stats) || {};
    this.base = { requests: stats.requests || 0, bytesReceived: stats.bytesReceived || 0 };
    this.plainCount = 0;
    this.plainBase = this.plain ? this.plain.stats.bytesReceived : 0;
  }

  render() {
    const stats = (this.client && this.client.stats) || {};
    const requests = (stats.requests || 0) - this.base.requests;
    const received = (stats.bytesReceived || 0) - this.base.bytesReceived;
    this.field("count").textContent = this.count.toLocaleString("en");
    this.field("p50").textContent = ms(percentile(this.latencies, 50));
    this.field("p99").textContent = ms(percentile(this.latencies, 99));
    this.field("requests").textContent = requests.toLocaleString("en");
    this.field("bytes").textContent = bytes(received);
    this.field("per-message").textContent = this.count ? `${Math.round(received / this.count)} B` : "–";
    const plain = this.plain ? this.plain.stats.bytesReceived - this.plainBase : 0;
    this.field("per-message-plain").textContent =
      this.plainCount ? `${Math.round(plain / this.plainCount)} B` : "–";
    this.field("client").textContent = (this.client && this.client.clientId) || "–";
  }
}

// Measure the clock first: connections opened alongside would delay the round trips.
try {
  clock = await measureOffset();
  const size = Math.abs(clock.offset).toFixed(1);
  const sign = size === "0.0" ? "" : clock.offset > 0 ? "+" : "−";
  $("offset").textContent = `${sign}${size} ms ± ${(clock.rtt / 2).toFixed(1)} ms`;
} catch (error) {
  $("offset").textContent = "unknown (latency not measured)";
  console.warn("cannot measure the clock offset:", error);
}

// /healthz names the techniques the server offers; a column for one it does not stays idle.
const offered = (clock && clock.transports) || TECHNIQUES.map((technique) => technique.name);
const watcher = TECHNIQUES.find((technique) => offered.includes(technique.name));
const columns = TECHNIQUES.map((technique) => new Column(technique, offered.includes(technique.name),
                                                         technique === watcher));
$("reset").addEventListener("click", () => columns.forEach((column) => column.reset()));

const arrivals = [];
let lastCount = 0;
setInterval(() => {
  for (const column of columns) column.render();
  if (members.size) showMembers(); // a column's client id may have come since
  // the feed's rate, as the column that received most sees it, over the last five seconds
  const t = performance.now();
  const count = Math.max(...columns.map((column) => column.count));
  arrivals.push([t, count - lastCount]);
  lastCount = count;
  while (arrivals.length && arrivals[0][0] < t - 5000) arrivals.shift();
  const span = arrivals.length > 1 ? (arrivals[arrivals.length - 1][0] - arrivals[0][0]) / 1000 : 0;
  const counted = arrivals.slice(1).reduce((sum, [, n]) => sum + Math.max(n, 0), 0);
  $("rate").textContent = span ? (counted / span).toFixed(1) : "–";
}, 250);

window.tidingsLab = { columns, members };

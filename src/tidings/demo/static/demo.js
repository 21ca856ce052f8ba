// "/": a live price table and a chart of one symbol, read with the browser client.
import { connect } from "/tidings.js";
import { TimeChart } from "/chart.js";

const CHANNEL = "stocks";
const $ = (id) => document.getElementById(id);

const rows = new Map(); // symbol -> {row, price, cells}
const history = new Map(); // symbol -> [[timeMs, price], ...] for the chart
const HISTORY_MS = 130_000;
let chosen = new URLSearchParams(location.search).get("symbol") || "AAPL";
let received = 0;
const arrivals = [];
const started = performance.now();

const chart = new TimeChart($("chart"), {
  window: 120,
  format: (v, decimals) => v.toFixed(decimals),
  colorOf: (points) => (points[points.length - 1][1] >= points[0][1] ? "#2fbf71" : "#ef5a5a"),
});

function money(v) {
  return v.toFixed(2);
}

function signed(v, digits = 2) {
  return (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(digits);
}

function rowFor(symbol) {
  let entry = rows.get(symbol);
  if (entry) return entry;
  const row = document.createElement("tr");
  row.dataset.symbol = symbol;
  row.innerHTML = '<td class="symbol"></td><td class="price"></td><td class="change"></td><td class="percent"></td>';
  row.cells[0].textContent = symbol;
  row.addEventListener("click", () => choose(symbol));
  $("prices").tBodies[0].appendChild(row);
  const option = document.createElement("option");
  option.value = option.textContent = symbol;
  $("symbol").appendChild(option);
  entry = { row, price: null };
  rows.set(symbol, entry);
  if (symbol === chosen) choose(symbol);
  return entry;
}

function record(symbol, time, price) {
  let points = history.get(symbol);
  if (!points) history.set(symbol, (points = []));
  points.push([time, price]);
  while (points.length && points[0][0] < time - HISTORY_MS) points.shift();
  if (symbol === chosen) chart.push(time, price);
}

// A tick of the direct feed carries every quote; through PostgreSQL (tidings demo
// --database) each message is one committed row change from the bridge.
function quotesOf(data) {
  if (typeof data !== "object" || !data) return [];
  if (Array.isArray(data.quotes)) return data.quotes;
  if (data.row && data.op !== "delete") return [data.row];
  return [];
}

function applyTick(data, time, live) {
  for (const { symbol, price, change } of quotesOf(data)) {
    const entry = rowFor(symbol);
    const cells = entry.row.cells;
    if (live && entry.price !== null && price !== entry.price) {
      entry.row.classList.remove("flash-up", "flash-down");
      void entry.row.offsetWidth; // restart the animation
      entry.row.classList.add(price > entry.price ? "flash-up" : "flash-down");
    }
    entry.price = price;
    const open = price - change;
    const percent = open ? (100 * change) / open : 0;
    const tone = change > 0 ? "pos" : change < 0 ? "neg" : "";
    cells[1].textContent = money(price);
    cells[2].textContent = signed(change);
    cells[3].textContent = signed(percent) + "%";
    cells[2].className = cells[3].className = "num " + tone;
    if (symbol === chosen) showChosen(price, change, percent, tone);
    record(symbol, time, price);
  }
}

function showChosen(price, change, percent, tone) {
  $("chart-price").textContent = money(price);
  $("chart-change").textContent = `${signed(change)} (${signed(percent)}%)`;
  $("chart-change").className = tone;
}

function choose(symbol) {
  chosen = symbol;
  $("chart-symbol").textContent = symbol;
  $("symbol").value = symbol;
  for (const [name, { row }] of rows) row.classList.toggle("selected", name === symbol);
  chart.clear();
  for (const [t, v] of history.get(symbol) || []) chart.push(t, v);
  const entry = rows.get(symbol);
  if (entry && entry.price !== null) {
    const cells = entry.row.cells;
    $("chart-price").textContent = cells[1].textContent;
    $("chart-change").textContent = `${cells[2].textContent} (${cells[3].textContent})`;
    $("chart-change").className = cells[2].className;
  }
}
$("symbol").addEventListener("change", (event) => choose(event.target.value));

// client.on("state", (state, detail) => ...): connecting, open, fallback, reconnecting, closed
function showState(state, detail) {
  if (state) {
    $("state").textContent = state;
    $("state").className = `pill state-${state}`;
    $("state").title = (detail && detail.reason) || "";
  }
  $("transport").textContent = client.transport || "…";
}

// The chart starts with what the channel retains: one plain poll from the oldest message.
async function backfill() {
  try {
    const response = await fetch(`/channels/${CHANNEL}?since=0&limit=1000`, { cache: "no-store" });
    if (!response.ok) return;
    const { messages } = await response.json();
    for (const message of messages) applyTick(message.data, message.time, false);
  } catch (error) {
    console.warn("no history for the chart:", error);
  }
}

// "N watching": who reads the channel, over all four techniques (presence). The member list
// comes when reading starts (and after a reconnect); joins and leaves keep it current.
let watching = null;
function showWatching(count) {
  watching = count;
  $("watching").textContent = count.toLocaleString("en");
}

// Deltas: each tick comes as the few prices that moved; the client hands whole ticks here.
const client = connect(location.origin, { delta: true });
client.on("state", showState);
client.on("error", (error) => {
  if (error.code === "presence_disabled") $("watching-pill").hidden = true; // not on this server
  else console.error("tidings:", error);
});
await backfill();
const subscription = client.subscribe(CHANNEL, {
  onPresence: ({ count }) => showWatching(count),
  onJoin: () => showWatching(watching + 1),
  onLeave: () => showWatching(Math.max(0, watching - 1)),
  onMessage(message) {
    received++;
    arrivals.push(performance.now());
    $("messages").textContent = received;
    applyTick(message.data, Date.now(), true);
    if ($("transport").textContent !== client.transport) showState(client.state);
  },
  onGap(gap) {
    console.warn("missed messages", gap);
  },
});
showState(client.state);

setInterval(() => {
  const now = performance.now();
  while (arrivals.length && arrivals[0] < now - 5000) arrivals.shift();
  const span = Math.min(5000, now - started) / 1000;
  if (span >= 1) $("rate").textContent = (arrivals.length / span).toFixed(1);
}, 1000);

window.tidingsDemo = { client, subscription, watching: () => watching };

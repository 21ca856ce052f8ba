// Run by tests/js/test_package.py in a scratch project that installed the packed tarball:
//   node [--experimental-websocket] node_reader.mjs URL TECHNIQUE CHANNEL COUNT
// Reads CHANNEL from its oldest message with TECHNIQUE only; after COUNT messages it
// publishes one itself and waits for it to arrive too, then prints what it saw as one
// JSON line and closes the client: the process must then end by itself.
import { connect, TidingsError } from "tidings";

const [url, technique, channel, count] = process.argv.slice(2);
const client = connect(url, {
  transports: [technique], attemptTimeout: 3000, pollInterval: 100, longpollWait: 2000,
});
const received = [];
const states = [];
let published = null;
client.on("state", (state) => states.push(state));
client.on("error", (error) => { console.error(String(error)); process.exitCode = 2; });
// The published message may arrive before or after publish() resolves: check on both.
const finishIfDone = () => {
  if (published === null || !received.some((m) => m.id === published)) return;
  console.log(JSON.stringify({ received, published, transport: client.transport, states,
                               isTidingsError: new TidingsError("x") instanceof Error }));
  client.close();
};
client.subscribe(channel, {
  since: "0",
  onMessage: ({ id, data }) => {
    received.push({ id, data });
    if (received.length === Number(count)) {
      client.publish(channel, { from: "node", technique }).then(
        (id) => { published = id; finishIfDone(); },
        (error) => { console.error(String(error)); process.exitCode = 3; client.close(); });
    }
    finishIfDone();
  },
});

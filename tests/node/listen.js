// One EventSource of the npm "eventsource" package (tests/test_npm_eventsource_e2e.py).
// Usage: node listen.js URL TYPE...
// Prints one JSON line per happening: {"open": url} when a stream opens,
// {"type", "data", "lastEventId"} per event of the listed TYPEs, and
// {"error": message, "readyState": n} when the connection fails or ends.
import { EventSource } from "eventsource";

const [url, ...types] = process.argv.slice(2);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const source = new EventSource(url);

source.addEventListener("open", () => print({ open: source.url }));
source.addEventListener("error", (e) =>
  print({ error: e.message ?? null, readyState: source.readyState }),
);
for (const type of types) {
  source.addEventListener(type, (e) =>
    print({ type: e.type, data: e.data, lastEventId: e.lastEventId }),
  );
}
process.on("SIGTERM", () => {
  source.close();
  process.exit(0);
});

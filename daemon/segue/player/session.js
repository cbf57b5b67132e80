// The listener's session as this device sees it: commands go out as POSTs (their answers
// carry the new state at once), and every change made anywhere comes back on the event
// stream. Views can arrive out of order (an answer and an event cross) and twice (a
// command's answer, then its event), so a view replaces the current one only when its stamp
// is newer. Listeners get a "view" event.

import { ServerClock } from "./clock.js";

const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 30000;

// A stamp is "WALL.COUNTER.NODE" (hex, hex, text): compared as numbers, then by node.
function stampKey(stamp) {
  const [wall, counter, ...node] = stamp.split(".");
  return [parseInt(wall, 16), parseInt(counter, 16), node.join(".")];
}

function newer(a, b) {
  const [x, y] = [stampKey(a), stampKey(b)];
  if (x[0] !== y[0]) return x[0] > y[0];
  if (x[1] !== y[1]) return x[1] > y[1];
  return x[2] > y[2];
}

export class Session extends EventTarget {
  constructor(api, device, name) {
    super();
    this.api = api;
    this.device = device;
    this.name = name;
    this.clock = new ServerClock();
    this.view = null;
    this.source = null;
    this.retryMs = RETRY_FIRST_MS;
    this.lastEventId = "";
    this.stopped = false;
  }

  // Join the session (this checks the token too); follow() then keeps the view current.
  async open() {
    const sent = Date.now();
    const view = await this.api.get("/v1/session");
    this.clock.sample(view.server_time_ms, sent, Date.now());
    this.accept(view);
    // A ping echoing the node's time lets the node measure this device's round trip, which
    // it uses to schedule "play here" far enough ahead for this device to hear of it.
    await this.command("ping", { echo_ms: view.server_time_ms });
  }

  async command(type, fields = {}) {
    const sent = Date.now();
    const view = await this.api.post("/v1/session/commands", {
      type, device: this.device, device_name: this.name, device_kind: "web", ...fields,
    });
    this.clock.sample(view.server_time_ms, sent, Date.now());
    this.accept(view);
    return view;
  }

  rename(name) {
    this.name = name;
    return this.command("ping");
  }

  accept(view) {
    if (this.view && !newer(view.stamp, this.view.stamp)) return;
    this.view = view;
    this.dispatchEvent(new CustomEvent("view", { detail: view }));
  }

  // The event stream, opened with a fresh one-minute ticket each time: EventSource would
  // reconnect by itself with the same URL, whose ticket may have expired, so every error
  // closes it and this opens a new one (backing off while the node is away).
  async follow() {
    this.source?.close();
    if (this.stopped) return;
    let ticket;
    try {
      ({ ticket } = await this.api.ticket("/v1/session/ticket"));
    } catch (error) {
      this.dispatchEvent(new CustomEvent("trouble", { detail: error }));
      this.retryLater();
      return;
    }
    const query = new URLSearchParams({ ticket, device: this.device });
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    const source = new EventSource(`/v1/session/events?${query}`);
    this.source = source;
    source.addEventListener("open", () => { this.retryMs = RETRY_FIRST_MS; });
    source.addEventListener("state", (event) => {
      this.lastEventId = event.lastEventId;
      this.accept(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      source.close();
      this.retryLater();
    });
  }

  retryLater() {
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    setTimeout(() => this.follow(), wait);
  }

  stop() {
    this.stopped = true;
    this.source?.close();
    this.source = null;
  }

  // Where the session's track is now, in milliseconds (what a device playing it should be
  // at); null when nothing is loaded.
  positionMs(view = this.view) {
    const playback = view?.playback;
    if (!playback || !playback.track_id) return null;
    const now = this.clock.now();
    if (!playback.playing || now <= playback.at_ms) return playback.position_ms;
    return playback.position_ms + (now - playback.at_ms) * playback.rate;
  }
}

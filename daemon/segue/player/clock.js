// The node's clock as seen from here. Session positions are "position_ms as of at_ms" in the
// node's time, so every device must know that time to within a few milliseconds to play in
// step. Each command's answer is a sample: the node's time was server_time_ms somewhere
// between sending and receiving, so the midpoint is off by at most half the round trip; the
// sample with the shortest round trip of the last minute wins.

const SAMPLE_LIFE_MS = 60000;

export class ServerClock {
  constructor() {
    this.offset = 0;
    this.roundTrip = Infinity;
    this.sampledAt = -Infinity;
  }

  sample(serverMs, sentAt, receivedAt) {
    const roundTrip = receivedAt - sentAt;
    const stale = receivedAt - this.sampledAt > SAMPLE_LIFE_MS;
    if (roundTrip <= this.roundTrip || stale) {
      this.offset = serverMs - (sentAt + receivedAt) / 2;
      this.roundTrip = roundTrip;
      this.sampledAt = receivedAt;
    }
  }

  now() {
    return Date.now() + this.offset;
  }
}

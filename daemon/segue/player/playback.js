// This device's <audio> element, driven by the session: it plays only while this device is
// the active one, at the position the session says (extrapolated on the node's clock), and
// it stops when another device takes over. It never decides on its own: pause, seek and
// skip are commands, and the audio follows the state that comes back, wherever the command
// was made.
//
// "Play here" is scheduled by the node a little ahead (at_ms in the future): the new device
// is primed at the position and starts at that instant, and the old one stops at the same
// instant, so the music moves rather than stops and restarts.
//
// The element loads /v1/tracks/ID?ticket=...: the ticket opens that track alone for a
// quarter of an hour. When it has expired and the element needs a new range (a seek after a
// long pause), the load fails; the element is then given a fresh ticket at the same place.

const DRIFT_MS = 250; // further off than this, and the audio is moved to where it should be
const RECOVER_EVERY_MS = 5000; // a track that fails again sooner is not retried in a loop

export class Playback {
  constructor(audio, session, api, onTrouble) {
    this.audio = audio;
    this.session = session;
    this.api = api;
    this.onTrouble = onTrouble;
    this.track = null; // the track the element has loaded
    this.timer = null; // a start or stop scheduled for a "play here"
    this.loading = null;
    this.recoveredAt = -Infinity;
    this.catchUpDue = false; // a commanded move is landing: catch up with the clock once
    audio.addEventListener("seeked", () => this.catchUp());
    audio.addEventListener("error", () => this.recover());
    audio.addEventListener("ended", () => this.ended());
    session.addEventListener("view", () => this.follow().catch(onTrouble));
  }

  mine(view) {
    return view.active_device === this.session.device;
  }

  async follow() {
    const view = this.session.view;
    clearTimeout(this.timer);
    const playback = view.playback;
    if (!playback || !playback.track_id || !this.mine(view)) {
      this.stopAt(playback);
      return;
    }
    await this.load(playback.track_id);
    if (view !== this.session.view) return; // a newer state came while loading
    const startsIn = playback.at_ms - this.session.clock.now();
    if (!playback.playing) {
      this.audio.pause();
      this.moveTo(playback.position_ms);
    } else if (startsIn > 0) {
      this.audio.pause();
      this.moveTo(playback.position_ms);
      this.timer = setTimeout(() => this.follow().catch(this.onTrouble), startsIn);
    } else {
      this.moveTo(this.session.positionMs(view));
      this.audio.play().catch((error) => this.onTrouble(error));
    }
  }

  // A seek outside what the element has buffered waits for a new range while the session's
  // clock runs on: once a commanded move lands, the element is moved on by the time that
  // took. Once: that second seek lands in data just fetched, so it is quick.
  catchUp() {
    const view = this.session.view;
    if (!this.catchUpDue || !view || !this.mine(view) || !view.playback?.playing) return;
    this.catchUpDue = false;
    this.moveTo(this.session.positionMs(view), false);
  }

  // Not the active device (any more): stop, at the handover instant if one is scheduled.
  stopAt(playback) {
    if (this.audio.paused) return;
    const startsIn = playback ? playback.at_ms - this.session.clock.now() : 0;
    if (playback && playback.playing && startsIn > 0) {
      this.timer = setTimeout(() => this.audio.pause(), startsIn);
    } else {
      this.audio.pause();
    }
  }

  moveTo(positionMs, thenCatchUp = true) {
    if (Math.abs(this.audio.currentTime * 1000 - positionMs) > DRIFT_MS) {
      this.audio.currentTime = positionMs / 1000;
      this.catchUpDue = thenCatchUp;
    }
  }

  async load(track) {
    if (this.track === track) return;
    if (this.loading?.track === track) return this.loading.done;
    const done = this.api.ticket(`/v1/tracks/${track}/ticket`).then(({ ticket }) => {
      this.track = track;
      this.audio.src = `/v1/tracks/${track}?ticket=${encodeURIComponent(ticket)}`;
    });
    this.loading = { track, done };
    try {
      await done;
    } finally {
      this.loading = null;
    }
  }

  // The element failed to load (an expired ticket, the node restarted): a fresh ticket, at
  // the place the session says, if this device should be playing.
  async recover() {
    const view = this.session.view;
    if (!view || !this.mine(view) || !view.playback?.track_id) return;
    if (Date.now() - this.recoveredAt < RECOVER_EVERY_MS) {
      this.onTrouble(new Error("this track cannot be played here now"));
      return;
    }
    this.recoveredAt = Date.now();
    try {
      this.track = null;
      await this.follow();
    } catch (error) {
      this.onTrouble(error);
    }
  }

  // The track ran out here: the active device moves the session on (only it, so that the
  // skip is made once), to the next in the queue or to a pause at the end.
  ended() {
    const view = this.session.view;
    if (!view || !this.mine(view)) return;
    const next = view.queue.length ? "next" : "pause";
    const once = `ended-${view.playback.track_id.slice(0, 16)}-${view.playback.at_ms}`;
    this.session.command(next, { command_id: once })
      .catch((error) => this.onTrouble(error));
  }
}

// What the page knows of tracks: their metadata (from search results, or /meta once), and
// how one is shown in a list.

import { h } from "./dom.js";

export class Tracks {
  constructor(api) {
    this.api = api;
    this.known = new Map(); // track id -> metadata, or the promise of it
  }

  remember(records) {
    for (const record of records) this.known.set(record.track_id, record);
  }

  async meta(track) {
    if (!this.known.has(track)) {
      const pending = this.api.get(`/v1/tracks/${track}/meta`).then(
        (record) => { this.known.set(track, record); return record; },
        (error) => { this.known.delete(track); throw error; });
      this.known.set(track, pending);
    }
    return this.known.get(track);
  }

  // The track's metadata if it has come, else a record with its id alone.
  record(track) {
    const meta = this.known.get(track);
    return meta && !(meta instanceof Promise) ? meta : { track_id: track };
  }

  // The title of a track as the lists and buttons name it; the id until the metadata comes.
  label(track) {
    return this.record(track).title || track;
  }

  describe(record) {
    return h("span", { class: "what" }, record.title || record.track_id,
      record.artist ? h("span", { class: "artist" }, record.artist) : null);
  }
}

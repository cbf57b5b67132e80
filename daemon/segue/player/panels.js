// The session's panels: now playing (with the controls' state), the queue and the devices,
// redrawn from each view. Every button says in its accessible name what it acts on ("Remove
// Café del Mar from the queue"), so a screen reader's list of buttons makes sense alone.

import { byId, clockTime, h } from "./dom.js";

export class Panels {
  constructor(session, tracks, act) {
    this.session = session;
    this.tracks = tracks;
    this.act = act; // (type, fields) -> sends a command, reporting failures
    this.seeking = false; // the listener is dragging the position slider
    const position = byId("position");
    position.addEventListener("pointerdown", () => { this.seeking = true; });
    position.addEventListener("pointerup", () => { this.seeking = false; });
    position.addEventListener("input", () => this.showTime(position.value * 1000));
    position.addEventListener("change", () => {
      this.act("seek", { position_ms: Math.round(position.value * 1000) });
    });
    byId("play-pause").addEventListener("click", () => {
      const playback = this.session.view?.playback;
      if (!playback?.track_id) return;
      this.act(playback.playing ? "pause" : "resume");
    });
    byId("previous").addEventListener("click", () => this.act("previous"));
    byId("next").addEventListener("click", () => this.act("next"));
    byId("play-here").addEventListener("click", () => {
      this.act("transfer", { to: this.session.device });
    });
    setInterval(() => this.tick(), 250);
  }

  async draw(view) {
    const tracks = [view.playback?.track_id, ...view.queue.map((item) => item.track_id)];
    // A track whose metadata cannot be read is shown by its id.
    await Promise.all(tracks.filter(Boolean).map((track) => this.tracks.meta(track)
      .catch(() => null)));
    if (view !== this.session.view) return; // a newer view is being drawn
    this.drawNow(view);
    this.drawQueue(view);
    this.drawDevices(view);
  }

  drawNow(view) {
    const playback = view.playback;
    const track = playback?.track_id;
    const meta = track ? this.tracks.record(track) : null;
    byId("now-track").textContent = track
      ? [meta?.title || track, meta?.artist].filter(Boolean).join(" · ")
      : "Nothing is playing";
    const active = view.devices.find((d) => d.device_id === view.active_device);
    const here = view.active_device === this.session.device;
    byId("now-where").textContent = !track ? "" : !active ? "Not playing on any device"
      : `${playback.playing ? "Playing" : "Paused"} on ${here ? "this device" : active.name}`;
    const button = byId("play-pause");
    button.disabled = !track;
    button.textContent = playback?.playing ? "Pause" : "Play";
    const position = byId("position");
    position.disabled = !track;
    position.max = String(Math.max(1, Math.floor(meta?.duration_s || 0)));
    byId("play-here").hidden = !track || here;
    this.tick();
  }

  tick() {
    const ms = this.session.positionMs();
    if (ms === null || this.seeking) return;
    const position = byId("position");
    if (document.activeElement !== position) position.value = String(Math.floor(ms / 1000));
    this.showTime(ms);
  }

  showTime(ms) {
    const total = Number(byId("position").max) * 1000;
    const text = `${clockTime(Math.min(ms, total))} / ${clockTime(total)}`;
    byId("time").value = text;
    byId("position").setAttribute("aria-valuetext", text.replace(" / ", " of "));
  }

  drawQueue(view) {
    const items = view.queue;
    byId("queue-empty").hidden = items.length > 0;
    keepingFocus(byId("queue"), (list) => list.replaceChildren(...items.map((item, index) => {
      const title = this.tracks.label(item.track_id);
      const before = index >= 2 ? items[index - 2].item : null;
      return h("li", {},
        this.tracks.describe(this.tracks.record(item.track_id)),
        h("span", { class: "actions" },
          h("button", {
            type: "button", class: "quiet", "aria-label": `Move ${title} up`,
            disabled: index === 0 ? "" : false,
            onclick: () => this.act("queue_move", { item: item.item, after: before }),
          }, "Up"),
          h("button", {
            type: "button", class: "quiet", "aria-label": `Move ${title} down`,
            disabled: index === items.length - 1 ? "" : false,
            onclick: () => this.act("queue_move", {
              item: item.item, after: items[index + 1]?.item }),
          }, "Down"),
          h("button", {
            type: "button", class: "quiet", "aria-label": `Remove ${title} from the queue`,
            onclick: () => this.act("queue_remove", { item: item.item }),
          }, "Remove")));
    })));
  }

  drawDevices(view) {
    byId("devices").replaceChildren(...view.devices.map((device) => {
      const active = device.device_id === view.active_device;
      const me = device.device_id === this.session.device;
      return h("li", { class: active ? "active" : false, "aria-current": active ? "true" : false },
        device.name || device.device_id,
        me ? " (this device)" : null,
        active ? " · active" : null);
    }));
  }
}

// Redraw `container` without losing the keyboard's place: focus goes back to the button with
// the same name (an item moved up is still under the focus), or to the list's first button
// (its item was removed), or to the section when none is left.
function keepingFocus(container, redraw) {
  const focused = container.contains(document.activeElement) ? document.activeElement : null;
  const name = focused?.getAttribute("aria-label");
  redraw(container);
  if (!focused) return;
  const same = [...container.querySelectorAll("button")].find(
    (button) => button.getAttribute("aria-label") === name && !button.disabled);
  const fallback = container.querySelector("button:not([disabled])") ||
    container.closest("section").querySelector("h2");
  (same || fallback).focus();
}

// The Segue web player: sign in with a player token, search as you type, play through an
// <audio> element, edit the queue, and follow the session across the listener's devices.
// Plain ES modules, served by the node itself: nothing to build, nothing fetched from
// elsewhere (the page's Content-Security-Policy allows this origin only).

import { Api, ApiError } from "./api.js";
import { byId, h } from "./dom.js";
import { Panels } from "./panels.js";
import { Playback } from "./playback.js";
import { Session } from "./session.js";
import * as storage from "./storage.js";
import { Tracks } from "./tracks.js";

const SEARCH_DELAY_MS = 150;
const SEARCH_LIMIT = 25;

const NOTICE = "segue.notice"; // what to tell the listener after the page starts afresh

function say(text) {
  byId("status").textContent = text;
}

// Signing out (or a token the node stops accepting) starts the page afresh, so nothing of
// the old sign-in (its event stream, its timers) lives on.
function signOut(message) {
  storage.forgetToken();
  sessionStorage.setItem(NOTICE, message);
  window.location.reload();
}

function trouble(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut(`The node refused the token (${error.message}): sign in again.`);
  } else if (error instanceof ApiError) {
    say(`The node said: ${error.message}`);
  } else {
    say(`Trouble: ${error.message}`);
  }
}

function showSignIn(message) {
  byId("sign-in").hidden = false;
  byId("sign-in-error").textContent = message;
  byId("token").focus();
}

async function signIn(token) {
  const api = new Api(token);
  const session = new Session(api, storage.deviceId(), storage.deviceName());
  await session.open(); // the token is good, or this throws before anything is wired
  storage.keepToken(token);
  const tracks = new Tracks(api);
  // A command from a button: the new view, or undefined once its failure has been told.
  const act = (type, fields) => session.command(type, fields).catch(trouble);
  const panels = new Panels(session, tracks, act);
  const playback = new Playback(byId("audio"), session, api, trouble);
  session.addEventListener("view", (event) => panels.draw(event.detail).catch(trouble));
  session.addEventListener("trouble", (event) => trouble(event.detail));
  session.follow();
  panels.draw(session.view).catch(trouble);
  playback.follow().catch(trouble);
  byId("sign-in").hidden = true;
  byId("player").hidden = false;
  byId("sign-out").hidden = false;
  const user = storage.tokenUser(token);
  byId("who").textContent = user ? `Signed in as ${user}` : "Signed in";
  byId("device-name").value = session.name;
  byId("device-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = byId("device-name").value.trim();
    if (!name) return;
    storage.keepDeviceName(name);
    session.rename(name).then(() => say(`This device is now called ${name}.`), trouble);
  });
  wireSearch(api, tracks, act);
  say("Ready.");
  byId("search").focus();
}

function wireSearch(api, tracks, act) {
  const input = byId("search");
  let timer = null;
  let inFlight = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      inFlight?.abort();
      const query = input.value.trim();
      if (!query) {
        byId("results").replaceChildren();
        byId("results-note").textContent = "";
        return;
      }
      inFlight = new AbortController();
      try {
        const params = new URLSearchParams({ q: query, limit: String(SEARCH_LIMIT) });
        const { results } = await api.get(`/v1/search?${params}`, inFlight.signal);
        tracks.remember(results);
        showResults(results, tracks, act);
      } catch (error) {
        if (error.name !== "AbortError") trouble(error);
      }
    }, SEARCH_DELAY_MS);
  });
}

function showResults(results, tracks, act) {
  byId("results-note").textContent = results.length
    ? `${results.length} track${results.length === 1 ? "" : "s"} found`
    : "No track matches.";
  byId("results").replaceChildren(...results.map((record) => {
    const title = record.title || record.track_id;
    return h("li", {},
      tracks.describe(record),
      h("span", { class: "actions" },
        h("button", {
          type: "button", "aria-label": `Play ${title}`,
          onclick: () => act("play", { track: record.track_id, position_ms: 0 })
            .then((view) => view && say(`Playing ${title}.`)),
        }, "Play"),
        h("button", {
          type: "button", class: "quiet", "aria-label": `Add ${title} to the queue`,
          onclick: () => act("queue_add", { track: record.track_id })
            .then((view) => view && say(`${title} added to the queue.`)),
        }, "Queue")));
  }));
}

function start() {
  storage.takeTokenFromLink();
  const notice = sessionStorage.getItem(NOTICE) || "";
  sessionStorage.removeItem(NOTICE);
  byId("sign-out").addEventListener("click", () => signOut("Signed out."));
  byId("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = byId("token").value.trim();
    byId("sign-in-error").textContent = token ? "" : "Paste a player token first.";
    if (!token) return;
    try {
      await signIn(token);
      byId("token").value = "";
    } catch (error) {
      byId("sign-in-error").textContent = error instanceof ApiError
        ? `The node refused this token: ${error.message}`
        : `Cannot reach the node: ${error.message}`;
    }
  });
  const kept = storage.token();
  if (!kept) {
    showSignIn(notice);
    return;
  }
  signIn(kept).catch((error) => {
    if (error instanceof ApiError) storage.forgetToken();
    showSignIn(`Sign in again: ${error.message}`);
  });
}

start();

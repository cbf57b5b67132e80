// What the player keeps in this browser. The token lives in localStorage, so a reload stays
// signed in; it is never put in a URL, and it reaches the node only in Authorization headers.
// A link may carry it once as #token=... (a fragment is never sent to the server, so it is in
// no log); the page takes it and removes it from the address bar and the history at once.
// The device id lives in sessionStorage: every tab is a device of its own, and a reload of
// the tab is still the same device.

const TOKEN = "segue.token";
const DEVICE = "segue.device";
const NAME = "segue.device-name";

export function takeTokenFromLink() {
  const match = /^#token=([^&]+)/.exec(window.location.hash);
  if (!match) return;
  localStorage.setItem(TOKEN, decodeURIComponent(match[1]));
  history.replaceState(null, "", window.location.pathname + window.location.search);
}

export function token() {
  return localStorage.getItem(TOKEN);
}

export function keepToken(value) {
  localStorage.setItem(TOKEN, value);
}

export function forgetToken() {
  localStorage.removeItem(TOKEN);
}

export function deviceId() {
  let id = sessionStorage.getItem(DEVICE);
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem(DEVICE, id);
  }
  return id;
}

export function deviceName() {
  return localStorage.getItem(NAME) || `Web player ${deviceId().slice(-4)}`;
}

export function keepDeviceName(name) {
  localStorage.setItem(NAME, name);
}

// Who the token says the listener is, for the header only: the node checks the signature,
// this page merely reads the claim to greet the listener.
export function tokenUser(value) {
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub || "";
  } catch {
    return "";
  }
}

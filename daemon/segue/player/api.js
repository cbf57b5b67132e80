// Requests to the node. The token goes in the Authorization header of every fetch; where the
// browser cannot set a header (the <audio> element, EventSource) the page trades it for a
// short-lived ticket that opens that one thing (see ticket()). Answers other than 2xx become
// an ApiError carrying the node's own detail, which names what was wrong.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

const TIMEOUT_MS = 10000;

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, { body, signal } = {}) {
    const timeout = AbortSignal.timeout(TIMEOUT_MS);
    const response = await fetch(path, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      cache: "no-store",
    });
    const doc = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new ApiError(response.status, doc.detail || `the node answered ${response.status}`);
    }
    return doc;
  }

  get(path, signal) {
    return this.request("GET", path, { signal });
  }

  post(path, body) {
    return this.request("POST", path, { body });
  }

  // A ticket for `path` (a track's, or the event stream's): what goes in a URL instead of
  // the token, so that proxies and load balancers that log URLs never see the token.
  async ticket(path) {
    const doc = await this.post(path);
    return { ticket: doc.ticket, expires: Date.now() + doc.expires_in_s * 1000 };
  }
}

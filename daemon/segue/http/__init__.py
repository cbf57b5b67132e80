"""HTTP/1.1 serving: wire framing, ranges, requests and responses, routes, the connection loop."""

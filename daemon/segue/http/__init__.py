"""HTTP/1.1 serving over h11: ranges, requests and responses, routes, the connection loop."""

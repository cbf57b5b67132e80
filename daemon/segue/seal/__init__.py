"""The seal: chunk encryption, content-key wrapping, signed manifests, player tokens and the
short-lived tickets that stand in for them in URLs.

Everything here is pure computation over bytes and keys; no module in this package does I/O
except key loading (`segue.seal.keys`, and the ticket key in `segue.seal.tickets`).
docs/format.md specifies the formats byte by byte.
"""

"""The seal: chunk encryption, content-key wrapping, signed manifests and player tokens.

Everything here is pure computation over bytes and keys; no module in this package does I/O
except key loading in `segue.seal.keys`. docs/format.md specifies the formats byte by byte.
"""

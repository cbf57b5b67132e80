"""Chunk stores: where sealed chunks and manifests live (local paths / CIFS mounts)."""

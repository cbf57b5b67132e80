"""Segue: an edge-node daemon that serves encrypted music tracks to players."""

__version__ = "0.1.0"

"""Playback sessions: a listener's devices kept in step (play, pause, seek, skip, queue).

    hlc.py       hybrid logical clock stamps: who changed what, in which order
    state.py     the per-user state as a join-semilattice, and its merge (pure)
    commands.py  player commands: parsed strictly, turned into deltas of the state (pure)
    service.py   the node's sessions: commands in, deltas out to subscribers and transports,
                 device expiry, persistence (sessions/store.py)
    ipc.py       a worker process's sessions, through its main process

Everything that decides what a session *is* (stamps, merge, commands) is pure and tested with
hypothesis; the service around it is thin.
"""

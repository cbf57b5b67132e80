"""THE plugin API: every hook a Segue plugin may implement.

Plugins are registered through the ``segue.plugins`` entry-point group; the entry point's name
is the plugin's name and selects its ``[plugins.NAME]`` configuration table. Implement a hook by
decorating a function of the same name with ``segue.hookimpl``; a hook implementation may accept
any subset of the arguments listed in its specification.

Async hooks: pluggy calls hooks synchronously, so a hook that needs to wait returns an
awaitable (define it with ``async def``). The host awaits it inside its own nursery, under the
timeout ``[plugin_host] hook_timeout_s`` unless the hook says otherwise. Blocking I/O belongs in
``trio.to_thread.run_sync``; a hook that blocks the event loop stops every player.

Each hook is called once per plugin, and every hook states what happens when it raises.
The order over a node's life::

    segue_configure -> segue_metrics -> segue_startup -> segue_routes -> (listening)
    -> segue_ready -> segue_services -> segue_health (every health_interval_s)
    -> segue_reload (each SIGHUP) -> segue_drain (SIGTERM) -> segue_stop

``segue_session_changed`` is called after every session change accepted on the node, and
``segue_track_served`` after every track stream (off the stream's path, from a queue).

Three hooks serve commands rather than the running node: ``segue_catalogue_init`` (``segue
catalogue init``), ``segue_track_packed`` (``segue pack``) and ``segue_track_removed``
(``segue tracks remove``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pluggy
from prometheus_client import CollectorRegistry

from segue.api import Health, NodeView, Route, TrackRecord

PROJECT = "segue"
#: The version of this plugin API. Hooks say in which version they appeared.
PLUGIN_API_VERSION = 5

hookspec = pluggy.HookspecMarker(PROJECT)
#: The marker plugins use: ``@segue.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- configuration -----------------------------------------------------------------------------


@hookspec
def segue_configure(config: Mapping[str, Any], config_path: Path) -> None:
    """Validate and take this plugin's configuration.

    Called: when the plugin is loaded (``segue run``, ``segue check-config``,
    ``segue plugins``) and again on every SIGHUP reload, before anything else of the plugin.

    :param config: the ``[plugins.NAME]`` table (empty if the file has none).
    :param config_path: the configuration file; resolve relative paths against its folder.

    Return: nothing. Keep the validated settings for the other hooks.

    Raises: ``segue.PluginConfigError`` with one message per problem, naming the key and the
    fix. At start-up that stops the node with exit status 2 (unless the plugin is listed in
    ``[plugin_host] optional``, which disables it); on reload the new configuration is refused
    as a whole and the old one keeps serving.

    Sync only. Since API version 1.
    """


@hookspec
def segue_metrics(registry: CollectorRegistry) -> None:
    """Register the plugin's Prometheus collectors.

    Called: once at start-up, after ``segue_configure``, for a plugin whose ``[plugins.NAME]``
    table the configuration has (since API version 4: an inactive plugin's gauges would read
    0, a "down" on every node that does not use it).

    :param registry: the node's registry, served at ``/metrics``. Name metrics ``segue_NAME_*``.

    Return: nothing. Raises: logged with the plugin's name; the node goes on without them.

    Sync only. Since API version 1.
    """


# --- lifecycle ---------------------------------------------------------------------------------


@hookspec
def segue_startup(node: NodeView) -> Awaitable[None] | None:
    """Prepare the plugin before the node listens (open connections, load state).

    Called: once, after configuration, before the listening socket is bound.

    Raises: start-up stops and the node exits with status 1, naming the plugin, unless the
    plugin is ``optional`` (then it is disabled and the node goes on). A plugin whose outside
    service may be down (a load balancer, a database) should not raise here: report
    ``degraded`` through ``segue_health`` and retry in a service instead.

    May be async (awaited under hook_timeout_s). Since API version 1.
    """


@hookspec
def segue_routes(node: NodeView) -> Iterable[Route] | None:
    """Add HTTP routes.

    Called: once, after ``segue_startup``, before the node listens.

    Return: ``segue.Route`` objects. Paths under ``/v1/``, ``/healthz`` and ``/metrics`` are
    refused (start-up stops with exit status 2, naming the plugin). Handlers receive a
    ``segue.Request`` and return a ``segue.Response``; they are not behind player tokens.
    A handler that raises gets a 500 for that request only.

    Sync only (the handlers themselves are async). Since API version 1.
    """


@hookspec
def segue_ready(node: NodeView) -> Awaitable[None] | None:
    """The node is listening; it will report READY=1 to systemd once every plugin returned.

    Called: once, after the listener is bound and before READY=1. A load-balancer plugin enables
    the node here.

    Raises: logged with the plugin's name; the node goes on serving.

    May be async (awaited under hook_timeout_s). Since API version 1.
    """


@hookspec
def segue_services(node: NodeView) -> Iterable[Callable[[], Awaitable[None]]] | None:
    """Long-running tasks to start in the node's service nursery.

    Called: once, after ``segue_ready``.

    Return: async functions taking no arguments. Each runs until it returns or the node stops
    (it is cancelled after ``segue_stop``). Use deadlines on every outside wait.

    Raises (the hook, or later a service): logged with the plugin's name, and the plugin's health
    becomes ``degraded``; the node goes on serving.

    Since API version 1.
    """


@hookspec
def segue_health(node: NodeView) -> Health | Awaitable[Health] | None:
    """Report the plugin's health.

    Called: every ``[plugin_host] health_interval_s`` seconds. The results feed ``/healthz``
    (``failing`` makes it 503), ``/v1/status``, ``/metrics`` and systemd's STATUS= line.
    Anyone may read ``/healthz`` and ``/v1/status``, so they say only "plugin NAME degraded";
    the reason returned here goes to the log ("health" events) and STATUS= only.

    Return: a ``segue.Health``; None means ok.

    Raises or times out: the plugin is reported ``degraded`` with that reason; the node goes on.

    May be async (awaited under hook_timeout_s). Since API version 1.
    """


@hookspec
def segue_status() -> Mapping[str, Any] | None:
    """Public facts about the plugin for ``/v1/status`` (``plugins[].status``).

    Called: on every ``/v1/status`` request and by ``segue plugins``, in the main process.
    Anyone may read ``/v1/status``: return counts and states (members by status, queue
    lengths), never names, addresses, users or secrets.

    Return: a small mapping of JSON values, or None (no ``status`` key).

    Raises: the status is left out and the error logged with the plugin's name.

    Sync only, and cheap (no I/O): return what the plugin already knows. Since API version 3.
    """


@hookspec
def segue_reload(node: NodeView) -> Awaitable[None] | None:
    """The configuration was reloaded (SIGHUP) and the new one is in force.

    Called: after every plugin accepted its new table in ``segue_configure``.

    Raises: logged with the plugin's name; the node goes on with the new configuration.

    May be async (awaited under hook_timeout_s). Since API version 1.
    """


@hookspec
def segue_drain(node: NodeView, deadline_s: float) -> Awaitable[None] | None:
    """The node is draining (SIGTERM): stop sending it new players.

    Called: once, right after ``/healthz`` starts answering 503 ``draining``, concurrently for
    all plugins. In-flight streams keep going meanwhile.

    :param deadline_s: seconds left before the node stops regardless; the hook may wait (for a
        load balancer's connection count to reach zero, say) up to that long.

    Raises: logged with the plugin's name; draining goes on.

    May be async (awaited up to ``deadline_s``). Since API version 1.
    """


@hookspec
def segue_stop(node: NodeView) -> Awaitable[None] | None:
    """The node is stopping: no streams are in flight (or the drain deadline passed).

    Called: once, after STOPPING=1 and before the plugin's services are cancelled. Release what
    ``segue_startup`` took.

    Raises: logged with the plugin's name; stopping goes on.

    May be async (awaited under hook_timeout_s). Since API version 1.
    """


# --- playback sessions between nodes ------------------------------------------------------------


@hookspec
def segue_session_changed(node: NodeView, user: str, delta: Mapping[str, Any]) -> None:
    """A listener's session changed on this node: carry the change to the other nodes.

    Called: after every change accepted on this node (a player's command, a device of this
    node leaving), in the node's main process; not for changes merged from elsewhere with
    ``node.sessions.apply_remote``, so a transport never echoes what it delivered.

    :param user: the listener (the player token's ``sub``).
    :param delta: the change as a partial session state in its JSON form, every part stamped
        with a hybrid logical clock. Deliver it to the other nodes' ``node.sessions.
        apply_remote(user, delta)``; duplicates, reordering and late arrival are harmless
        (the merge is commutative, associative and idempotent), and a whole state from
        ``node.sessions.export(user)`` merges the same way (anti-entropy: compare
        ``node.sessions.digests()``).

    Return: nothing. Must not block or wait: hand the delta to a service of the plugin through
    a bounded channel (and count what a full channel drops; anti-entropy repairs it).

    Raises: logged with the plugin's name; the change stands.

    Sync only. Since API version 2.
    """


@hookspec
def segue_session_presence(node: NodeView, user: str, present: bool) -> None:
    """A listener's first device (or event stream) arrived on this node, or their last left.

    Called: in the node's main process, when ``user`` enters (``present`` True) or leaves
    (False) ``node.sessions.local_listeners()``: a device's first command or event stream
    here, and its expiry ``[sessions] device_timeout_s`` after its last. A transport that
    follows only the listeners of this node (a message bus with a subject per listener)
    subscribes and unsubscribes here; one that carries every change everywhere ignores it.

    :param user: the listener (the player token's ``sub``).
    :param present: True when they now have a device here, False when the last one left.

    Return: nothing. Must not block or wait: hand the change to a service of the plugin.

    Raises: logged with the plugin's name; nothing else changes.

    Sync only. Since API version 3.
    """


# --- plays -------------------------------------------------------------------------------------


@hookspec
def segue_track_served(track_id: str, user_hash: str, bytes_sent: int,
                       outcome: str) -> Awaitable[None] | None:
    """A track's stream ended: report the play (to a royalties or statistics service, say).

    Called: in the node's main process after each body of ``GET /v1/tracks/{id}`` ends,
    whichever process served it (``[http] workers`` forward theirs); not for HEAD, errors
    answered without a body (401, 403, 404, 416, 503) or empty ranges. Each plugin has its own
    queue (4,096 events) and its own task: the stream never waits for a plugin, an event that
    finds the queue full is dropped and counted
    (``segue_plugin_events_dropped_total{hook="segue_track_served",plugin=NAME}``), and a slow
    plugin delays only itself.

    :param track_id: the track.
    :param user_hash: the listener as 32 hex digits of a keyed hash (HMAC-SHA256) of the
        token's ``sub``, never the user id: the same on every node whose ``[log]
        user_hash_salt_file`` is the same file, so plays count per listener across the fleet,
        and (with a salt) nobody who receives the reports can find a user by hashing guessed
        ids.
    :param bytes_sent: body bytes handed to the player's connection, a write (at most a chunk)
        at a time: the write a leaving player cut short is not counted.
    :param outcome: ``"complete"`` (the whole track was sent), ``"partial"`` (a range, less than
        the whole track, was sent to its end: a seek, or a player fetching in pieces),
        ``"aborted"`` (the player went away or stopped reading, or the node stopped) or
        ``"error"`` (the node could not go on: no copy of a chunk could be read or verified).

    Return: nothing. Raises or times out: counted
    (``segue_plugin_hook_failures_total{hook,plugin}``) and logged with the plugin's name, at
    most once a minute; the next event is delivered as usual.

    May be async (awaited under hook_timeout_s, while the plugin's next events wait in its
    queue). Since API version 4.
    """


# --- the central catalogue (commands, not the running node) -----------------------------------


@hookspec
def segue_catalogue_init() -> list[str] | None:
    """Create the central catalogue's schema where the plugin keeps it.

    Called: by ``segue catalogue init --config CONF``, after ``segue_configure``; no node runs.

    Return: lines to print (what was created where), or None.

    Raises: the command prints one line naming the plugin and exits 1.

    Sync only (block as you need: this is a command). Since API version 1.
    """


@hookspec
def segue_track_packed(track: TrackRecord, manifest_version: int) -> None:
    """A track was packed into the configured stores: publish it to the central catalogue.

    Called: by ``segue pack`` after each track it sealed; with the plugin's table configured,
    also by a later ``segue pack`` of a track whose publishing failed and by ``segue catalogue
    publish``. It may come more than once for a version: make it an upsert.

    :param track: the catalogue record (id, title, artist, album, duration, MIME type, sizes).
    :param manifest_version: the version of the manifest just written.

    Raises: ``segue pack`` prints one line naming the plugin and the track, goes on with the
    other files, and exits 1; the track stays packed locally.

    Sync only. Since API version 1.
    """


@hookspec
def segue_track_removed(track_id: str) -> None:
    """A track is being removed: take it out of the central catalogue.

    Called: by ``segue tracks remove`` first, before the track leaves the local catalogue and
    the stores, so that no catalogue keeps offering a track whose files are gone. Called again
    when the command is run again: a track that is not there is no error.

    :param track_id: the id of the track being removed.

    Raises: the command prints one line naming the plugin, removes nothing, and exits 1.

    Sync only. Since API version 3.
    """

"""Composition root: one ``Config`` → the aiohttp app with both planes wired together.

``signaling/`` and ``sfu/`` do not know each other; this module adapts the SFU's
``Router`` to ``signaling.media.MediaRouter`` and its events to ``MediaSignal``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from server.config import Config
from server.metrics import MediaStatsCollector
from server.proxies import TrustedProxies
from signaling.api import PEER_ORIGINS, ApiSettings, RestApi
from signaling.cluster import Cluster, ClusterManager
from signaling.cluster_api import ClusterApi
from signaling.errors import error_middleware
from signaling.invites import InviteApi
from signaling.mailer import InviteMailer, SmtpSettings
from signaling.media import MediaRouter, MediaSignal, RouterFactory, SignalKind
from signaling.metrics import Metrics
from signaling.partners import PartnerApi
from signaling.rooms import RoomHub
from signaling.routing import NodeInfo, NodeLoad, Router, create_router
from signaling.socket import (
    UNAUTHENTICATED_PER_ADDRESS,
    SignalingSocket,
    SocketLimits,
    SocketNotifier,
    make_server,
    peer_origins,
)
from signaling.sqlite_store import FILE_NAME as STATE_FILE
from signaling.sqlite_store import SqliteStore
from signaling.store import StateStore
from signaling.tokens import TokenService
from signaling.turn import IceServers, TurnSettings
from signaling.webhook import Delivery, InviteWebhook, WebhookSettings, derive_secret

log = logging.getLogger(__name__)

CONFIG = web.AppKey("roundtable.config", Config)
STORE = web.AppKey("roundtable.store", StateStore)
TOKENS = web.AppKey("roundtable.tokens", TokenService)
HUB = web.AppKey("roundtable.hub", RoomHub)
METRICS = web.AppKey("roundtable.metrics", Metrics)
SOCKET = web.AppKey("roundtable.socket", SignalingSocket)
ROUTING = web.AppKey("roundtable.routing", Router)

# Room for the Socket.IO long-polling transport carrying a 64 KiB SDP; the REST API
# enforces its own, smaller limit per route.
CLIENT_MAX_SIZE = 512 * 1024


def sfu_router_factory(config: Config, metrics: Metrics, media_ports: Any = None) -> RouterFactory:
    """Routers from ``sfu.router``, their events translated for the control plane."""
    # Imported here: the control plane's tests can run with a fake media plane.
    from sfu import aiortc_hooks
    from sfu import router as sfu_router

    aiortc_hooks.check_compatible()
    # aioice gathers host candidates process-wide; restrict them to the media address.
    aiortc_hooks.use_media_host(config.media_host)
    media_config = sfu_router.MediaConfig(media_host=config.media_host, ports=media_ports)
    collector = MediaStatsCollector()
    metrics.register(collector)

    def translate(event: Any, emit: Callable[[MediaSignal], None]) -> None:
        if isinstance(event, sfu_router.RenegotiationNeeded):
            emit(MediaSignal(SignalKind.RENEGOTIATION_NEEDED, event.pid))
        elif isinstance(event, sfu_router.TracksChanged):
            emit(MediaSignal(SignalKind.TRACKS_CHANGED, event.pid))
        elif isinstance(event, sfu_router.ConnectionState):
            emit(MediaSignal(SignalKind.CONNECTION_STATE, event.pid, event.leg, str(event.state)))
        elif isinstance(event, sfu_router.VideoPaused):
            emit(
                MediaSignal(
                    SignalKind.VIDEO_PAUSED,
                    event.pid,
                    publisher=event.publisher,
                    paused=event.paused,
                )
            )
        elif isinstance(event, sfu_router.PublishRestartNeeded):
            emit(MediaSignal(SignalKind.PUBLISH_RESTART, event.pid, leg="publish"))
        elif isinstance(event, sfu_router.LayersWanted):
            emit(MediaSignal(SignalKind.LAYERS, event.pid, layers=(event.mid, event.rids)))

    def factory(room_id: str, emit: Callable[[MediaSignal], None]) -> MediaRouter:
        router = sfu_router.Router(room_id, media_config, on_event=lambda ev: translate(ev, emit))
        collector.track(router)
        return router

    return factory


def media_ports(config: Config) -> Any:
    """``sfu.ports.MediaPorts`` from the config: a range if one is set, else the one
    shared port (``media_port``, the default), else ephemeral ports (``media_port=0``)."""
    from sfu.ports import MediaPorts
    from sfu.udpmux import UdpMux

    mux = None
    if config.media_ports is None and config.media_port:
        mux = UdpMux(config.media_port, coalesce=config.read_coalesce_ms / 1000)
    return MediaPorts(mux=mux, port_range=config.media_ports, announced_ip=config.announced_ip)


def default_store(config: Config) -> StateStore:
    """Embedded default: a SQLite file in the state directory, so a restart (even after
    ``kill -9``) forgets no revocation, ended session or spent invite. With ``REDIS_URL``:
    rooms, revocations and used invites are shared by every node on the same Redis.
    ``roundtable partners`` opens the same store as ``serve``, through this."""
    if config.redis_url:
        from signaling.redis_store import RedisStore

        return RedisStore(config.redis_url)
    return SqliteStore(config.state_dir / STATE_FILE)


def node_info(config: Config) -> NodeInfo:
    """This node as the cluster sees it: its id and the URL browsers reach it at."""
    url = config.public_url
    if url is None and config.port:
        scheme = "https" if config.tls_cert else "http"
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        url = f"{scheme}://{host}:{config.port}"
    node_id = config.node_id or f"{socket.gethostname()}-{config.port}"
    return NodeInfo(node_id, url.rstrip("/") if url else None)


def _load_probe(hub: RoomHub, metrics: Metrics) -> Callable[[], NodeLoad]:
    """Load for the heartbeat: rooms and participants, packets forwarded per second and
    the share of a core this process used, both since the previous heartbeat."""
    last: dict[str, float] = {}

    def probe() -> NodeLoad:
        rooms, by_state = hub.snapshot()
        now, cpu = time.monotonic(), time.process_time()
        packets = metrics.registry.get_sample_value("roundtable_forwarded_packets_total") or 0.0
        if not last:  # the first heartbeat: start-up work is not load
            last.update(at=now, cpu=cpu, packets=packets)
        elapsed = max(1e-3, now - last["at"])
        load = NodeLoad(
            rooms=rooms,
            participants=sum(by_state.values()),
            packets_per_second=max(0.0, packets - last["packets"]) / elapsed,
            cpu=(cpu - last["cpu"]) / elapsed,
        )
        last.update(at=now, cpu=cpu, packets=packets)
        return load

    return probe


def _invite_webhook(config: Config, cluster: Cluster) -> InviteWebhook | None:
    if not config.invite_webhook:
        return None

    async def report(room: str, invite_id: str, delivery: Delivery) -> None:
        # The invite may have been made on a node other than the room's.
        await cluster.notify_moderators(
            room,
            "invite.delivery",
            {
                "id": invite_id,
                "status": delivery.status,
                "attempts": delivery.attempts,
                "message": delivery.message,
            },
        )

    settings = WebhookSettings(
        url=config.invite_webhook,
        secret=config.invite_webhook_secret or derive_secret(config.secret),
        attempts=config.webhook_attempts,
        backoff_seconds=config.webhook_backoff_seconds,
        timeout_seconds=config.webhook_timeout_seconds,
    )
    return InviteWebhook(settings, report)


def build_app(
    config: Config,
    *,
    router_factory: RouterFactory | None = None,
    store: StateStore | None = None,
) -> web.Application:
    if not config.secret or not config.api_key:
        raise ValueError("config.secret and config.api_key must be set")
    middlewares: list[Any] = [error_middleware]
    if config.trusted_proxies:
        # Outermost: everything after it (errors, the API, Socket.IO) sees the client.
        middlewares.insert(0, TrustedProxies(config.trusted_proxies).middleware)
    app = web.Application(middlewares=middlewares, client_max_size=CLIENT_MAX_SIZE)
    store = store or default_store(config)
    metrics = Metrics()
    tokens = TokenService(config.secret, store)
    ports = None
    if router_factory is None:
        ports = media_ports(config)
        router_factory = sfu_router_factory(config, metrics, ports)
    factory = router_factory
    limits = SocketLimits(
        events_per_second=config.events_per_second,
        event_burst=config.events_per_second,
        joins_per_ip_per_minute=config.joins_per_ip_per_minute,
        # An address allowed more joins a minute (an office behind one NAT, the bench)
        # may also have as many handshakes under way at once.
        unauthenticated_per_address=max(
            UNAUTHENTICATED_PER_ADDRESS, config.joins_per_ip_per_minute
        ),
    )
    routing = create_router(node_info(config), config.redis_url)
    manager = ClusterManager(config.redis_url) if config.redis_url else None
    cluster = Cluster(manager)
    origins = peer_origins(routing, config.cluster_url)
    notifier = SocketNotifier(make_server(limits, metrics, client_manager=manager, origins=origins))
    hub = RoomHub(
        store,
        factory,
        notifier,
        max_participants=config.max_participants,
        host_grace_seconds=config.host_grace_seconds,
        reconnect_grace_seconds=config.reconnect_grace_seconds,
        end_warning_seconds=config.end_warning_seconds,
        max_extend_seconds=config.room_minutes * 60,
        ice_servers=IceServers(
            TurnSettings(
                urls=config.turn_urls,
                secret=config.turn_secret,
                ttl=config.turn_ttl,
                policy=config.ice_policy,
            )
        ),
    )
    metrics.watch(hub.snapshot)
    routing.watch(_load_probe(hub, metrics), lambda: list(hub.rooms()))
    sock = SignalingSocket(
        hub,
        tokens,
        metrics,
        limits,
        notifier=notifier,
        routing=routing,
        cluster=cluster,
        cluster_url=config.cluster_url,
    )
    api = RestApi(
        ApiSettings(
            api_key=config.api_key,
            public_url=config.public_url,
            web_dir=config.web_dir,
            room_minutes=config.room_minutes,
        ),
        tokens,
        store,
        metrics,
        present=hub.present,
    )
    webhook = _invite_webhook(config, cluster)
    mailer = (
        InviteMailer(SmtpSettings.from_url(config.smtp_url, config.smtp_from or ""))
        if config.smtp_url
        else None
    )
    invites = InviteApi(
        api,
        tokens,
        store,
        metrics,
        webhook,
        default_minutes=config.invite_minutes,
        mailer=mailer,
    )
    app[CONFIG] = config
    app[STORE] = store
    app[TOKENS] = tokens
    app[HUB] = hub
    app[METRICS] = metrics
    app[SOCKET] = sock
    app[ROUTING] = routing
    app[PEER_ORIGINS] = origins
    api.setup(app)
    invites.setup(app)
    PartnerApi(api, store, metrics, default_minutes=config.invite_minutes).setup(app)
    ClusterApi(api, config.api_key, store, routing, cluster).setup(app)
    sock.attach(app)

    async def close_connections(app: web.Application) -> None:
        # First, so no event arrives while routers close and aiohttp need not wait for
        # open websockets.
        await sock.shutdown()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ping = getattr(store, "ping", None)
        if ping is not None:
            await ping()  # an unreachable Redis fails the start, not the first join
        await routing.start()
        if manager is not None:
            # Listen for other nodes' events now, not at this node's first connection.
            sock.sio.manager_initialized = True
            manager.initialize()
        mux = ports.mux if ports is not None else None
        if mux is not None:
            # Bind now: a port that is taken fails the start, not the first call.
            import aioice.ice

            hosts = [config.media_host] if config.media_host else []
            hosts = hosts or aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
            for host in hosts:
                shared = await mux.socket_for(host)
                log.info("media: udp %s port %s for every call", host, shared.port)
        yield
        if webhook is not None:
            await webhook.close()
        await hub.shutdown()
        await routing.stop()
        await store.close()
        if mux is not None:  # after the routers: their connections use its sockets
            mux.close()

    app.on_shutdown.append(close_connections)
    app.cleanup_ctx.append(lifecycle)
    return app

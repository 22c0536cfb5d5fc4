"""`fleet hub serve`: run the hub until SIGINT/SIGTERM.

With --workers N (N > 1) the hub forks N processes that share the agent port
(SO_REUSEPORT) and the store; the first also serves the admin API. Each
process pushes what any of them writes, because every process watches the
store's version counter.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from hub.cli.client import write_fleetconfig
from hub.cli.errors import CliError
from hub.config import HubConfig
from hub.server import Hub, check_port_free
from hub.store import Database, Store, StoreError

log = logging.getLogger(__name__)


def admin_token(data_dir: Path) -> str:
    """The admin token from DATA_DIR/admin.token, created (0600) on first start."""
    path = data_dir / "admin.token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _enroll_listen(args) -> str | None:
    value = getattr(args, "enroll_listen", None)
    return None if args.insecure or value in (None, "", "off") else value


def _duration(text: str, flag: str) -> float:
    from hub.rollout.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}", f"e.g. {flag} 30d", code=2) from None


def build_config(args) -> HubConfig:
    data_dir = Path(args.data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("FLEET_TOKEN") or admin_token(data_dir)
    try:
        return HubConfig(
            db_url=args.db or f"sqlite:///{data_dir / 'fleet.db'}",
            agent_listen=args.listen,
            admin_listen=args.admin_listen,
            insecure=args.insecure,
            certs_dir=Path(args.certs) if args.certs else None,
            enroll_listen=_enroll_listen(args),
            agent_cert_ttl_s=_duration(getattr(args, "agent_cert_ttl", "30d"), "--agent-cert-ttl"),
            admin_token=token,
            heartbeat_interval_s=args.heartbeat_interval,
            rollout_tick_s=getattr(args, "rollout_tick", 2.0),
            rollout_lease_s=getattr(args, "rollout_lease", 15.0),
            metrics_listen=getattr(args, "metrics_listen", None),
        )
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid hub settings: {msgs}", "see `fleet hub serve --help`", code=2) from None


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run_process(cfg: HubConfig, serve_admin: bool, migrate: bool, ready=None, started=None) -> None:
    hub = Hub(cfg, serve_admin=serve_admin, migrate=migrate)
    stop = asyncio.Event()
    _install_signals(stop)
    try:
        ports = await hub.start()
    except OSError as exc:
        await hub.stop(grace=0)
        raise CliError(f"the hub cannot start: {exc}",
                       "stop the other hub (or program) there, or pick free ports with --listen and --admin-listen"
                       ) from None
    if ready is not None:
        ready.put((ports.agent, ports.admin))
    if started is not None:
        started()
    await stop.wait()
    log.info("shutting down")
    await hub.stop(grace=2.0)


def _worker(cfg: HubConfig, ready) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s")
    asyncio.run(_run_process(cfg, serve_admin=False, migrate=False, ready=ready))


async def _reset_connected(cfg: HubConfig) -> None:
    # A fresh start: no stream is open yet, whatever the last run recorded.
    db = Database(cfg.db_url)
    try:
        store = Store(db)
        await store.mark_all_disconnected(n.id for n in await store.list_nodes())
    finally:
        await db.close()


def serve(args) -> int:
    cfg = build_config(args)
    try:  # before touching the store: a second hub must not mark the first one's agents disconnected
        check_port_free(cfg.agent_listen, "the agent")
        check_port_free(cfg.admin_listen, "the admin API")
    except OSError as exc:
        raise CliError(f"the hub cannot start: {exc}",
                       "stop the other hub (or program) there, or pick free ports with --listen and --admin-listen"
                       ) from None
    if cfg.insecure:
        print("WARNING: --insecure: agents and the admin API talk plaintext without certificates. "
              "Use only on a trusted local machine.", file=sys.stderr)
    try:
        Database(cfg.db_url).migrate()
        asyncio.run(_reset_connected(cfg))
    except StoreError as exc:
        raise CliError(str(exc), "check --db; for PostgreSQL the server must be running and the database exist") from None
    data_dir = Path(args.data_dir).expanduser()
    fc = data_dir / "fleetconfig.yaml"
    host = cfg.admin_listen.rsplit(":", 1)
    admin_addr = f"{'127.0.0.1' if host[0] in ('0.0.0.0', '') else host[0]}:{host[1]}"
    workers: list[mp.Process] = []
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()

    def started() -> None:
        # Only once this process holds its ports: a hub that cannot start leaves the running hub's
        # fleetconfig alone, and the workers join the agent port the check found free.
        write_fleetconfig(fc, admin_addr, cfg.admin_token, None if cfg.insecure else cfg.certs_dir / "ca.pem")
        print(f"admin client config written to {fc}; run: export FLEETCONFIG={fc}", file=sys.stderr)
        for _ in range(max(0, args.workers - 1)):
            p = ctx.Process(target=_worker, args=(cfg, ready), daemon=True)
            p.start()
            workers.append(p)

    try:
        asyncio.run(_run_process(cfg, serve_admin=True, migrate=False, started=started))
    finally:
        for p in workers:
            p.terminate()
        for p in workers:
            p.join(5)
    return 0

"""`fleet-agent`: the edge agent's command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from edge_agent.config import ConfigError, load
from edge_agent.runtime import RuntimeMissing


def _gpu(text: str) -> dict:
    try:
        model, mem, *count = text.rsplit(":", 2)
        return {"model": model, "memory_gib": float(mem), "count": int(count[0]) if count else 1}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL:MEMORY_GIB[:COUNT], e.g. 'NVIDIA L4:24:2'") from None


def _exit_with_parent(pid: int) -> None:
    """Get SIGTERM when the process that started us dies, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != pid:  # the parent died before prctl took effect
        sys.exit(0)


def _exit_now(code: int) -> None:
    """End the process without Python's interpreter teardown.

    Called only after the agent stopped in order (servers drained, engines shut
    down, the last telemetry queued, the outbox closed): nothing is left to
    flush but the log. Tearing down torch's modules took 3-8 s on a loaded
    node, which a DaemonSet roll waits for on every pod.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-agent", description="The edge agent: dials the hub, applies placements, reports.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="connect to the hub and serve until interrupted")
    r.add_argument("--config", type=Path, help="YAML file with any of the settings below (flags win)")
    r.add_argument("--hub", help="hub agent address HOST:PORT")
    r.add_argument("--site")
    r.add_argument("--node", default=os.environ.get("NODE_NAME"), help="node name (default: $NODE_NAME)")
    r.add_argument("--data-dir", type=Path, help="local state directory")
    r.add_argument("--ca", type=Path)
    r.add_argument("--cert", type=Path)
    r.add_argument("--key", type=Path)
    r.add_argument("--bootstrap-token-file", type=Path,
                   default=Path(os.environ["FLEET_BOOTSTRAP_TOKEN_FILE"]) if os.environ.get("FLEET_BOOTSTRAP_TOKEN_FILE") else None,
                   help="file with a bootstrap token (`fleet certs token create` on the hub): without --cert/--key "
                        "the node makes its own key in <data-dir>/tls and asks the hub to sign it "
                        "(default: $FLEET_BOOTSTRAP_TOKEN_FILE; or the token in $FLEET_BOOTSTRAP_TOKEN)")
    r.add_argument("--enroll-address", help="the hub's enrollment address HOST:PORT (default: the --hub host, port 7445)")
    r.add_argument("--server-name", help="name to verify in the hub certificate")
    r.add_argument("--insecure", action="store_true", default=None, help="plaintext (local development only)")
    r.add_argument("--region")
    r.add_argument("--country")
    r.add_argument("--jurisdiction")
    r.add_argument("--gpu", action="append", type=_gpu, help="declare GPUs when none are detected: MODEL:GIB[:COUNT]")
    r.add_argument("--no-gpu-probe", action="store_true", help="do not ask NVML/torch; use --gpu only")
    r.add_argument("--kube", action="store_true", default=None,
                   help="run as a Kubernetes pod: inventory and cordon from Node $NODE_NAME, health endpoints")
    r.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: the pod's service account)")
    r.add_argument("--namespace", help="namespace of managed model servers and events (default: $POD_NAMESPACE)")
    r.add_argument("--runtime-mode", choices=["local", "external"], default=os.environ.get("FLEET_RUNTIME_MODE") or None,
                   help="local engine, or external OpenAI-compatible servers (default: $FLEET_RUNTIME_MODE, else local)")
    r.add_argument("--model-server-image", help="image of managed model servers (external mode)")
    r.add_argument("--health-port", type=int, help="port of /healthz and /readyz (default 9400 with --kube)")
    r.add_argument("--serve-port", type=int, metavar="PORT",
                   help="serve the OpenAI-compatible HTTP API on PORT (0 = a free port; see <data-dir>/serve.json)")
    r.add_argument("--serve-host", help="address the serving ports bind (default 127.0.0.1)")
    r.add_argument("--grpc-port", type=int, metavar="PORT", help="serve gRPC fleet.v1.Inference on PORT (0 = a free port)")
    r.add_argument("--models-dir", type=Path, help="local models as DIR/<model>/<version>/ (default <data-dir>/models)")
    r.add_argument("--external-url", help="external mode: forward to this OpenAI-compatible server (http://HOST:PORT)")
    r.add_argument("--default-data-class", help="data class of requests without X-Fleet-Data-Class (default: refuse them)")
    r.add_argument("--default-priority-class", help="PriorityClass of requests that name none (default: priority 0)")
    r.add_argument("--telemetry-interval", type=float, metavar="SECONDS",
                   help="seconds between telemetry reports to the hub (default 5)")
    r.add_argument("--demand-interval", type=float, metavar="SECONDS",
                   help="seconds per demand report (arrivals, tokens per service and region of origin; default 60)")
    r.add_argument("--model-load-timeout", type=float, metavar="SECONDS",
                   help="abandon a Placement whose models do not load within this (default 900); old version keeps serving")
    r.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                   help="on SIGTERM, seconds in-flight requests get to finish before they are cancelled (default 5)")
    r.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    r.add_argument("-v", "--verbose", action="store_true")
    m = sub.add_parser("make-model", help="build a small randomly initialised Llama model with a local tokenizer")
    m.add_argument("--size", choices=["tiny", "small", "1b"], default="tiny")
    m.add_argument("dir", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    debug = os.environ.get("FLEET_DEBUG") == "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.cmd == "make-model":
            try:
                from edge_agent.runtime.make_model import make_model
            except ImportError as exc:
                print(f"error: the inference runtime is not installed ({exc})", file=sys.stderr)
                print("  next: pip install 'edge-fleet[runtime]'", file=sys.stderr)
                return 1
            print(make_model(args.size, args.dir))
            return 0
        if args.exit_with_parent:
            _exit_with_parent(args.exit_with_parent)
        overrides = {
            "hub": args.hub, "site": args.site, "node": args.node, "data_dir": args.data_dir,
            "ca": args.ca, "cert": args.cert, "key": args.key, "server_name": args.server_name,
            "bootstrap_token_file": args.bootstrap_token_file, "enroll_address": args.enroll_address,
            "insecure": args.insecure, "region": args.region, "country": args.country,
            "jurisdiction": args.jurisdiction, "gpus": args.gpu,
            "kubernetes": args.kube, "kubeconfig": args.kubeconfig, "namespace": args.namespace,
            "runtime_mode": args.runtime_mode, "model_server_image": args.model_server_image,
            "health_port": args.health_port, "pod_name": os.environ.get("POD_NAME") or None,
            "serve_port": args.serve_port, "serve_host": args.serve_host, "grpc_port": args.grpc_port,
            "models_dir": args.models_dir, "external_url": args.external_url,
            "default_data_class": args.default_data_class, "default_priority_class": args.default_priority_class,
            "telemetry_interval_s": args.telemetry_interval, "demand_interval_s": args.demand_interval,
            "drain_timeout_s": args.drain_timeout,
            "model_load_timeout_s": args.model_load_timeout,
        }
        cfg = load(args.config, overrides)
        if cfg.insecure:
            print("WARNING: --insecure: talking to the hub in plaintext without a certificate.", file=sys.stderr)
        if cfg.enrolls:
            from edge_agent import enroll

            try:
                enroll.run(cfg, enroll.bootstrap_token(cfg), probe_gpus=not args.no_gpu_probe)
            except enroll.EnrollError as exc:
                if debug:
                    raise
                print(f"error: {exc.message}", file=sys.stderr)
                if exc.next:
                    print(f"  next: {exc.next}", file=sys.stderr)
                return 2
            return 0
        from edge_agent.agent import run_forever

        run_forever(cfg, probe_gpus=not args.no_gpu_probe)
        _exit_now(0)
        return 0
    except ConfigError as exc:
        if debug:
            raise
        problems = str(exc).splitlines()
        if len(problems) == 1:
            print(f"error: {problems[0]}", file=sys.stderr)
        else:
            print("error: the agent cannot start as configured:", file=sys.stderr)
            for line in problems:
                print(f"  - {line}", file=sys.stderr)
        print("  next: fix the settings above; `fleet-agent run --help` lists them", file=sys.stderr)
        return 2
    except RuntimeMissing as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("  next: pip install 'edge-fleet[runtime]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

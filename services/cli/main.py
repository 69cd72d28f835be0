"""The `chorus` command: run the stack, run one service, or talk to a running stack."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli import catalog as catalog_cli
from services.cli.cluster import ClusterError, LocalCluster

if TYPE_CHECKING:
    import grpc

DEFAULT_GRPC = "127.0.0.1:50051"
DEFAULT_OPENAI = "127.0.0.1:8000"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    sys.exit(args.run(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start NATS (embedded) and the four services")
    up.add_argument(
        "--nats-url",
        default=os.environ.get("CHORUS_NATS_URL"),
        help="use this NATS server instead of starting one",
    )
    up.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="TASK=MODEL",
        help="an extra model for the executor (repeatable)",
    )
    up.add_argument(
        "--openai-addr",
        default=os.environ.get("CHORUS_OPENAI_ADDR", DEFAULT_OPENAI),
        help=f"the OpenAI-compatible endpoint (default {DEFAULT_OPENAI}; '' turns it off)",
    )
    up.add_argument("--log-dir", type=Path, default=None, help="write each service's log here")
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run one service in this process")
    serve.add_argument(
        "service", choices=["gateway", "planner", "selector", "executor", "responder"]
    )
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="TASK=MODEL",
        help="executor: a model to serve (repeatable)",
    )
    serve.add_argument("--device", default=None, help="executor: cpu or cuda:N")
    serve.set_defaults(run=_serve)

    ask = commands.add_parser("ask", help="send a request to a running Chorus")
    ask.add_argument("text")
    ask.add_argument("--file", action="append", default=[], type=Path, help="attach a file")
    shown = ask.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON object")
    shown.add_argument("--quiet", "-q", action="store_true", help="print the answer alone")
    ask.add_argument("--stop-after", choices=["plan", "execute"])
    _client_options(ask)
    ask.add_argument(
        "--out",
        type=Path,
        default=Path("chorus-out"),
        help="where generated files are saved (default: ./chorus-out)",
    )
    ask.set_defaults(run=_ask)

    chat = commands.add_parser("chat", help="an interactive conversation with a running Chorus")
    _client_options(chat)
    chat.add_argument(
        "--out",
        type=Path,
        default=Path("chorus-out"),
        help="where generated files are saved (default: ./chorus-out)",
    )
    chat.set_defaults(run=_chat)

    plan = commands.add_parser("plan", help="print the plan for a request as JSON")
    plan.add_argument("text")
    plan.add_argument("--file", action="append", default=[], type=Path, help="attach a file")
    _client_options(plan)
    plan.set_defaults(run=_plan)

    catalog = commands.add_parser("catalog", help="the model catalog the selector ranks with")
    catalog_commands = catalog.add_subparsers(required=True, metavar="ACTION")
    imports = catalog_commands.add_parser("import", help="add HuggingGPT's p0_models.jsonl")
    imports.add_argument("file", type=Path)
    imports.set_defaults(run=lambda a: catalog_cli.import_file(a.file))
    sync = catalog_commands.add_parser("sync", help="refresh from the Hugging Face Hub")
    sync.add_argument("--task", action="append", default=[], help="only this task (repeatable)")
    sync.add_argument("--limit", type=int, default=20, help="models per task (default 20)")
    sync.set_defaults(run=lambda a: catalog_cli.sync(a.task, a.limit))
    listing = catalog_commands.add_parser("list", help="the catalog, most downloaded first")
    listing.add_argument("--task")
    listing.set_defaults(run=lambda a: catalog_cli.list_models(a.task))

    keys = commands.add_parser("keys", help="API keys of the gateway (CHORUS_API_KEYS)")
    keys_commands = keys.add_subparsers(required=True, metavar="ACTION")
    add = keys_commands.add_parser("add", help="make a key: its token is printed, once")
    add.add_argument("name", help="who the key is for; it owns the requests made with it")
    add.add_argument(
        "--expires",
        metavar="WHEN",
        help="a lifetime (12h, 30d, 8w) or an ISO 8601 date or time (UTC unless it says); "
        "default: never",
    )
    _keys_file_option(add)
    add.set_defaults(run=_keys_add)
    listing = keys_commands.add_parser("list", help="the keys: name and expiry, no secrets")
    _keys_file_option(listing)
    listing.set_defaults(run=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="remove a key; a running gateway drops it")
    revoke.add_argument("name")
    _keys_file_option(revoke)
    revoke.set_defaults(run=_keys_revoke)
    return parser


def _client_options(command: argparse.ArgumentParser) -> None:
    """Where the gateway is and how to prove who is calling."""
    env = os.environ.get
    command.add_argument("--grpc", default=env("CHORUS_GRPC_ADDR", DEFAULT_GRPC))
    command.add_argument(
        "--api-key",
        default=env("CHORUS_API_KEY") or None,
        help="the gateway's API key (default: $CHORUS_API_KEY)",
    )
    tls = command.add_argument_group("gRPC over TLS")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        default=env("CHORUS_TLS_CA") or None,
        metavar="FILE",
        help="connect over TLS, trusting this CA's PEM (default: $CHORUS_TLS_CA)",
    )
    for name, what in (("cert", "certificate"), ("key", "private key")):
        tls.add_argument(
            f"--tls-{name}",
            type=Path,
            default=env(f"CHORUS_TLS_{name.upper()}") or None,
            metavar="FILE",
            help=f"mutual TLS: this client's {what} (PEM; default: $CHORUS_TLS_{name.upper()})",
        )


def _tls(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """The TLS credentials the client options ask for (None: plain gRPC)."""
    from services.cli.client import tls_credentials
    from services.common.settings import SettingsError

    try:
        return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except SettingsError as e:
        print(f"chorus: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def _keys_file_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--file",
        type=Path,
        default=os.environ.get("CHORUS_API_KEYS") or None,
        help="the keys file (default: $CHORUS_API_KEYS)",
    )


def _keys(action: str, args: argparse.Namespace, work: Callable[[Path], int]) -> int:
    """Runs `work` on the keys file; a bad file or value becomes one line on stderr."""
    from services.common.settings import SettingsError

    if args.file is None:
        print(f"chorus keys {action}: set CHORUS_API_KEYS or give --file", file=sys.stderr)
        return 2
    try:
        return work(Path(args.file))
    except (SettingsError, OSError) as e:
        print(f"chorus keys {action}: {e}", file=sys.stderr)
        return 2


def _keys_add(args: argparse.Namespace) -> int:
    from services.gateway.keys import add_key, expiry, stamp

    def add(path: Path) -> int:
        expires = expiry(args.expires, datetime.now(UTC)) if args.expires else None
        token = add_key(path, args.name, expires)
        print(token)  # alone on stdout, for `export CHORUS_API_KEY=$(chorus keys add me)`
        until = f", expiring at {stamp(expires)}" if expires else ""
        print(
            f"added key {args.name!r} to {path}{until}; the token is shown only now",
            file=sys.stderr,
        )
        return 0

    return _keys("add", args, add)


def _keys_list(args: argparse.Namespace) -> int:
    from services.gateway.keys import list_keys, stamp

    def show(path: Path) -> int:
        now = datetime.now(UTC)
        for key in list_keys(path):
            until = stamp(key.expires) if key.expires else "never"
            state = "expired" if key.expired(now) else "valid"
            print(f"{key.name:<24} {state:<8} expires {until}")
        return 0

    return _keys("list", args, show)


def _keys_revoke(args: argparse.Namespace) -> int:
    from services.gateway.keys import revoke_key

    def revoke(path: Path) -> int:
        revoke_key(path, args.name)
        print(f"revoked key {args.name!r} in {path}", file=sys.stderr)
        return 0

    return _keys("revoke", args, revoke)


def _up(args: argparse.Namespace) -> int:
    grpc_addr = os.environ.get("CHORUS_GRPC_ADDR", DEFAULT_GRPC)
    cluster = LocalCluster(
        nats_url=args.nats_url,
        grpc_addr=grpc_addr,
        executor_models=args.model,
        log_dir=args.log_dir,
        openai_addr=args.openai_addr,
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("starting Chorus (NATS, planner, selector, executor, responder)...", flush=True)
    try:
        cluster.start()
    except ClusterError as e:
        print(f"chorus up: {e}", file=sys.stderr)
        return 1
    ports = ", ".join(f"{n} :{p}" for n, p in cluster.metrics_ports.items())
    openai = (
        f"  web UI: http://{args.openai_addr}/  OpenAI-compatible: http://{args.openai_addr}/v1"
        if args.openai_addr
        else ""
    )
    print(f"Chorus is up. gRPC: {grpc_addr}  NATS: {cluster.nats_url}{openai}", flush=True)
    print(f"metrics (/metrics, /healthz, /readyz): {ports}", flush=True)
    if cluster.integrator_credentials is not None:
        print(
            "the bus is locked (a NATS user per role); an integrator's credentials "
            f"(may publish chorus.request, read events and responses): "
            f"{cluster.integrator_credentials}",
            flush=True,
        )
    print("Ctrl-C stops everything.", flush=True)
    code = 0
    while not stopping:
        if (dead := cluster.exited()) is not None:
            print(f"chorus up: {dead} exited; stopping everything", file=sys.stderr)
            code = 1
            break
        time.sleep(0.3)
    print("stopping...", flush=True)
    cluster.stop()
    print("stopped.", flush=True)
    return code


def _serve(args: argparse.Namespace) -> int:
    from services.common import runtime

    if args.model:
        os.environ["CHORUS_EXECUTOR_MODELS"] = ";".join(args.model)
    if args.device:
        os.environ["CHORUS_DEVICE"] = args.device
    module = __import__(f"services.{args.service}.service", fromlist=["build"])
    runtime.main(args.service, module.build)
    return 0


def _ask(args: argparse.Namespace) -> int:
    from services.cli.ask import ask

    return ask(
        args.text,
        args.file,
        addr=args.grpc,
        out=args.out,
        as_json=args.json,
        stop_after=args.stop_after,
        quiet=args.quiet,
        api_key=args.api_key,
        tls=_tls(args),
    )


def _chat(args: argparse.Namespace) -> int:
    from services.cli.ask import chat

    if sys.stdin.isatty():
        print(
            "Chorus chat: one request per line; /file PATH attaches a file; /quit or Ctrl-D ends."
        )
    return chat(args.grpc, args.out, sys.stdin, sys.stdout, args.api_key, _tls(args))


def _plan(args: argparse.Namespace) -> int:
    from services.cli.ask import plan

    return plan(args.text, args.file, addr=args.grpc, api_key=args.api_key, tls=_tls(args))


if __name__ == "__main__":
    main()

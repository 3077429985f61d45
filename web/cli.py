"""``main.py serve``: start the editor and API server."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from web.security import Limits, SecurityPolicy, is_loopback


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8188, help="port (default: 8188)")
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", metavar="ADDRESS",
                        help="bind a non-local address (default 0.0.0.0); requires --auth-token")
    parser.add_argument("--auth-token", default=os.environ.get("LATENTFLOW_AUTH_TOKEN"),
                        help="secret every API client must send (env LATENTFLOW_AUTH_TOKEN)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="another origin (scheme://host:port) allowed to queue work (repeatable)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                        help="another Host name accepted without a token (repeatable)")
    parser.add_argument("--custom-nodes", default=None, help="plugin folder (default: custom_nodes/)")
    parser.add_argument("--output-dir", default=None, help="where output nodes write files (default: output/)")
    parser.add_argument("--input-dir", default=None, help="where uploads go (default: input/)")
    parser.add_argument("--max-upload-mb", type=int, default=32, help="largest accepted upload (MiB)")
    parser.add_argument("--max-body-mb", type=int, default=64, help="largest accepted request body (MiB)")
    parser.add_argument("--queue-db", default=None, metavar="FILE",
                        help="where the queue and history are kept across restarts (default: user/queue.sqlite3)")
    parser.add_argument("--history-limit", type=int, default=1000, help="finished prompts kept in the history")
    parser.add_argument("--frontend", choices=("latentflow", "comfyui"), default="latentflow",
                        help="which browser editor to serve at / (comfyui: the separately installed "
                             "comfyui-frontend-package, pip install -e '.[comfyui]'; ours stays at /latentflow/)")
    add_worker_options(parser)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` / ``--ray ADDRESS``: where prompts run (default: in this process)."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="run prompts in N worker processes on this machine, N at once (each with its "
                             "own model cache; e.g. one per GPU)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run prompts on the workers of a Ray cluster (ADDRESS as for ray.init, e.g. "
                             "auto or ray://head:10001; 'local' starts one here); --workers sets how many "
                             "(default: one per CPU of the cluster). pip install -e '.[ray]'")
    parser.add_argument("--worker-files", choices=("send", "shared"), default=None,
                        help="how workers' output files reach the output folder: send (each worker writes "
                             "a scratch folder of its own and sends its files back with the result; the "
                             "default with --ray) or shared (workers write into the output folder, which "
                             "must be storage every worker sees; the default with --workers)")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from web.app import create_app

    host = args.listen or args.host
    try:
        policy = SecurityPolicy.for_bind(host, args.auth_token, tuple(args.allow_origin), tuple(args.allow_host))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = port_problem(host, args.port)  # before any work: nothing to stop again
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    overrides = {"output_dir": Path(args.output_dir) if args.output_dir else None,
                 "input_dir": Path(args.input_dir) if args.input_dir else None}
    settings = args.build_settings(**overrides)
    custom_nodes = Path(args.custom_nodes) if args.custom_nodes else settings.custom_nodes_dir
    # Logging first: a plugin that fails to load is then reported once, by the registry's log.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = args.build_registry(custom_nodes=custom_nodes, settings=settings)
    if args.history_limit < 1:
        print(f"error: --history-limit must be at least 1, got {args.history_limit}", file=sys.stderr)
        return 2
    limits = Limits(max_body_bytes=args.max_body_mb << 20, max_upload_bytes=args.max_upload_mb << 20,
                    history_limit=args.history_limit)
    from engine.store import PromptStore, StoreError
    from web.comfyui import FrontendMissingError

    queue_db = Path(args.queue_db) if args.queue_db else Path(settings.root) / "user" / "queue.sqlite3"
    backend = None
    if args.workers is not None or args.ray is not None:
        try:
            backend = args.build_backend(settings, custom_nodes, workers=args.workers, ray_address=args.ray,
                                         worker_files=args.worker_files)
        except (ValueError, ImportError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        store = PromptStore(queue_db, history_limit=args.history_limit)
        app = create_app(registry, settings, policy=policy, limits=limits, frontend=args.frontend, store=store,
                         backend=backend)
    except (FrontendMissingError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot open the queue database {queue_db}: {error}; pass --queue-db FILE in a writable "
              "folder", file=sys.stderr)
        return 2
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    suffix = "/?token=<your token>" if policy.token else "/"
    print(f"latentflow: {len(registry)} nodes; open http://{shown}:{args.port}{suffix}", file=sys.stderr)
    if not is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this port and knows the token can "
              f"run workflows", file=sys.stderr)
    try:
        web.run_app(app, host=host, port=args.port, print=None, access_log=None)
    except OSError as error:  # taken between the check above and the bind
        print(f"error: {describe_bind_error(host, args.port, error)}", file=sys.stderr)
        return 2
    return 0


def describe_bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another latentflow or ComfyUI?); "
                f"stop it or pass --port {port + 1}")
    if error.errno == errno.EACCES:
        return f"not allowed to listen on port {port} of {host}; pass a port above 1023, e.g. --port 8188"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port``, or None: checked before printing the
    address to open, so a taken port is one line, not a traceback after "open http://..."."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot listen on {host}:{port}: {error.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if os.name != "nt":  # as aiohttp does: a port in TIME_WAIT is free to take
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return describe_bind_error(host, port, error)
    return None

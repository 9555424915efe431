"""The embedded policy server: ``python -m cutalign.policy.server --policy_uri DIR_OR_S3 [--http_port 8080]``.

A ``kserve.ModelServer`` serving one ``PolicyModel`` (see ``model.py``) with the OpenAI, TGI and admin routes
of ``routes.py``. The command line is KServe's own parser (``--http_port``, ``--model_name``, ``--workers``,
...) plus one flag per ``PolicyServerSettings`` field, whose defaults come from ``CUTALIGN_POLICY_SERVER_*``
— so the same names work as flags, environment variables and Helm values. S3 access uses ``CUTALIGN_S3_*``.

The server binds ``--host`` (default 127.0.0.1; the chart sets 0.0.0.0 inside pods). KServe 0.21 has no bind
option — its REST server builds a ``uvicorn.Config(host="0.0.0.0")`` — so ``bind.BoundModelServer`` sets
the config's host after KServe builds it and before uvicorn binds. gRPC is off by default (the policy clients
speak HTTP). One worker process: batching happens inside a process, so scale out with replicas, not
``--workers``. The admin routes need a token, always (see ``admin.py``).
"""

from __future__ import annotations

import argparse
import logging

from cutalign.config import PolicyServerSettings, S3Settings
from cutalign.policy.flags import add_settings_flags, settings_from_args

log = logging.getLogger(__name__)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from kserve import model_server  # imported here: it parses sys.argv at import time

    parser = argparse.ArgumentParser(
        prog=prog,
        parents=[model_server.parser],
        description="Serve a cutalign policy (causal LM, LoRA or merged) with batching and hot reload.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_settings_flags(parser, PolicyServerSettings)
    parser.set_defaults(model_name="policy", enable_grpc=False)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    settings = settings_from_args(PolicyServerSettings, args)
    if not settings.policy_uri:
        parser.error(
            "--policy_uri (or CUTALIGN_POLICY_SERVER_POLICY_URI) is required: a directory or s3:// prefix"
        )
    if args.workers != 1:
        parser.error("--workers must be 1: requests are batched inside one process; scale with replicas")

    import torch
    import transformers
    from kserve import model_server

    from cutalign.policy.admin import LoadRoots, register_admin_routes, resolve_admin_token
    from cutalign.policy.bind import BoundModelServer
    from cutalign.policy.model import PolicyModel
    from cutalign.policy.routes import register_routes

    transformers.utils.logging.disable_progress_bar()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    uses_s3 = settings.watch_current or any(
        (u or "").startswith("s3://") for u in (settings.policy_uri, settings.base_model_uri)
    )
    s3 = S3Settings() if uses_s3 or not settings.load_roots else None
    model = PolicyModel(args.model_name, settings, s3)
    model.load()
    token = resolve_admin_token(settings.admin_token, component="policy server")
    register_admin_routes(model_server.app, model, token=token, roots=LoadRoots.from_settings(settings, s3))
    register_routes(model_server.app, model)
    BoundModelServer(
        settings.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
    ).start([model])


if __name__ == "__main__":
    main()

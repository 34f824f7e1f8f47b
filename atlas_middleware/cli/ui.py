"""``atlas ui``: the review web page (sessions, rewards, review actions, learning) over a store."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from atlas_middleware.cli.common import (
    CLIError,
    UsageError,
    add_store_argument,
    open_cli_store,
    redact_url,
    store_url,
)

DEFAULT_REPORTS = (Path("atlas-eval"), Path("atlas-quickstart"))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ui",
        help="a review web page: sessions, rewards, approve/quarantine, learning",
        description="Serve the review web page over the store: browse and filter sessions, "
        "read rewards judge by judge and the span waterfall, approve or quarantine (one at a "
        "time, selected, or every pending session of a filter), undo, see who did what, follow "
        "each learning key's reward, lanes, lessons and training runs, and download the "
        "'atlas export' of a filter. Binds 127.0.0.1; another address needs --token.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--token",
        help="require this token (browsers sign in once; scripts send 'Authorization: Bearer "
        "TOKEN'); needed off loopback (env ATLAS_UI_TOKEN)",
    )
    p.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    p.add_argument(
        "--reviewer",
        metavar="NAME",
        help="the name review actions are logged under unless the page sets one "
        "(default: $ATLAS_REVIEWER, else your login name)",
    )
    p.add_argument(
        "--reports",
        action="append",
        type=Path,
        metavar="DIR",
        help="a folder of 'atlas eval' reports to show on the learning pages; repeatable "
        "(default: ./atlas-eval and ./atlas-quickstart)",
    )
    p.add_argument("--certfile", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    add_store_argument(p)
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str | None:
    from atlas_middleware.ui.server import TOKEN_ENV

    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise CLIError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
        return token
    return args.token or os.environ.get(TOKEN_ENV) or None


def run(args: argparse.Namespace) -> int:
    from atlas_middleware.ui.server import ConfigError, UISettings, make_server

    settings = UISettings(
        store_url=store_url(args),
        host=args.host,
        port=args.port,
        token=_token(args),
        reviewer=args.reviewer,
        reports=list(args.reports or DEFAULT_REPORTS),
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    try:
        settings.validate()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    with open_cli_store(args) as store:
        try:
            server = make_server(settings, store)
        except OSError as exc:
            raise CLIError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                "(another process on that port? pick one with --port, or 0 for any)"
            ) from None
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        signal.signal(signal.SIGTERM, stop)
        auth = "token required" if settings.token else "loopback only, no token"
        print(
            f"atlas ui: {server.url}  (store {redact_url(settings.store_url)}; {auth}; "
            "Ctrl-C stops)",
            flush=True,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0

"""``python -m mnist_serving --model-dir <registry>/<name>/<version>``: serve one version.

Binds 127.0.0.1:8080 by default; its options are ``ServerOptions`` (``--help`` lists them).
The feedback route's bearer token comes from ``$MNIST_FEEDBACK_TOKEN`` only (a secret:
never a flag). A deployer may instead pass already-listening sockets
(``--fd``, repeatable) and ask for ``--handoff-socket`` so the next version can take over
the same port without dropping a request. ``--candidate`` serves only on the sockets given
(a private probe port) until a deployer hands it the public socket; ``--record`` and
``--lease-stdin`` keep it consistent with the deployer's record (see ``lease``)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from mnist_serving.options import DEFAULT_PORT, FEEDBACK_TOKEN_ENV, ServerOptions


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a registry version folder")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--fd", type=int, action="append", default=[], help="inherited listening socket")
    parser.add_argument("--handoff-socket", type=Path, help="Unix socket for handing the public listener on")
    parser.add_argument("--candidate", action="store_true", help="no public listener until one is handed over")
    parser.add_argument("--record", type=Path, help="the deployer's endpoint record: stop once replaced in it")
    parser.add_argument("--lease-stdin", action="store_true", help="stop at stdin EOF unless the record names us")
    parser.add_argument("--request-log-dir", type=Path, help="folder for the prediction log and feedback")
    ServerOptions.add_arguments(parser)
    args = parser.parse_args()
    try:
        options = ServerOptions.from_arguments(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if (args.lease_stdin or args.candidate) and not args.record:
        parser.error("--lease-stdin and --candidate need --record")
    from mnist_serving import lease

    if args.lease_stdin:  # first: a deployer dying while the model loads must stop us too
        lease.hold_lease_on_stdin(args.record)
    if args.record:
        lease.watch_record(args.record)

    from mnist_serving.request_log import RequestLog
    from mnist_serving.server import serve  # after argument errors
    from mnist_serving.sockets import bind_listener

    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"{args.model_dir} is not a registry version folder (no manifest.json)")
    listeners = [socket.socket(fileno=fd) for fd in args.fd] or [bind_listener(args.host, args.port)]
    request_log = (
        RequestLog(
            args.request_log_dir,
            max_file_bytes=int(options.log_max_file_mb * 2**20),
            max_files=options.log_max_files,
            sample_rate=options.input_sample_rate,
        )
        if options.request_log and args.request_log_dir
        else None
    )
    serve(
        args.model_dir,
        listeners,
        public=None if args.candidate else listeners[0],
        handoff=args.handoff_socket,
        max_batch=options.max_batch,
        max_body_bytes=options.max_body_bytes,
        request_log=request_log,
        feedback_token=os.environ.get(FEEDBACK_TOKEN_ENV, "").strip() or None,
    )


if __name__ == "__main__":
    main()

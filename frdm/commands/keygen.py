"""Make CURVE keys for 'frdm serve --curve-keys DIR' (encryption and client authentication).

DIR gets server.key (public: give it to clients), server.key_secret (keep it on the server), and for each
client NAME: NAME.key_secret (give it to that client only) and clients/NAME.key (the server admits only the
clients listed in DIR/clients). A client needs server.key and its NAME.key_secret; see
frdm.server.client.load_curve_keys.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="folder for the keys (created)")
    parser.add_argument(
        "--client",
        action="append",
        default=None,
        metavar="NAME",
        help="make a key pair for this client (repeatable; default: one named 'client')",
    )
    parser.add_argument("--force", action="store_true", help="replace existing keys")


def run(args: argparse.Namespace) -> int:
    import zmq.auth

    from frdm.engine.errors import InputError

    directory = args.directory
    clients = args.client or ["client"]
    for name in clients:
        if not name.isidentifier():
            raise InputError(f"--client {name!r}: use letters, digits and underscores")
    server_secret = os.path.join(directory, "server.key_secret")
    if os.path.exists(server_secret) and not args.force:
        raise InputError(f"{server_secret} exists; pass --force to replace the keys (old clients stop working)")
    os.makedirs(os.path.join(directory, "clients"), exist_ok=True)
    old = os.umask(0o077)  # secret keys readable by their owner only
    try:
        zmq.auth.create_certificates(directory, "server")
        for name in clients:
            public, _secret = zmq.auth.create_certificates(directory, name)
            os.replace(public, os.path.join(directory, "clients", f"{name}.key"))
    finally:
        os.umask(old)
    print(f"frdm keygen: server keys and {len(clients)} client key pair(s) in {directory}", file=sys.stderr)
    print(f"  server: frdm serve --curve-keys {directory} --bind tcp://0.0.0.0:5555", file=sys.stderr)
    print(f"  client: copy server.key and {clients[0]}.key_secret to the client's machine", file=sys.stderr)
    return 0

#!/usr/bin/env python3
"""Records what Workload API clients send: a Unix-socket proxy in front of a running daemon.

Usage: capture_h2.py LISTEN_SOCKET DAEMON_SOCKET OUT_PREFIX
Each accepted connection is forwarded to DAEMON_SOCKET; the bytes the client sent are written to
OUT_PREFIX-<n>.client and the daemon's answers to OUT_PREFIX-<n>.server when the connection ends.
Used once to make the seed corpus of the h2_authority fuzz target (see FUZZING.md); not part of
any build or test.
"""
import os
import socket
import sys
import threading


def pump(src, dst, record):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            record.append(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client, daemon_path, prefix):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.connect(daemon_path)
    sent, received = [], []
    threads = [
        threading.Thread(target=pump, args=(client, upstream, sent)),
        threading.Thread(target=pump, args=(upstream, client, received)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(prefix + ".client", "wb") as f:
        f.write(b"".join(sent))
    with open(prefix + ".server", "wb") as f:
        f.write(b"".join(received))
    client.close()
    upstream.close()


def main():
    listen_path, daemon_path, out_prefix = sys.argv[1:4]
    if os.path.exists(listen_path):
        os.unlink(listen_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen_path)
    server.listen(16)
    n = 0
    while True:
        client, _ = server.accept()
        n += 1
        threading.Thread(
            target=handle, args=(client, daemon_path, f"{out_prefix}-{n}"), daemon=True
        ).start()


if __name__ == "__main__":
    main()

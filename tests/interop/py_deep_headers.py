"""Publishes one RPC request whose headers nest DEPTH tables deep, with py-amqp (which Python
nameko uses), and prints "published".

Usage: python py_deep_headers.py AMQP_URI ROUTING_KEY DEPTH
"""

import sys
import threading
from urllib.parse import unquote, urlparse

import amqp


def main():
    uri, routing_key, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parts = urlparse(uri.replace("pyamqp://", "amqp://", 1))
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    connection.connect()
    channel = connection.channel()
    value = "leaf"
    for _ in range(depth):
        value = {"a": value}
    message = amqp.Message(
        b'{"args": ["deep"], "kwargs": {}}',
        content_type="application/json",
        application_headers={"nameko.deep": value},
        reply_to="nowhere",
        correlation_id="deep",
    )
    channel.basic_publish(message, exchange="nameko-rpc", routing_key=routing_key)
    connection.close()
    print("published", flush=True)


# py-amqp writes nested tables recursively: room for it.
sys.setrecursionlimit(100_000)
threading.stack_size(256 * 1024 * 1024)
thread = threading.Thread(target=main)
thread.start()
thread.join()

"""Makes RPC calls with Python nameko's ClusterRpcProxy and prints one JSON line per call.

Usage: python py_client.py AMQP_URI CALLS_JSON
CALLS_JSON is a list of {"service", "method", "args", "kwargs"}. Each output line is
{"result": ...} or {"error": {"class": ..., "exc_type": ..., "value": ..., "args": [...]}}.
"""

import eventlet

eventlet.monkey_patch()  # noqa: E402 (nameko's standalone clients need it first)

import json
import sys

from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy


def main():
    uri, calls = sys.argv[1], json.loads(sys.argv[2])
    with ClusterRpcProxy({"AMQP_URI": uri}, timeout=20) as rpc:
        for call in calls:
            method = getattr(rpc[call["service"]], call["method"])
            try:
                result = method(*call.get("args", []), **call.get("kwargs", {}))
                line = {"result": result}
            except RemoteError as exc:
                line = {"error": {"class": "RemoteError", "exc_type": exc.exc_type,
                                  "value": exc.value, "args": list(exc.args)}}
            except Exception as exc:  # MethodNotFound, IncorrectSignature, UnknownService...
                line = {"error": {"class": type(exc).__name__, "exc_type": None,
                                  "value": str(exc), "args": [str(a) for a in exc.args]}}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

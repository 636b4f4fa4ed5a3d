"""Makes one RPC call with Python nameko's ClusterRpcProxy carrying context data of a given
size, and prints one JSON line: {"result": ...} or {"error": {"class": ..., "value": ...}}.

Usage: python py_context_call.py AMQP_URI SERVICE METHOD ARGS_JSON CONTEXT_BYTES
The context data is {"auth_token": "x" * CONTEXT_BYTES}, sent as the nameko.auth_token header.
"""

import eventlet

eventlet.monkey_patch()  # noqa: E402 (nameko's standalone clients need it first)

import json
import sys

from nameko.standalone.rpc import ClusterRpcProxy


def main():
    uri, service, method, args, size = sys.argv[1:6]
    context = {"auth_token": "x" * int(size)}
    try:
        with ClusterRpcProxy({"AMQP_URI": uri}, timeout=10, context_data=context) as rpc:
            result = getattr(rpc[service], method)(*json.loads(args))
        line = {"result": result}
    except BaseException as exc:  # whatever the client makes of it, reported, never a hang
        line = {"error": {"class": type(exc).__name__, "value": str(exc)[:500]}}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""A Python websocket client (websocket-client) of a nameko websocket server: connects to
`ws://<address>/ws`, calls `method` with `data` (JSON), prints the result frame, then prints
each event frame it gets until `count` have come (one JSON document per line)."""

import json
import sys

import websocket


def main(address, method, data, count):
    socket = websocket.create_connection("ws://{}/ws".format(address), timeout=20)
    connected = json.loads(socket.recv())
    assert connected["event"] == "connected", connected
    socket.send(json.dumps({"method": method, "data": json.loads(data), "correlation_id": "py"}))
    print(socket.recv(), flush=True)
    for _ in range(int(count)):
        print(socket.recv(), flush=True)
    socket.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

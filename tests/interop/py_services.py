"""Python nameko 2.14.1 services the interop tests run with `nameko run`."""

from kombu import Exchange, Queue
from nameko.contextdata import UserId
from nameko.events import EventDispatcher, event_handler
from nameko.messaging import Publisher, consume
from nameko.rpc import RpcProxy, rpc

# nameko 2.14.1's websocket module reads `werkzeug.__version__`, which Werkzeug 3 (pinned in
# requirements.txt) no longer has: give it the installed version before the import.
import werkzeug  # noqa: E402

if not hasattr(werkzeug, "__version__"):
    from importlib.metadata import version as _installed_version

    werkzeug.__version__ = _installed_version("werkzeug")

from nameko.web.websocket import WebSocketHubProvider  # noqa: E402
from nameko.web.websocket import rpc as wsrpc  # noqa: E402

INTEROP = Exchange("interop", type="direct")


class PythonService:
    name = "python_service"

    @rpc
    def echo(self, value):
        return value

    @rpc
    def add(self, a, b=0):
        return a + b

    @rpc
    def raise_value_error(self, message):
        raise ValueError(message)


class SharedService:
    """Shares its name (and so its queue) with a Rust service in the tests."""

    name = "shared_service"

    @rpc
    def who(self):
        return "python"


class PythonPublisher:
    """Dispatches `python_event` when asked to."""

    name = "python_publisher"
    dispatch = EventDispatcher()

    @rpc
    def publish(self, payload):
        self.dispatch("python_event", payload)


class PythonListener:
    """Handles a Rust service's event and reports it to a Rust service over RPC."""

    name = "python_listener"
    recorder = RpcProxy("rust_recorder")

    @event_handler("rust_publisher", "rust_event")
    def on_rust_event(self, payload):
        self.recorder.record(payload)


class SharedListener:
    """Shares its name and handler (and so its event queue) with a Rust service in the tests."""

    name = "shared_listener"
    recorder = RpcProxy("rust_recorder")

    @event_handler("rust_publisher", "shared_event")
    def on_event(self, payload):
        payload["by"] = "python"
        self.recorder.record(payload)


class PythonMessenger:
    """Consumes what a Rust `Publisher` sends and reports it to a Rust service; publishes to a
    Rust `#[consume]` method's queue when asked."""

    name = "python_messenger"
    publish = Publisher(exchange=INTEROP)
    recorder = RpcProxy("rust_recorder")
    user_id = UserId()

    @consume(Queue("python_inbox", exchange=INTEROP, routing_key="to_python"))
    def take(self, body):
        self.recorder.record({"body": body, "user_id": self.user_id})

    @rpc
    def send(self, messages):
        for body, priority in messages:
            self.publish(body, routing_key="to_rust", priority=priority)


class NoSuchRoom(Exception):
    pass


class PythonChat:
    """Websocket methods and a hub; `tests/websocket_python.rs` sends the same frames to it and
    to a Rust service written the same way, and compares the answers."""

    name = "python_chat"
    hub = WebSocketHubProvider()

    @wsrpc
    def greet(self, socket_id, name):
        return u"Hello, {}! Gr\u00fc\u00dfe \U0001f389".format(name)

    @wsrpc
    def join(self, socket_id, room):
        self.hub.subscribe(socket_id, room)
        return self.hub.get_subscriptions(socket_id)

    @wsrpc
    def leave(self, socket_id, room):
        self.hub.unsubscribe(socket_id, room)
        return self.hub.get_subscriptions(socket_id)

    @wsrpc
    def say(self, socket_id, room, text):
        self.hub.broadcast(room, "said", {"text": text, "n": [1, 2.5, None, True]})

    @wsrpc
    def whisper(self, socket_id, to, text):
        return self.hub.unicast(to, "whispered", {"text": text})

    @wsrpc
    def subscribe_other(self, socket_id, other, room):
        self.hub.subscribe(other, room)

    @wsrpc
    def enter(self, socket_id, room):
        raise NoSuchRoom(room)

    @wsrpc
    def add(self, socket_id, a, b=10):
        return {"sum": a + b, "args": [a, b]}


class TraceRelay:
    """Relays a call to a Rust service; its context data (a W3C `traceparent` among it) goes
    along unchanged, as nameko forwards all context data."""

    name = "trace_relay"
    finisher = RpcProxy("trace_finish")

    @rpc
    def relay(self, name):
        return self.finisher.finish(name)

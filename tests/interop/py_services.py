"""Python nameko 2.14.1 services the interop tests run with `nameko run`."""

from kombu import Exchange, Queue
from nameko.contextdata import UserId
from nameko.events import EventDispatcher, event_handler
from nameko.messaging import Publisher, consume
from nameko.rpc import RpcProxy, rpc

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

"""Python nameko 2.14.1 services the interop tests run with `nameko run`."""

from nameko.rpc import rpc


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

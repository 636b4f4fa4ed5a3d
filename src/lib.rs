//! Examples and integration tests of nameko-rs live in `examples/` and `tests/`.

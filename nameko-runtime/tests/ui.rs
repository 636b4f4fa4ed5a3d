//! Compile-time behaviour of the macros: what compiles, and the error each misuse gives (one
//! folder of misuses per macro).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*/*.rs");
}

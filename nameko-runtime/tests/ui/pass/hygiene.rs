// The generated code names everything by absolute paths: a service compiles in a module
// without the prelude, and with raw identifiers as method and parameter names.
mod no_prelude {
    #![no_implicit_prelude]

    #[derive(::nameko::Dependencies)]
    pub struct Svc;

    #[::nameko::service(name = "svc")]
    impl Svc {
        #[::nameko::rpc]
        async fn r#match(&self, r#type: ::std::string::String) -> ::std::string::String {
            r#type
        }

        #[::nameko::rpc(name = "echo")]
        fn echo(
            &self,
            value: ::std::option::Option<u32>,
        ) -> ::std::result::Result<u32, ::std::string::String> {
            value.ok_or_else(|| ::std::string::ToString::to_string("none"))
        }
    }
}

fn main() {
    let names = nameko::ServiceRegistration::of::<no_prelude::Svc>().entrypoints();
    assert_eq!(names, ["rpc match", "rpc echo"]);
    let _ = no_prelude::SvcClient::r#match;
}

// The generated code names everything by absolute paths: a service compiles in a module
// without the prelude, and with raw identifiers as method and parameter names.
mod no_prelude {
    #![no_implicit_prelude]

    #[derive(::nameko::Dependencies)]
    pub struct Svc {
        config: ::nameko::Config,
    }

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
            let _ = &self.config;
            value.ok_or_else(|| ::std::string::ToString::to_string("none"))
        }
    }
}

// A service written by a `macro_rules!` macro: the generated code points its errors at the
// types, whose spans come from the macro, and still resolves its own names.
macro_rules! forwarding_service {
    ($name:ident, $wire:literal, $client:ty, $value:ty) => {
        #[derive(nameko::Dependencies)]
        pub struct $name {
            other: $client,
        }

        #[nameko::service(name = $wire)]
        impl $name {
            #[nameko::rpc]
            async fn forward(&self, value: $value) -> Result<$value, nameko::RpcError> {
                self.other.echo(Some(value)).await
            }
        }
    };
}

forwarding_service!(Forwarder, "forwarder", no_prelude::SvcClient, u32);

fn main() {
    let names = nameko::ServiceRegistration::of::<Forwarder>().entrypoints();
    assert_eq!(names, ["rpc forward(value: u32) -> u32"]);
    let names = nameko::ServiceRegistration::of::<no_prelude::Svc>().entrypoints();
    assert_eq!(
        names,
        [
            "rpc match(type: ::std::string::String) -> ::std::string::String",
            "rpc echo(value: ::std::option::Option<u32>) -> u32",
        ]
    );
    let _ = no_prelude::SvcClient::r#match;
}

// An entrypoint of the user's own, with the keys every entrypoint takes, next to an RPC method
// on the same method.
use nameko::prelude::*;
use nameko::service::{Entrypoint, EntrypointContext, Started};

pub struct Manual;

impl Entrypoint for Manual {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    async fn start(self, _cx: EntrypointContext<Self>) -> Result<Started, Error> {
        Ok(Started::idle())
    }
}

#[derive(Dependencies)]
pub struct Accounts;

#[service(name = "accounts")]
impl Accounts {
    #[rpc]
    #[entrypoint(Manual, expected_exceptions = "Locked", sensitive_arguments = "password")]
    async fn login(&self, user: String, password: String, remember: Option<bool>) -> String {
        let _ = (password, remember);
        user
    }

    #[nameko::entrypoint(Manual)]
    fn sync_method(&self) -> u32 {
        1
    }
}

fn main() {
    assert_eq!(
        nameko::ServiceRegistration::of::<Accounts>().entrypoints(),
        [
            "rpc login(user: String, password: String, remember: Option<bool>) -> String",
            "manual login(user: String, password: String, remember: Option<bool>) -> String",
            "manual sync_method() -> u32",
        ]
    );
}

use nameko::prelude::*;
/// Pings.
pub struct PingService {
    dispatch: EventDispatcher,
}
impl ::nameko::__private::Dependencies for PingService {
    async fn build(
        cx: &::nameko::__private::DependencyContext,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self {
            dispatch: ::nameko::__private::build_dependency(
                    cx,
                    "dispatch",
                    || <EventDispatcher as ::nameko::__private::Dependency>::build(
                        cx,
                        "dispatch",
                    ),
                )
                .await?,
        })
    }
    async fn start(&self) -> ::std::result::Result<(), ::nameko::__private::Error> {
        if let ::std::result::Result::Err(error) = <EventDispatcher as ::nameko::__private::Dependency>::start(
                &self.dispatch,
            )
            .await
        {
            return ::std::result::Result::Err(error);
        }
        ::std::result::Result::Ok(())
    }
    async fn stop(&self) {
        ::nameko::__private::guard(
                "dispatch",
                "stop",
                <EventDispatcher as ::nameko::__private::Dependency>::stop(
                    &self.dispatch,
                ),
            )
            .await;
    }
    fn kill(&self) {
        ::nameko::__private::guard_kill(
            "dispatch",
            || <EventDispatcher as ::nameko::__private::Dependency>::kill(&self.dispatch),
        );
    }
    async fn worker_setup(
        &self,
        worker: &::nameko::__private::WorkerContext,
    ) -> ::std::result::Result<(), ::nameko::__private::Error> {
        ::nameko::__private::guard_result(
                "dispatch",
                "worker_setup",
                <EventDispatcher as ::nameko::__private::Dependency>::worker_setup(
                    &self.dispatch,
                    worker,
                ),
            )
            .await?;
        ::std::result::Result::Ok(())
    }
    async fn worker_result(
        &self,
        worker: &::nameko::__private::WorkerContext,
        result: &::nameko::__private::WorkerResult<'_>,
    ) -> ::std::result::Result<(), ::nameko::__private::Error> {
        let mut refusal = ::std::result::Result::Ok(());
        let outcome = ::nameko::__private::guard_result(
                "dispatch",
                "worker_result",
                <EventDispatcher as ::nameko::__private::Dependency>::worker_result(
                    &self.dispatch,
                    worker,
                    result,
                ),
            )
            .await;
        if refusal.is_ok() {
            refusal = outcome;
        }
        refusal
    }
    async fn worker_teardown(&self, worker: &::nameko::__private::WorkerContext) {
        ::nameko::__private::guard(
                "dispatch",
                "worker_teardown",
                <EventDispatcher as ::nameko::__private::Dependency>::worker_teardown(
                    &self.dispatch,
                    worker,
                ),
            )
            .await;
    }
}
impl PingService {
    /// Prints a word, and dispatches it as a `ping` event, every second.
    async fn ping(&self) -> Result<(), DispatchError> {
        const WORDS: [&str; 4] = ["SPAM", "EGG", "BACON", "SPAMMY SPAM"];
        let pick = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % WORDS.len();
        println!("{}", WORDS[pick]);
        self.dispatch.dispatch("ping", WORDS[pick]).await
    }
}
impl ::nameko::__private::Service for PingService {
    const NAME: &'static str = "ping_service";
    fn entrypoints() -> ::std::vec::Vec<::nameko::__private::BoundEntrypoint<Self>> {
        ::std::convert::From::from([
            ::nameko::__private::BoundEntrypoint::<
                Self,
            >::new(
                ::nameko::__private::Timer::new(
                        ::nameko::__private::Duration::from_nanos(1000000000u64),
                    )
                    .eager(false),
                ::nameko::__private::MethodInfo::new("ping", &[], &[], &[]),
                |this, _arguments| async move {
                    match this.ping().await {
                        ::std::result::Result::Ok(value) => {
                            let _ = value;
                            <() as ::nameko::__private::RpcResult<_>>::encode_result(&())
                        }
                        ::std::result::Result::Err(error) => {
                            use ::nameko::__private::{
                                ViaDisplay as _, ViaToRemoteError as _,
                            };
                            let error = (&::nameko::__private::Wrap(&error))
                                .__to_remote_error();
                            ::std::result::Result::Err(::std::convert::Into::into(error))
                        }
                    }
                },
            ),
        ])
    }
}
::nameko::__private::inventory::submit! {
    ::nameko::__private::ServiceRegistration::of:: < PingService > ()
}
///Typed client for the `ping_service` service, generated by `#[service]` on [`PingService`].
#[derive(Clone, Debug)]
pub struct PingServiceClient {
    proxy: ::nameko::ServiceProxy,
}
impl PingServiceClient {
    /// A client sending its calls through `client`.
    pub fn new(client: &::nameko::ClusterRpcClient) -> Self {
        Self {
            proxy: client.service("ping_service"),
        }
    }
    /// The same client with another timeout for its calls.
    pub fn with_timeout(&self, timeout: ::nameko::__private::Duration) -> Self {
        Self {
            proxy: self.proxy.with_timeout(timeout),
        }
    }
    /// The same client, its requests of this priority (on a queue declared with
    /// `x-max-priority`, taken before those of a lower one).
    pub fn with_priority(&self, priority: u8) -> Self {
        Self {
            proxy: self.proxy.with_priority(priority),
        }
    }
}
impl ::nameko::__private::ServiceClient for PingServiceClient {
    const SERVICE_NAME: &'static str = "ping_service";
    fn from_client(client: &::nameko::ClusterRpcClient) -> Self {
        Self::new(client)
    }
}
impl ::nameko::__private::Dependency for PingServiceClient {
    async fn build(
        cx: &::nameko::__private::DependencyContext,
        _field: &'static str,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self::new(&cx.rpc_client().await?))
    }
}

use nameko::prelude::*;
/// Publishes `my_event`.
pub struct MyEventPublisherService {
    dispatch: EventDispatcher,
}
impl ::nameko::__private::Dependencies for MyEventPublisherService {
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
impl MyEventPublisherService {
    /// Dispatches `payload` as `my_event`.
    async fn publish(&self, payload: String) -> Result<(), DispatchError> {
        self.dispatch.dispatch("my_event", &payload).await
    }
}
impl ::nameko::__private::Service for MyEventPublisherService {
    const NAME: &'static str = "my_event_publisher_service";
    fn entrypoints() -> ::std::vec::Vec<::nameko::__private::BoundEntrypoint<Self>> {
        ::std::convert::From::from([
            ::nameko::__private::BoundEntrypoint::<
                Self,
            >::new(
                ::nameko::__private::Rpc,
                ::nameko::__private::MethodInfo::new("publish", &["payload"], &[], &[])
                    .with_signature("(payload: String) -> ()"),
                |this, body| {
                    async move {
                        const PARAMS: &[::nameko::__private::Param] = &[
                            ::nameko::__private::Param {
                                name: "payload",
                                optional: false,
                            },
                        ];
                        let mut args = ::nameko::__private::BoundArgs::bind(
                            "publish",
                            PARAMS,
                            body,
                        )?;
                        let payload = <String as ::nameko::__private::RpcArgument<
                            _,
                        >>::decode_argument(&mut args, 0usize)?;
                        match this.publish(payload).await {
                            ::std::result::Result::Ok(value) => {
                                <() as ::nameko::__private::RpcResult<
                                    _,
                                >>::encode_result(&value)
                            }
                            ::std::result::Result::Err(error) => {
                                use ::nameko::__private::{
                                    ViaDisplay as _, ViaToRemoteError as _,
                                };
                                let error = (&::nameko::__private::Wrap(&error))
                                    .__to_remote_error();
                                ::std::result::Result::Err(
                                    ::std::convert::Into::into(error),
                                )
                            }
                        }
                    }
                },
            ),
        ])
    }
}
::nameko::__private::inventory::submit! {
    ::nameko::__private::ServiceRegistration::of:: < MyEventPublisherService > ()
}
///Typed client for the `my_event_publisher_service` service, generated by `#[service]` on [`MyEventPublisherService`].
#[derive(Clone, Debug)]
pub struct MyEventPublisherServiceClient {
    proxy: ::nameko::ServiceProxy,
}
impl MyEventPublisherServiceClient {
    /// A client sending its calls through `client`.
    pub fn new(client: &::nameko::ClusterRpcClient) -> Self {
        Self {
            proxy: client.service("my_event_publisher_service"),
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
    /// Dispatches `payload` as `my_event`.
    pub async fn publish(
        &self,
        payload: String,
    ) -> ::std::result::Result<(), ::nameko::RpcError> {
        let args: [::nameko::__private::RawArgument; 1usize] = [
            <String as ::nameko::__private::RpcArgument<_>>::encode_argument(&payload)?,
        ];
        ::nameko::__private::call(
                &self.proxy,
                "publish",
                &args,
                <() as ::nameko::__private::RpcResult<_>>::decode_result,
            )
            .await
    }
}
impl ::nameko::__private::ServiceClient for MyEventPublisherServiceClient {
    const SERVICE_NAME: &'static str = "my_event_publisher_service";
    fn from_client(client: &::nameko::ClusterRpcClient) -> Self {
        Self::new(client)
    }
}
impl ::nameko::__private::Dependency for MyEventPublisherServiceClient {
    async fn build(
        cx: &::nameko::__private::DependencyContext,
        _field: &'static str,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self::new(&cx.rpc_client().await?))
    }
}
/// Handles `my_event`.
pub struct MyEventHandlerService1;
impl ::nameko::__private::Dependencies for MyEventHandlerService1 {
    async fn build(
        _cx: &::nameko::__private::DependencyContext,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self)
    }
}
impl MyEventHandlerService1 {
    async fn handle_event(&self, payload: String) {
        tracing::info!("my_event_handler_service_1 received: {payload}");
    }
}
impl ::nameko::__private::Service for MyEventHandlerService1 {
    const NAME: &'static str = "my_event_handler_service_1";
    fn entrypoints() -> ::std::vec::Vec<::nameko::__private::BoundEntrypoint<Self>> {
        ::std::convert::From::from([
            ::nameko::__private::BoundEntrypoint::<
                Self,
            >::new(
                ::nameko::__private::EventHandler::new(
                        "my_event_publisher_service",
                        "my_event",
                    )
                    .handler_type(::nameko::__private::HandlerType::ServicePool)
                    .reliable_delivery(true)
                    .requeue_on_error(false),
                ::nameko::__private::MethodInfo::new(
                    "handle_event",
                    &["payload"],
                    &[],
                    &[],
                ),
                |this, body| {
                    async move {
                        let payload = <String as ::nameko::__private::EventPayload<
                            _,
                        >>::decode_payload(&body.0)?;
                        {
                            let _ = this.handle_event(payload).await;
                            ::std::result::Result::Ok(())
                        }
                    }
                },
            ),
        ])
    }
}
::nameko::__private::inventory::submit! {
    ::nameko::__private::ServiceRegistration::of:: < MyEventHandlerService1 > ()
}
///Typed client for the `my_event_handler_service_1` service, generated by `#[service]` on [`MyEventHandlerService1`].
#[derive(Clone, Debug)]
pub struct MyEventHandlerService1Client {
    proxy: ::nameko::ServiceProxy,
}
impl MyEventHandlerService1Client {
    /// A client sending its calls through `client`.
    pub fn new(client: &::nameko::ClusterRpcClient) -> Self {
        Self {
            proxy: client.service("my_event_handler_service_1"),
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
impl ::nameko::__private::ServiceClient for MyEventHandlerService1Client {
    const SERVICE_NAME: &'static str = "my_event_handler_service_1";
    fn from_client(client: &::nameko::ClusterRpcClient) -> Self {
        Self::new(client)
    }
}
impl ::nameko::__private::Dependency for MyEventHandlerService1Client {
    async fn build(
        cx: &::nameko::__private::DependencyContext,
        _field: &'static str,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self::new(&cx.rpc_client().await?))
    }
}
/// Handles `my_event` too.
pub struct MyEventHandlerService2;
impl ::nameko::__private::Dependencies for MyEventHandlerService2 {
    async fn build(
        _cx: &::nameko::__private::DependencyContext,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self)
    }
}
impl MyEventHandlerService2 {
    async fn handle_event(&self, payload: String) {
        tracing::info!("my_event_handler_service_2 received: {payload}");
    }
}
impl ::nameko::__private::Service for MyEventHandlerService2 {
    const NAME: &'static str = "my_event_handler_service_2";
    fn entrypoints() -> ::std::vec::Vec<::nameko::__private::BoundEntrypoint<Self>> {
        ::std::convert::From::from([
            ::nameko::__private::BoundEntrypoint::<
                Self,
            >::new(
                ::nameko::__private::EventHandler::new(
                        "my_event_publisher_service",
                        "my_event",
                    )
                    .handler_type(::nameko::__private::HandlerType::ServicePool)
                    .reliable_delivery(true)
                    .requeue_on_error(false),
                ::nameko::__private::MethodInfo::new(
                    "handle_event",
                    &["payload"],
                    &[],
                    &[],
                ),
                |this, body| {
                    async move {
                        let payload = <String as ::nameko::__private::EventPayload<
                            _,
                        >>::decode_payload(&body.0)?;
                        {
                            let _ = this.handle_event(payload).await;
                            ::std::result::Result::Ok(())
                        }
                    }
                },
            ),
        ])
    }
}
::nameko::__private::inventory::submit! {
    ::nameko::__private::ServiceRegistration::of:: < MyEventHandlerService2 > ()
}
///Typed client for the `my_event_handler_service_2` service, generated by `#[service]` on [`MyEventHandlerService2`].
#[derive(Clone, Debug)]
pub struct MyEventHandlerService2Client {
    proxy: ::nameko::ServiceProxy,
}
impl MyEventHandlerService2Client {
    /// A client sending its calls through `client`.
    pub fn new(client: &::nameko::ClusterRpcClient) -> Self {
        Self {
            proxy: client.service("my_event_handler_service_2"),
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
impl ::nameko::__private::ServiceClient for MyEventHandlerService2Client {
    const SERVICE_NAME: &'static str = "my_event_handler_service_2";
    fn from_client(client: &::nameko::ClusterRpcClient) -> Self {
        Self::new(client)
    }
}
impl ::nameko::__private::Dependency for MyEventHandlerService2Client {
    async fn build(
        cx: &::nameko::__private::DependencyContext,
        _field: &'static str,
    ) -> ::std::result::Result<Self, ::nameko::__private::Error> {
        ::std::result::Result::Ok(Self::new(&cx.rpc_client().await?))
    }
}

//! Closes a race in Pingora's draining. When a draining process stops listening, the proxy
//! at once drops every connection that is waiting for a request (`http_cleanup`), and that
//! includes a connection accepted in the last instant before the listener closed whose
//! request bytes are still on their way: the client sees a reset, during every reload,
//! about once per ten thousand requests under load. [`Lingering`] runs that cleanup a
//! little later, so such a request is read and answered (with `Connection: close`, as
//! everything while draining); connections idle since before the drain began are closed
//! as before, [`LINGER`] later.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// How long after the listener closed waiting connections are dropped.
pub const LINGER: Duration = Duration::from_secs(1);

/// An HTTP app (Pingora's proxy) whose cleanup waits [`LINGER`].
pub struct Lingering<A> {
    inner: Arc<A>,
}

impl<A> Lingering<A> {
    pub fn new(inner: A) -> Self {
        Lingering {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for Lingering<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(LINGER).await;
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

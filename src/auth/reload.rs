//! SIGHUP re-reads the keys file (also what logrotate sends: the access log is reopened
//! by its own handler). Pingora does not handle SIGHUP; `main` ignores it until this
//! service and the log handler are up.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Auth;

pub struct KeysReload(pub Arc<Auth>);

#[async_trait]
impl BackgroundService for KeysReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP: the keys file is read at start only");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match self.0.reload() {
                    Ok((principals, keys)) => {
                        tracing::info!(principals, keys, "SIGHUP: keys file reloaded");
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: keys file not reloaded, the keys in use stay:\n{e}");
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

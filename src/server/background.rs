//! A server on its own thread and runtime, for callers that are not async (tests,
//! examples, a game that hosts its own chat).

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use super::config::ServerConfig;
use super::hooks::ServerHooks;
use super::serve::{Server, ServerHandle};

/// A server running on a background thread, started by [`spawn_background`].
///
/// Dropping it shuts the server down and joins the thread, like
/// [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RunningServer {
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The WebSocket URL, such as `ws://127.0.0.1:41234/websocket`.
    pub fn url(&self) -> String {
        self.handle.url()
    }

    /// A handle for pushing, kicking, presence and metrics.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Shuts the server down gracefully and waits for its thread. Bounded by the
    /// configured shutdown timeout plus the close linger.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.handle.begin_shutdown();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the server thread panicked");
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds a server and serves it on a new thread with its own single-threaded tokio
/// runtime. Returns once the listener is bound, so clients may connect at once.
///
/// ```
/// use bevy_im::server::{AcceptAll, ServerConfig, spawn_background};
/// let mut config = ServerConfig::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// let server = spawn_background(config, AcceptAll).unwrap();
/// assert!(server.url().starts_with("ws://127.0.0.1:"));
/// server.shutdown();
/// ```
pub fn spawn_background(
    config: ServerConfig,
    hooks: impl ServerHooks,
) -> io::Result<RunningServer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("im-server".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match Server::bind(config, hooks).await {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.handle()));
                        server.serve().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    match rx.recv() {
        Ok(Ok(handle)) => Ok(RunningServer {
            handle,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("the server thread exited before binding"))
        }
    }
}

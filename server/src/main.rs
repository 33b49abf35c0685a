//! `chat-server`: reads the environment, starts, serves until SIGTERM or Ctrl-C.
//! `chat-server health`: exits 0 if the server configured by the same
//! environment answers its readiness probe (for container health checks:
//! the image has no shell, curl or wget).
//! `chat-server check`: exits 0 if the environment is a configuration the
//! server starts with, 2 with the reason if not; starts nothing.

use std::process::ExitCode;

use chat_server::config::Config;
use chat_server::{auth, server, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    auth::password::return_hash_memory_to_the_system();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chat-server: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        Some("health") => return health(config.listen_addr.port()),
        Some("check") => return ExitCode::SUCCESS,
        _ => {}
    }
    telemetry::init(&config);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "chat-server stopped");
            eprintln!("chat-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks `GET /readyz` of the server on this host's `port`.
fn health(port: u16) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let ask = || -> std::io::Result<String> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut answer = [0u8; 64];
        let n = stream.read(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
    };
    match ask() {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!(
                "chat-server: not ready: {}",
                answer.lines().next().unwrap_or("")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chat-server: not reachable on port {port}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let state = server::build_state(&config).await?;
    let listener = server::bind(config.listen_addr)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        pod = %config.pod_name,
        store = state.store.name(),
        redis = config.redis.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "chat-server listening"
    );
    let app = server::app(state.clone(), &config);
    server::serve(
        listener,
        app,
        state,
        shutdown_signal(),
        config.shutdown_grace,
        config.limits.header_timeout,
    )
    .await?;
    tracing::info!("chat-server stopped");
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C (a terminal).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

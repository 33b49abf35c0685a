//! `chat-server`: reads the environment, starts, serves until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use chat_server::config::Config;
use chat_server::{auth, http, server, telemetry};

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

async fn run(config: Config) -> anyhow::Result<()> {
    let state = server::build_state(&config).await?;
    let listener = server::bind(config.listen_addr)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        pod = %config.pod_name,
        store = state.store.name(),
        redis = config.redis_url.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "chat-server listening"
    );
    let app = http::router(state.clone(), &config.cors_origins, &config.web_dir);
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

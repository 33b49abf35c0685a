//! `chat-operator`: `crd` prints the CustomResourceDefinition, `render -f`
//! prints what would be applied for a ChatCluster, `run` runs the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};
use kube::{Client, CustomResourceExt};
use tokio::sync::watch;

use chat_operator::controller;
use chat_operator::crd::ChatCluster;
use chat_operator::leader;
use chat_operator::metrics::{self, Metrics};
use chat_operator::{desired, render};

#[derive(Parser)]
#[command(
    name = "chat-operator",
    version,
    about = "Kubernetes operator for chatcluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print, without a cluster, every object the operator would apply for a ChatCluster.
    Render {
        /// A ChatCluster manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

#[derive(Args, Default)]
struct RunArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "CHAT_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: Option<SocketAddr>,
    /// Compete for a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "CHAT_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The Lease's name.
    #[arg(
        long,
        env = "CHAT_OPERATOR_LEASE_NAME",
        default_value = "chat-operator"
    )]
    lease_name: String,
    /// The Lease's namespace (the operator's own; default: the client's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Watch only this namespace's ChatClusters (and children): the
    /// operator then needs a Role there rather than a ClusterRole (the
    /// chart's `watchNamespace`). Default: every namespace.
    #[arg(long, env = "CHAT_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This replica's name in the Lease and in events (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log lines as JSON (for log collectors) or as text for people.
    #[arg(long, env = "CHAT_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    #[default]
    Json,
    Pretty,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli
        .command
        .unwrap_or_else(|| Command::Run(RunArgs::parse_default()));
    match command {
        Command::Crd => {
            print!(
                "{}",
                render::yaml(&ChatCluster::crd()).context("serializing the CRD")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let cluster: ChatCluster = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{} is not a ChatCluster", file.display()))?;
            // Fresh values, as the operator would generate on first apply.
            let secrets = render::SecretValues::generated(
                desired::generate_jwt_key(),
                desired::generate_password(),
                desired::MongoDbCredentials::generate(),
            );
            let objects = render::children(&cluster, &secrets)?;
            print!("{}", render::to_yaml(&objects)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            init_tracing(args.log_format);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(run_controller(args))
        }
    }
}

impl RunArgs {
    /// The `run` arguments when no subcommand is given: flags absent, so
    /// environment variables and defaults apply.
    fn parse_default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        Only::parse_from(["chat-operator"]).args
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// SIGTERM or Ctrl-C.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// `config` with `limit` on connecting, sending and each response.
fn with_timeouts(mut config: kube::Config, limit: Duration) -> kube::Config {
    config.connect_timeout = Some(limit);
    config.write_timeout = Some(limit);
    config.read_timeout = Some(limit);
    // The limit counts from the request, not from when a pooled connection
    // went idle.
    config.reset_reader_on_write = true;
    config
}

async fn run_controller(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = kube::Config::infer()
        .await
        .context("configuring the Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    // Watches are long reads that kube-runtime bounds itself; every other
    // call has a deadline, so a reconcile cannot hang on an API server that
    // stopped answering, and the leader election's calls a shorter one.
    let watch_client = Client::try_from(config.clone()).context("building the watch client")?;
    let client = Client::try_from(with_timeouts(config.clone(), Duration::from_secs(30)))
        .context("building the Kubernetes client")?;
    let election_client = Client::try_from(with_timeouts(config, Duration::from_secs(5)))
        .context("building the leader election client")?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        termination().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    if let Some(addr) = args.metrics_addr {
        let server = metrics::serve(addr, metrics.clone(), until_stopped());
        let listening = tokio::spawn(server);
        // A port already taken is a configuration error worth stopping for.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if listening.is_finished() {
            match listening.await {
                Ok(Err(error)) => {
                    return Err(error).with_context(|| format!("serving metrics on {addr}"));
                }
                Ok(Ok(())) => return Ok(ExitCode::SUCCESS),
                Err(error) => return Err(error).context("metrics server"),
            }
        }
    }

    // Ready once the API server answers and the CRD is installed.
    let watched = args.watch_namespace.clone().filter(|n| !n.is_empty());
    let clusters: Api<ChatCluster> = controller::scoped(&client, watched.as_deref());
    loop {
        match clusters.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, "cannot list ChatClusters yet (is the CRD installed?); retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = until_stopped() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    }
    metrics.set_ready(true);

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "chat-operator".to_owned());
    let context = Arc::new(controller::Context::new(
        client.clone(),
        metrics.clone(),
        Some(identity.clone()),
    ));

    if !args.leader_election {
        metrics.leader.set(1);
        tracing::info!("leader election off: reconciling");
        controller::run(context, watch_client, watched.clone(), until_stopped()).await;
        return Ok(ExitCode::SUCCESS);
    }

    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let mut leadership = leader::compete(election_client, &args.lease_name, &namespace, &identity)
        .await
        .with_context(|| format!("preparing Lease {namespace}/{}", args.lease_name))?;
    tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting to become the leader");
    tokio::select! {
        acquired = leadership.acquired() => {
            if !acquired {
                anyhow::bail!("leader election stopped before this replica became the leader");
            }
        }
        _ = until_stopped() => {
            leadership.release().await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    metrics.leader.set(1);
    tracing::info!(%identity, "became the leader: reconciling");
    // A stop lets the reconciles in flight finish; a lost Lease does not:
    // dropping the controller cancels them at once, since a follower may
    // already be reconciling.
    let stepped_down = tokio::select! {
        () = controller::run(context, watch_client, watched.clone(), until_stopped()) => false,
        () = leadership.lost() => true,
    };
    metrics.leader.set(0);
    if stepped_down {
        tracing::error!("lost the leader lease; exiting so a restart rejoins as a follower");
        return Ok(ExitCode::FAILURE);
    }
    leadership.release().await;
    Ok(ExitCode::SUCCESS)
}

//! `chat-operator`: `crd` prints the CustomResourceDefinition, `render -f`
//! prints what would be applied for a ChatCluster, `run` runs the controller.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use rand::RngCore;

use chat_operator::crd::ChatCluster;
use chat_operator::render;

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
    Run,
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print, without a cluster, every object the operator would apply for a ChatCluster.
    Render {
        /// A ChatCluster manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
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
    match cli.command.unwrap_or(Command::Run) {
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
            // A fresh key, as the operator would generate on first apply.
            let mut key = [0u8; 48];
            rand::rng().fill_bytes(&mut key);
            let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
            let objects = render::children(&cluster, &key)?;
            print!("{}", render::to_yaml(&objects)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            eprintln!(
                "chat-operator: the controller is not implemented yet; `crd` and `render` work"
            );
            Ok(ExitCode::from(2))
        }
    }
}

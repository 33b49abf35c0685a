//! `chat-operator`: the Kubernetes operator that reconciles ChatCluster
//! resources into chat-server pods, Redis and MongoDB.
//!
//! The controller itself arrives with the operator work (issue 4); until then
//! the binary only answers `--version` and `--help`, and refuses to pretend it
//! reconciles anything.

use std::process::ExitCode;

const USAGE: &str = "\
usage: chat-operator [run | crd | render -f FILE | --version | --help]

The ChatCluster controller is not implemented yet; see README.md.";

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version" | "-V") => {
            println!("chat-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

//! A real Kubernetes API server for tests: etcd and kube-apiserver, built from
//! the Go module proxy by `scripts/build-kube.sh` (the versions are in
//! this folder's go.mod), started on free loopback ports with their data in a
//! fresh directory.
//!
//! The processes are started from a thread that lives as long as the test
//! process and carry `PR_SET_PDEATHSIG`, so they die with the tests however
//! those end (a panic, a failed assertion, Ctrl-C, SIGKILL).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The token of the administrator (group `system:masters`).
const ADMIN_TOKEN: &str = "chatcluster-test-admin-token";

pub struct ApiServer {
    pub url: String,
    /// The directory with the data, certificates, logs and kubeconfigs.
    pub dir: PathBuf,
    /// Killed on drop; for the shared server, never dropped: the processes
    /// die with the test process (see the module comment).
    processes: Vec<Child>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
        // After a failure the logs are worth keeping; the next run removes
        // them (see `fresh_dir`).
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the binaries are: `CHAT_TEST_KUBE_BIN`, or where the build script
/// puts them.
fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CHAT_TEST_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".cache/kube/bin"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run scripts/build-kube.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A loopback port free now, below Linux's ephemeral range (32768 and up):
/// a port the kernel handed out for `:0` is also what it hands the next
/// outgoing connection of any process, so etcd could find its port taken
/// by another test's client ("address already in use") before it binds.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(10_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range")
}

/// The directory for one server's files, under cargo's scratch directory.
/// Directories left by test processes that no longer run are removed first.
fn fresh_dir() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("apiserver");
    std::fs::create_dir_all(&base).expect("creating the scratch directory");
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(&base)
        .expect("creating the server's directory")
        .keep()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A service-account signing key, ECDSA P-256: the private key (PKCS#8) and
/// the public key (SubjectPublicKeyInfo), both PEM.
fn signing_key() -> (String, String) {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    // The SubjectPublicKeyInfo header of a P-256 key (id-ecPublicKey,
    // prime256v1) before its 65-byte uncompressed point.
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("generating a key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("reading the generated key");
    let mut public = P256_SPKI_PREFIX.to_vec();
    public.extend_from_slice(pair.public_key().as_ref());
    (
        pem("PRIVATE KEY", pkcs8.as_ref()),
        pem("PUBLIC KEY", &public),
    )
}

/// Starts `commands` from a thread that never ends, each dying with this
/// process. Returns them as started.
fn spawn_for_life(commands: Vec<Command>) -> Vec<Child> {
    let (sender, started) = mpsc::channel();
    std::thread::spawn(move || {
        let children: Vec<Child> = commands
            .into_iter()
            .map(|mut command| {
                // SAFETY: prctl is async-signal-safe and touches no memory of
                // the parent.
                unsafe {
                    command.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                command.spawn().expect("starting a server process")
            })
            .collect();
        let _ = sender.send(children);
        // PR_SET_PDEATHSIG fires when the thread that forked ends: this one
        // must outlive the tests.
        loop {
            std::thread::park();
        }
    });
    started.recv().expect("the spawning thread")
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .expect("creating a log file")
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub fn start() -> ApiServer {
        Self::start_with("kube-apiserver")
    }

    /// [`ApiServer::start`] with another kube-apiserver binary of the same
    /// directory (`kube-apiserver-oldest`: the oldest Kubernetes claimed).
    pub fn start_with(apiserver_binary: &str) -> ApiServer {
        let dir = fresh_dir();
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let (private_key, public_key) = signing_key();
        std::fs::write(dir.join("sa.key"), private_key).expect("writing the key");
        std::fs::write(dir.join("sa.pub"), public_key).expect("writing the key");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .expect("writing the token file");

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(binary("etcd"));
        etcd.args(["--data-dir", &dir.join("etcd").display().to_string()])
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            // Test data: durability is not the point, speed is.
            .arg("--unsafe-no-fsync")
            .args(["--log-level", "warn"])
            .stdout(log_file(&dir, "etcd.log"))
            .stderr(log_file(&dir, "etcd.log"));

        let key = dir.join("sa.key").display().to_string();
        let public_key = dir.join("sa.pub").display().to_string();
        let mut apiserver = Command::new(binary(apiserver_binary));
        apiserver
            .args(["--etcd-servers", &etcd_url])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--advertise-address", "127.0.0.1"])
            .args(["--secure-port", &api_port.to_string()])
            .args(["--cert-dir", &dir.join("certs").display().to_string()])
            .args([
                "--token-auth-file",
                &dir.join("tokens.csv").display().to_string(),
            ])
            .args(["--authorization-mode", "RBAC"])
            // As on clusters that enable it (OpenShift among them): setting
            // blockOwnerDeletion on a child needs `update` on its owner's
            // finalizers.
            .args([
                "--enable-admission-plugins",
                "OwnerReferencesPermissionEnforcement",
            ])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-account-key-file", &public_key])
            .args(["--service-account-signing-key-file", &key])
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            .args(["--endpoint-reconciler-type", "none"])
            .args(["--enable-priority-and-fairness=false"])
            .args(["--profiling=false"])
            .stdout(log_file(&dir, "kube-apiserver.log"))
            .stderr(log_file(&dir, "kube-apiserver.log"));

        let processes = spawn_for_life(vec![etcd, apiserver]);
        let server = ApiServer {
            url: format!("https://127.0.0.1:{api_port}"),
            dir,
            processes,
        };
        server.write_kubeconfig("admin", ADMIN_TOKEN);
        server.wait_ready();
        server
    }

    /// Writes `<dir>/<user>.kubeconfig` for a bearer token, trusting the
    /// API server's self-signed certificate; returns its path.
    pub fn write_kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{user}.kubeconfig"));
        let certificate = self.dir.join("certs/apiserver.crt");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n    namespace: default\n\
             users:\n- name: {user}\n  user:\n    token: {token}\n",
            url = self.url,
            ca = certificate.display(),
        );
        let mut file = std::fs::File::create(&path).expect("writing a kubeconfig");
        file.write_all(text.as_bytes())
            .expect("writing a kubeconfig");
        path
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A client from a kubeconfig this server wrote.
    pub async fn client_from(&self, kubeconfig: &Path) -> Client {
        let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client configuration");
        Client::try_from(config).expect("a client")
    }

    pub async fn admin(&self) -> Client {
        self.client_from(&self.admin_kubeconfig()).await
    }

    /// The last lines of a process's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/readyz` (which covers etcd, RBAC bootstrap and the CRD
    /// controllers) until it answers 200, for up to two minutes.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        loop {
            let ready = self.dir.join("certs/apiserver.crt").exists()
                && runtime.block_on(async {
                    let client = self.admin().await;
                    let request = http::Request::get("/readyz")
                        .body(Vec::new())
                        .expect("a request");
                    client
                        .request_text(request)
                        .await
                        .is_ok_and(|text| text == "ok")
                });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API server was not ready within 2 minutes\n--- kube-apiserver.log\n{}\n--- etcd.log\n{}",
                self.log_tail("kube-apiserver.log"),
                self.log_tail("etcd.log"),
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

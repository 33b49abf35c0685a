//! `chat-operator run` as a process: its endpoints answer before it can reach
//! a cluster, it is not ready until it does, and SIGTERM stops it cleanly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((code, body))
}

#[test]
fn serves_health_and_metrics_and_is_not_ready_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // An API server address where nothing listens.
    let unused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{unused}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\nusers:\n- name: test\n  user:\n    token: not-a-real-token\n"
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("CHAT_OPERATOR_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Some(answer) = get(port, "/healthz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no /healthz within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.0, 200);
    let ready = get(port, "/readyz").unwrap();
    assert_eq!(
        ready.0, 503,
        "not ready while the API server is unreachable"
    );
    let metrics = get(port, "/metrics").unwrap();
    assert_eq!(metrics.0, 200);
    for name in [
        "chat_operator_reconciles_total 0",
        "chat_operator_reconcile_duration_seconds_count 0",
        "chat_operator_leader 0",
    ] {
        assert!(metrics.1.contains(name), "{name} missing:\n{}", metrics.1);
    }

    let stderr = child.stderr.take().unwrap();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = logs.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut logs = collected.lock().unwrap();
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs
        .lock()
        .unwrap()
        .contains("cannot list ChatClusters yet")
    {
        assert!(
            Instant::now() < deadline,
            "no warning about the unreachable API server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, "/readyz").unwrap().0, 503, "still not ready");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let logs = logs.lock().unwrap().clone();
    assert!(exit.success(), "{exit:?}\n{logs}");
    // JSON logs, one object per line, and never the token.
    for line in logs.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
    }
    assert!(!logs.contains("not-a-real-token"), "{logs}");
}

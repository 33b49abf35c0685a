//! The start scripts of a highly available managed Redis, exactly as the
//! operator renders them into its StatefulSet and Sentinel Deployment, run
//! as real `redis-server` processes on loopback addresses (127.0.77.x, each
//! "pod" on its own address with the ports the pods use): the first start,
//! a failover after the primary is killed with SIGKILL, the killed pod
//! coming back as a replica of the new primary, and a restarted Sentinel
//! finding the primary again. What a real cluster adds (Services, DNS,
//! scheduling) is not here; docs/kubernetes.md says what is verified where.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_operator::crd::ChatCluster;
use chat_operator::desired::{redis_sentinel_deployment, redis_statefulset};
use serde_json::{Value, json};

const PASSWORD: &str = "test-password";

/// A "pod": its process is killed when this drops.
struct Pod(Child);

impl Pod {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ip(ordinal: u8) -> String {
    format!("127.0.77.{}", 10 + ordinal)
}

fn sentinel_ip(ordinal: u8) -> String {
    format!("127.0.77.{}", 20 + ordinal)
}

/// The first container of the pod template of a rendered object.
fn container(object: impl serde::Serialize) -> Value {
    serde_json::to_value(object).unwrap()["spec"]["template"]["spec"]["containers"][0].clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Runs a rendered container's command and arguments with `env`, expanding
/// `$(VAR)` in the arguments from it as the kubelet does.
fn run(container: &Value, extra_args: &[String], env: &HashMap<&str, String>) -> Pod {
    let command = strings(&container["command"]);
    let mut args: Vec<String> = container
        .get("args")
        .filter(|a| a.is_array())
        .map(strings)
        .unwrap_or_default()
        .into_iter()
        .map(|arg| {
            env.iter()
                .fold(arg, |arg, (k, v)| arg.replace(&format!("$({k})"), v))
        })
        .collect();
    args.extend_from_slice(extra_args);
    let child = Command::new(&command[0])
        .args(&command[1..])
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(Stdio::null())
        .spawn()
        .expect("run sh (redis-server and redis-cli are installed by scripts/test.sh)");
    Pod(child)
}

struct Topology {
    redis: Value,
    sentinel: Value,
    dir: tempfile::TempDir,
}

impl Topology {
    fn new() -> Self {
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chatcluster.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat"},
            "spec": {"redis": {"managed": {"replicas": 2}}},
        }))
        .unwrap();
        Self {
            redis: container(redis_statefulset(&cluster).unwrap().unwrap()),
            sentinel: container(redis_sentinel_deployment(&cluster).unwrap().unwrap()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Redis pod `ordinal`, its data kept in its own directory across restarts.
    fn start_redis(&self, ordinal: u8) -> Pod {
        let data = self.dir.path().join(format!("redis-{ordinal}"));
        std::fs::create_dir_all(&data).unwrap();
        let env = HashMap::from([
            ("POD_NAME", format!("demo-redis-{ordinal}")),
            ("POD_IP", redis_ip(ordinal)),
            ("REDIS_PASSWORD", PASSWORD.to_owned()),
            ("REDISCLI_AUTH", PASSWORD.to_owned()),
            // The Services: here, the first Sentinel and the first Redis pod.
            ("SENTINEL_HOST", sentinel_ip(0)),
            ("REDIS_HOST", redis_ip(0)),
            ("MASTER_NAME", "chat".to_owned()),
        ]);
        let container = self.redis.clone();
        let args = strings(&container["args"])
            .into_iter()
            .map(|arg| {
                if arg == "/data" {
                    data.display().to_string()
                } else {
                    arg
                }
            })
            .collect::<Vec<_>>();
        let mut container = container;
        container["args"] = json!(args);
        run(&container, &["--bind".to_owned(), redis_ip(ordinal)], &env)
    }

    fn start_sentinel(&self, ordinal: u8) -> Pod {
        let env = HashMap::from([
            ("POD_NAME", format!("demo-redis-sentinel-{ordinal}")),
            ("POD_IP", sentinel_ip(ordinal)),
            ("REDISCLI_AUTH", PASSWORD.to_owned()),
            ("SENTINEL_HOST", sentinel_ip(0)),
            ("REDIS_HOST", redis_ip(0)),
            ("MASTER_NAME", "chat".to_owned()),
            // Quicker than the pods' 5 s, for a short test.
            ("DOWN_AFTER_MS", "1000".to_owned()),
            (
                "CONFIG",
                path(&self.dir.path().join(format!("sentinel-{ordinal}.conf"))),
            ),
            ("BIND", sentinel_ip(ordinal)),
        ]);
        run(&self.sentinel, &[], &env)
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// A command's answer from the server at `ip:port`, as text lines; empty if
/// it cannot be reached.
fn ask(ip: &str, port: u16, args: &[&str]) -> Vec<String> {
    let client = redis::Client::open(format!("redis://:{PASSWORD}@{ip}:{port}/")).unwrap();
    let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return Vec::new();
    };
    let answer: redis::RedisResult<redis::Value> =
        redis::cmd(args[0]).arg(&args[1..]).query(&mut connection);
    let mut lines = Vec::new();
    flatten(answer.unwrap_or(redis::Value::Nil), &mut lines);
    lines
}

fn flatten(value: redis::Value, into: &mut Vec<String>) {
    match value {
        redis::Value::BulkString(bytes) => {
            into.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned))
        }
        redis::Value::SimpleString(s) => into.push(s),
        redis::Value::Okay => into.push("OK".into()),
        redis::Value::Int(n) => into.push(n.to_string()),
        redis::Value::VerbatimString { text, .. } => into.extend(text.lines().map(str::to_owned)),
        redis::Value::Array(items) => items.into_iter().for_each(|i| flatten(i, into)),
        _ => {}
    }
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn replication(ordinal: u8) -> Vec<String> {
    ask(&redis_ip(ordinal), 6379, &["INFO", "replication"])
}

fn primary_named_by(sentinel: u8) -> Option<String> {
    ask(
        &sentinel_ip(sentinel),
        26379,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "chat"],
    )
    .into_iter()
    .next()
}

#[test]
fn the_rendered_start_scripts_elect_fail_over_and_rejoin() {
    let topology = Topology::new();
    let mut redis0 = topology.start_redis(0);
    let _redis1 = topology.start_redis(1);
    let mut sentinels: Vec<Pod> = (0..3).map(|i| topology.start_sentinel(i)).collect();

    // First start: pod 0 is the primary, pod 1 its replica, and the
    // Sentinels agree on it and can fail it over.
    wait_until("pod 1 to replicate pod 0", Duration::from_secs(30), || {
        replication(0).iter().any(|l| l.contains("state=online"))
    });
    // Each Sentinel must know the replica (from the primary's INFO, read
    // every 10 s) or it cannot promote it.
    for sentinel in 0..3 {
        wait_until(
            "the Sentinels to see each other and the replica",
            Duration::from_secs(30),
            || {
                let ip = sentinel_ip(sentinel);
                primary_named_by(sentinel) == Some(redis_ip(0))
                    && ask(&ip, 26379, &["SENTINEL", "CKQUORUM", "chat"])
                        .first()
                        .is_some_and(|l| l.starts_with("OK"))
                    && ask(&ip, 26379, &["SENTINEL", "REPLICAS", "chat"]).contains(&redis_ip(1))
            },
        );
    }
    assert!(replication(1).contains(&"role:slave".to_owned()));
    ask(&redis_ip(0), 6379, &["SET", "acked", "yes"]);
    assert_eq!(ask(&redis_ip(0), 6379, &["WAIT", "1", "1000"]), ["1"]);

    // The primary killed: every Sentinel names pod 1.
    redis0.kill();
    for sentinel in 0..3 {
        wait_until("the failover", Duration::from_secs(30), || {
            primary_named_by(sentinel) == Some(redis_ip(1))
        });
    }
    assert!(replication(1).contains(&"role:master".to_owned()));

    // Pod 0 restarted: it follows the new primary rather than taking writes
    // beside it, and has what was acked.
    let _redis0 = topology.start_redis(0);
    wait_until(
        "pod 0 to rejoin as a replica",
        Duration::from_secs(30),
        || {
            let info = replication(0);
            info.contains(&"role:slave".to_owned())
                && info.contains(&format!("master_host:{}", redis_ip(1)))
                && info.contains(&"master_link_status:up".to_owned())
        },
    );
    assert_eq!(ask(&redis_ip(0), 6379, &["GET", "acked"]), ["yes"]);

    // A Sentinel restarted learns the primary from the others.
    sentinels[2].kill();
    sentinels[2] = topology.start_sentinel(2);
    wait_until("the restarted Sentinel", Duration::from_secs(30), || {
        primary_named_by(2) == Some(redis_ip(1))
    });
}

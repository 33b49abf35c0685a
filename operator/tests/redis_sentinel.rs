//! The scripts of a highly available managed Redis, exactly as the operator
//! renders them into its StatefulSets, run as real `redis-server` processes
//! on loopback addresses (127.0.N.x, each "pod" on its own address with the
//! ports the pods use, each test on its own N): the first start, a failover
//! after the primary is killed with SIGKILL, the killed pod coming back as
//! a replica of the new primary, a restarted Sentinel finding the primary
//! again, Sentinels replaced with empty volumes, a full restart, a
//! standalone server gaining replicas, and a replica kept from promotion
//! until it has synced. Here the pods' stable names are
//! their addresses; what a real cluster adds (DNS names that move to new
//! addresses, Services, scheduling) is in tests/node.rs.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_operator::crd::ChatCluster;
use chat_operator::desired::{redis_sentinel_statefulset, redis_statefulset};
use serde_json::{Value, json};

const PASSWORD: &str = "test-password";

/// A "pod": its process, and for a Redis pod its readiness probe run every
/// half second as the kubelet would (the probe makes a synced replica
/// promotable); both stop when this drops.
struct Pod(Child, Option<Probe>);

struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Pod {
    fn kill(&mut self) {
        if let Some(probe) = self.1.take() {
            probe.stop.store(true, Ordering::Relaxed);
            let _ = probe.thread.join();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Runs the rendered container's readiness probe with `env` until the
    /// pod is killed.
    fn probed(mut self, container: &Value, env: HashMap<&'static str, String>) -> Self {
        let command = strings(&container["readinessProbe"]["exec"]["command"]);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let _ = Command::new(&command[0])
                    .args(&command[1..])
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .envs(&env)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        self.1 = Some(Probe { stop, thread });
        self
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
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
    Pod(child, None)
}

struct Topology {
    /// The third byte of this test's loopback addresses.
    net: u8,
    replicas: u8,
    redis: Value,
    sentinel: Value,
    dir: tempfile::TempDir,
}

impl Topology {
    fn new(net: u8, replicas: u8) -> Self {
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chatcluster.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat"},
            "spec": {"redis": {"managed": {"replicas": replicas}}},
        }))
        .unwrap();
        Self {
            net,
            replicas,
            redis: container(redis_statefulset(&cluster).unwrap().unwrap()),
            sentinel: container(redis_sentinel_statefulset(&cluster).unwrap().unwrap()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn redis_ip(&self, ordinal: u8) -> String {
        format!("127.0.{}.{}", self.net, 10 + ordinal)
    }

    fn sentinel_ip(&self, ordinal: u8) -> String {
        format!("127.0.{}.{}", self.net, 20 + ordinal)
    }

    /// What the rendered environment gives every pod, with addresses for
    /// names: the pods' and Sentinels' names and the Redis Service (here,
    /// `service`).
    fn env(&self, pod: String, announce: String, service: String) -> HashMap<&'static str, String> {
        let pods = |ip: fn(&Self, u8) -> String, count: u8| {
            (0..count)
                .map(|i| ip(self, i))
                .collect::<Vec<_>>()
                .join(" ")
        };
        HashMap::from([
            ("POD_NAME", pod),
            ("POD_IP", announce.clone()),
            ("ANNOUNCE", announce),
            ("REDIS_PODS", pods(Self::redis_ip, self.replicas)),
            ("SENTINEL_PODS", pods(Self::sentinel_ip, 3)),
            ("REDIS_HOST", service),
            ("REDISCLI_AUTH", PASSWORD.to_owned()),
            ("MASTER_NAME", "chat".to_owned()),
        ])
    }

    /// Redis pod `ordinal`, its data kept in its own directory across restarts.
    fn start_redis(&self, ordinal: u8) -> Pod {
        self.start_redis_with(ordinal, |_| {})
    }

    /// Redis pod `ordinal`, with its environment adjusted.
    fn start_redis_with(
        &self,
        ordinal: u8,
        adjust: impl FnOnce(&mut HashMap<&'static str, String>),
    ) -> Pod {
        let data = self.dir.path().join(format!("redis-{ordinal}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut env = self.env(
            format!("demo-redis-{ordinal}"),
            self.redis_ip(ordinal),
            String::new(),
        );
        env.insert("REDIS_PASSWORD", PASSWORD.to_owned());
        adjust(&mut env);
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
        run(
            &container,
            &["--bind".to_owned(), self.redis_ip(ordinal)],
            &env,
        )
        .probed(&container, env)
    }

    /// Sentinel `ordinal`, its configuration kept across restarts as on
    /// its volume.
    fn start_sentinel(&self, ordinal: u8) -> Pod {
        self.start_sentinel_at(ordinal, self.sentinel_ip(ordinal))
    }

    /// Sentinel `ordinal` on address `ip`, as a replaced pod comes back.
    fn start_sentinel_at(&self, ordinal: u8, ip: String) -> Pod {
        let mut env = self.env(
            format!("demo-redis-sentinel-{ordinal}"),
            ip.clone(),
            String::new(),
        );
        env.extend([
            // Quicker than the pods' 5 s, for a short test, but not under
            // 3 s: a Sentinel reconnects once a second, so one started a
            // moment before the primary would call it down at 1 s.
            ("DOWN_AFTER_MS", "3000".to_owned()),
            ("CONFIG", path(&self.sentinel_config(ordinal))),
            ("BIND", ip),
        ]);
        run(&self.sentinel, &[], &env)
    }

    fn sentinel_config(&self, ordinal: u8) -> std::path::PathBuf {
        self.dir.path().join(format!("sentinel-{ordinal}.conf"))
    }

    fn replication(&self, ordinal: u8) -> Vec<String> {
        ask(&self.redis_ip(ordinal), 6379, &["INFO", "replication"])
    }

    fn primary_named_by(&self, sentinel: u8) -> Option<String> {
        ask(
            &self.sentinel_ip(sentinel),
            26379,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "chat"],
        )
        .into_iter()
        .next()
    }

    /// The other Sentinels Sentinel `sentinel` knows, by ID.
    fn sentinels_known_by(&self, sentinel: u8) -> Vec<String> {
        let answer = ask(
            &self.sentinel_ip(sentinel),
            26379,
            &["SENTINEL", "SENTINELS", "chat"],
        );
        answer
            .windows(2)
            .filter(|pair| pair[0] == "runid")
            .map(|pair| pair[1].clone())
            .collect()
    }

    /// Whether pod `ordinal` is a replica that has synced and may be
    /// promoted.
    fn promotable(&self, ordinal: u8) -> bool {
        let ip = self.redis_ip(ordinal);
        self.replication(ordinal)
            .contains(&"master_link_status:up".to_owned())
            && ask(&ip, 6379, &["CONFIG", "GET", "replica-priority"]) == ["replica-priority", "100"]
    }

    /// Waits until every Sentinel names pod `primary`, knows each other
    /// replica and exactly the other two Sentinels, and has a quorum, and
    /// every other pod has synced: until a failover could happen.
    fn wait_settled(&self, primary: u8) {
        for sentinel in 0..3 {
            let ip = self.sentinel_ip(sentinel);
            wait_until(
                "the Sentinels to agree on the primary and see the replicas",
                Duration::from_secs(40),
                || {
                    let replicas = ask(&ip, 26379, &["SENTINEL", "REPLICAS", "chat"]);
                    self.primary_named_by(sentinel) == Some(self.redis_ip(primary))
                        && ask(&ip, 26379, &["SENTINEL", "CKQUORUM", "chat"])
                            .first()
                            .is_some_and(|l| l.starts_with("OK"))
                        && (0..self.replicas)
                            .filter(|&r| r != primary)
                            .all(|r| replicas.contains(&self.redis_ip(r)))
                        && self.sentinels_known_by(sentinel).len() == 2
                        && (0..self.replicas)
                            .filter(|&r| r != primary)
                            .all(|r| self.promotable(r))
                },
            );
        }
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

#[test]
fn the_rendered_start_scripts_elect_fail_over_and_rejoin() {
    let topology = Topology::new(77, 2);
    let mut redis0 = topology.start_redis(0);
    let _redis1 = topology.start_redis(1);
    let mut sentinels: Vec<Pod> = (0..3).map(|i| topology.start_sentinel(i)).collect();

    // First start: pod 0 is the primary, pod 1 its replica, and the
    // Sentinels agree on it and can fail it over.
    wait_until("pod 1 to replicate pod 0", Duration::from_secs(30), || {
        topology
            .replication(0)
            .iter()
            .any(|l| l.contains("state=online"))
    });
    topology.wait_settled(0);
    assert!(topology.replication(1).contains(&"role:slave".to_owned()));
    ask(&topology.redis_ip(0), 6379, &["SET", "acked", "yes"]);
    assert_eq!(
        ask(&topology.redis_ip(0), 6379, &["WAIT", "1", "1000"]),
        ["1"]
    );

    // The primary killed: every Sentinel names pod 1.
    redis0.kill();
    for sentinel in 0..3 {
        wait_until("the failover", Duration::from_secs(30), || {
            topology.primary_named_by(sentinel) == Some(topology.redis_ip(1))
        });
    }
    assert!(topology.replication(1).contains(&"role:master".to_owned()));

    // Pod 0 restarted: it follows the new primary rather than taking writes
    // beside it, and has what was acked.
    let _redis0 = topology.start_redis(0);
    wait_until(
        "pod 0 to rejoin as a replica",
        Duration::from_secs(30),
        || {
            let info = topology.replication(0);
            info.contains(&"role:slave".to_owned())
                && info.contains(&format!("master_host:{}", topology.redis_ip(1)))
                && info.contains(&"master_link_status:up".to_owned())
        },
    );
    assert_eq!(ask(&topology.redis_ip(0), 6379, &["GET", "acked"]), ["yes"]);

    // A Sentinel restarted learns the primary from the others.
    sentinels[2].kill();
    sentinels[2] = topology.start_sentinel(2);
    wait_until("the restarted Sentinel", Duration::from_secs(30), || {
        topology.primary_named_by(2) == Some(topology.redis_ip(1))
    });
}

/// A Sentinel replaced with an empty volume on a new address (a new pod,
/// where the address it announces did not stay the same) keeps its ID: the
/// others replace its entry rather than adding one per replacement, which
/// would leave stale voters a failover's majority must count.
#[test]
fn a_replaced_sentinel_is_the_same_voter() {
    let topology = Topology::new(78, 2);
    let mut redis0 = topology.start_redis(0);
    let _redis1 = topology.start_redis(1);
    let mut sentinels: Vec<Pod> = (0..3).map(|i| topology.start_sentinel(i)).collect();
    topology.wait_settled(0);
    for round in 0..3u8 {
        sentinels[2].kill();
        std::fs::remove_file(topology.sentinel_config(2)).unwrap();
        let address = format!("127.0.78.{}", 30 + round);
        sentinels[2] = topology.start_sentinel_at(2, address.clone());
        for sentinel in 0..2 {
            wait_until(
                "the others to know the replaced Sentinel at its new address",
                Duration::from_secs(30),
                || {
                    let known = ask(
                        &topology.sentinel_ip(sentinel),
                        26379,
                        &["SENTINEL", "SENTINELS", "chat"],
                    );
                    topology.sentinels_known_by(sentinel).len() == 2 && known.contains(&address)
                },
            );
        }
    }
    // A few more hellos: still exactly the other two.
    std::thread::sleep(Duration::from_secs(3));
    for sentinel in 0..2 {
        let known = topology.sentinels_known_by(sentinel);
        assert_eq!(known.len(), 2, "Sentinel {sentinel} knows {known:?}");
    }
    redis0.kill();
    for sentinel in 0..2 {
        wait_until("the failover", Duration::from_secs(30), || {
            topology.primary_named_by(sentinel) == Some(topology.redis_ip(1))
        });
    }
}

/// Everything stopped and started again, pods and Sentinels: the Sentinels
/// remember that pod 1 became the primary, so pod 0, which missed writes,
/// follows it rather than winning because it is pod 0.
#[test]
fn after_a_full_restart_the_last_primary_stays_the_primary() {
    let topology = Topology::new(79, 2);
    let mut redis0 = topology.start_redis(0);
    let mut redis1 = topology.start_redis(1);
    let mut sentinels: Vec<Pod> = (0..3).map(|i| topology.start_sentinel(i)).collect();
    topology.wait_settled(0);
    redis0.kill();
    for sentinel in 0..3 {
        wait_until("the failover", Duration::from_secs(30), || {
            topology.primary_named_by(sentinel) == Some(topology.redis_ip(1))
        });
    }
    // Written while pod 0 is down: only pod 1 has it.
    ask(&topology.redis_ip(1), 6379, &["SET", "late", "yes"]);
    // AOF is fsynced every second; a clean stop writes it all.
    redis1.kill();
    sentinels.iter_mut().for_each(Pod::kill);

    let _sentinels: Vec<Pod> = (0..3).map(|i| topology.start_sentinel(i)).collect();
    let _redis0 = topology.start_redis(0);
    let _redis1 = topology.start_redis(1);
    wait_until(
        "pod 0 to follow pod 1 again",
        Duration::from_secs(40),
        || {
            let info = topology.replication(0);
            info.contains(&format!("master_host:{}", topology.redis_ip(1)))
                && info.contains(&"master_link_status:up".to_owned())
        },
    );
    assert!(topology.replication(1).contains(&"role:master".to_owned()));
    assert_eq!(ask(&topology.redis_ip(0), 6379, &["GET", "late"]), ["yes"]);
}

/// A single server (started without Sentinels, announcing no name, as
/// before `replicas` went above 1) gains replicas: the new pods find it
/// through the Service, by the address the connection reached.
#[test]
fn a_single_server_gains_replicas_through_its_service() {
    let topology = Topology::new(80, 3);
    let data = topology.dir.path().join("single");
    std::fs::create_dir_all(&data).unwrap();
    let single = Pod(
        Command::new("redis-server")
            .args([
                "--bind",
                &topology.redis_ip(0),
                "--requirepass",
                PASSWORD,
                "--dir",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        None,
    );
    wait_until("the single server", Duration::from_secs(10), || {
        !topology.replication(0).is_empty()
    });
    ask(&topology.redis_ip(0), 6379, &["SET", "before", "yes"]);
    let start = |ordinal: u8| {
        topology.start_redis_with(ordinal, |env| {
            env.insert("REDIS_HOST", topology.redis_ip(0));
            // The single server does not answer to its new name yet.
            env.insert(
                "REDIS_PODS",
                format!("{} {}", topology.redis_ip(1), topology.redis_ip(2)),
            );
        })
    };
    let _redis1 = start(1);
    let _redis2 = start(2);
    for ordinal in [1, 2] {
        wait_until(
            "the new pods to replicate the single server",
            Duration::from_secs(30),
            || {
                let info = topology.replication(ordinal);
                info.contains(&format!("master_host:{}", topology.redis_ip(0)))
                    && info.contains(&"master_link_status:up".to_owned())
            },
        );
        assert_eq!(
            ask(&topology.redis_ip(ordinal), 6379, &["GET", "before"]),
            ["yes"]
        );
    }
    drop(single);
}

/// A replica that has not synced since it started is never promoted: it has
/// at most its own data from before, stale if it missed writes. Here its
/// primary delays the first sync (diskless, 60 s), so the replica stays
/// unsynced, its readiness probe running, until the test lets the sync go.
#[test]
fn a_replica_becomes_promotable_only_once_it_has_synced() {
    let topology = Topology::new(81, 2);
    let data = topology.dir.path().join("primary");
    std::fs::create_dir_all(&data).unwrap();
    let primary = topology.redis_ip(0);
    let _primary = Pod(
        Command::new("redis-server")
            .args(["--bind", &primary, "--requirepass", PASSWORD])
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "60",
            ])
            .arg("--dir")
            .arg(&data)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        None,
    );
    wait_until("the primary", Duration::from_secs(10), || {
        !topology.replication(0).is_empty()
    });
    let _replica = topology.start_redis_with(1, |env| {
        env.insert("REDIS_HOST", primary.clone());
        env.insert("SENTINEL_PODS", String::new());
    });
    let priority = || {
        ask(
            &topology.redis_ip(1),
            6379,
            &["CONFIG", "GET", "replica-priority"],
        )
    };
    wait_until(
        "the replica to wait for its sync",
        Duration::from_secs(20),
        || {
            topology
                .replication(1)
                .contains(&format!("master_host:{primary}"))
        },
    );
    for _ in 0..10 {
        assert!(
            topology
                .replication(1)
                .contains(&"master_link_status:down".to_owned())
        );
        assert_eq!(priority(), ["replica-priority", "0"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    ask(
        &primary,
        6379,
        &["CONFIG", "SET", "repl-diskless-sync-delay", "0"],
    );
    wait_until(
        "the replica to sync and become promotable",
        Duration::from_secs(20),
        || priority() == ["replica-priority", "100"],
    );
    assert!(
        topology
            .replication(1)
            .contains(&"master_link_status:up".to_owned())
    );
}

//! Configuration from the environment, exactly as DESIGN.md lists it.
//!
//! Everything is parsed and checked before anything starts, and the first bad
//! value stops start-up with one line naming the variable. Parsing is a pure
//! function of a lookup, so every rule is unit tested without touching the
//! process environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;

/// A value that must never reach a log: tokens, keys, URIs with credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub mongodb_uri: Option<Secret>,
    pub mongodb_db: String,
    /// `None`: the in-process bus (one instance only).
    pub redis: Option<RedisConfig>,
    pub data_dir: PathBuf,
    /// `None` in embedded mode when unset: a key is generated and kept in `data_dir`.
    pub jwt_secret: Option<Secret>,
    pub jwt_ttl: Duration,
    /// How long a `client_id` is remembered to dedupe retries.
    pub dedupe_ttl: Duration,
    pub cors_origins: Vec<HeaderValue>,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub shutdown_grace: Duration,
    pub pod_name: String,
    pub web_dir: PathBuf,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub limits: Limits,
}

/// Where Redis is, and what an ack waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub endpoint: RedisEndpoint,
    /// Replicas a message must have reached before it is acked (`WAIT`);
    /// 0 acks once the primary has it.
    pub min_replicas: u32,
    /// How long an ack waits for those replicas before the client is told
    /// `unavailable` (and retries; dedupe makes that safe).
    pub wait_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// `CHAT_REDIS_URL`: one server, or a comma-separated list of a Redis
    /// Cluster's seed nodes.
    Urls(Secret),
    /// `CHAT_REDIS_SENTINELS`: whichever server the Sentinels name as the
    /// primary of `master`, found again after each failover.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        /// `CHAT_REDIS_PASSWORD`, for the Sentinels and the servers alike.
        password: Option<Secret>,
    },
}

/// How much of a pod one client may take (docs/reliability.md has the why of
/// each default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's headers; also how long an idle keep-alive
    /// connection is kept. Slow-header clients are cut off after it.
    pub header_timeout: Duration,
    /// Time to send a request's body and get the answer (not a WebSocket's life).
    pub request_timeout: Duration,
    /// WebSocket connections of one user on one pod.
    pub connections_per_user: usize,
    /// WebSocket connections from one client address on one pod.
    pub connections_per_address: usize,
    /// Bytes waiting to be written to one WebSocket client before it counts as slow.
    pub queue_bytes: usize,
    /// Password hashes (argon2id, 19 MiB each) computed at once.
    pub password_hashes: usize,
    /// Accounts one client address may create per hour (a third at once).
    pub signups_per_address_per_hour: u32,
    /// Peers whose `X-Forwarded-For` names the client (the Ingress, a load
    /// balancer); every other peer is the client itself.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time to send an upload's body and get the answer.
    pub upload_timeout: Duration,
    /// The largest file one upload may carry.
    pub attachment_bytes: usize,
    /// What one user's uploads may add up to (rooms deleted give it back).
    pub upload_quota_bytes: u64,
    /// Upload bytes one pod holds in memory at once (files and pictures being
    /// received or examined); at least one largest file.
    pub upload_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connections_per_user: 20,
            connections_per_address: 200,
            queue_bytes: 4 * 1024 * 1024,
            password_hashes: std::thread::available_parallelism().map_or(2, usize::from),
            signups_per_address_per_hour: 60,
            trusted_proxies: Vec::new(),
            upload_timeout: Duration::from_secs(300),
            attachment_bytes: 10 * 1024 * 1024,
            upload_quota_bytes: 1 << 30,
            upload_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why start-up refused the configuration: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// `name`'s value from `var`, or else the contents of the file that
/// `{name}_FILE` names: secrets mounted as files (Docker Compose's and
/// Kubernetes' volumes) stay out of the environment, which `docker inspect`
/// and `/proc/PID/environ` show. Both set is an error, as is a file that
/// cannot be read (an empty one is unset); surrounding whitespace (the
/// file's last newline) is trimmed by `from_lookup` like any value.
fn value_or_file(
    name: &'static str,
    var: impl Fn(&str) -> Result<Option<String>, ConfigError>,
) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{name}_FILE");
    // Empty counts as unset, as everywhere in the configuration.
    let set = |key: &str| Ok::<_, ConfigError>(var(key)?.filter(|v| !v.trim().is_empty()));
    match (set(name)?, set(&file_var)?) {
        (Some(_), Some(_)) => Err(invalid(name, format!("set {name} or {file_var}, not both"))),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| invalid(name, format!("{file_var}: cannot read {path}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// HMAC keys shorter than the hash output weaken HS256 (RFC 7518 §3.2).
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl Config {
    /// Reads the process environment; each variable may instead name a file
    /// that holds its value, in `NAME_FILE` (see `value_or_file`). A variable
    /// that is not valid UTF-8, or a file that cannot be read, is an error.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut problem = None;
        let config = Self::from_lookup(|name| {
            let var = |key: &str| match std::env::var(key) {
                Ok(value) => Ok(Some(value)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(invalid(name, format!("{key} is not valid UTF-8")))
                }
            };
            value_or_file(name, var).unwrap_or_else(|e| {
                problem.get_or_insert(e);
                None
            })
        });
        match problem {
            Some(problem) => Err(problem),
            None => config,
        }
    }

    /// Builds the configuration from `lookup(name)`; empty values count as unset.
    pub fn from_lookup(
        lookup: impl FnMut(&'static str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut lookup = lookup;
        let mut get = move |name: &'static str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let listen_addr = match get("CHAT_LISTEN_ADDR") {
            Some(v) => v.parse().map_err(|_| {
                invalid(
                    "CHAT_LISTEN_ADDR",
                    format!("{v:?} is not an address like 0.0.0.0:8080"),
                )
            })?,
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };

        let mongodb_uri = get("CHAT_MONGODB_URI").map(Secret::new);
        let is_mongodb_uri = |uri: &Secret| {
            uri.expose().starts_with("mongodb://") || uri.expose().starts_with("mongodb+srv://")
        };
        if mongodb_uri.as_ref().is_some_and(|uri| !is_mongodb_uri(uri)) {
            return Err(invalid(
                "CHAT_MONGODB_URI",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        let mongodb_db = get("CHAT_MONGODB_DB").unwrap_or_else(|| "chat".into());
        if mongodb_db.len() > 63 || mongodb_db.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(invalid(
                "CHAT_MONGODB_DB",
                "must be a MongoDB database name (no / \\ . space \" $, at most 63 bytes)",
            ));
        }

        let redis = parse_redis(&mut get)?;

        let data_dir = PathBuf::from(get("CHAT_DATA_DIR").unwrap_or_else(|| "./data".into()));

        let jwt_secret = get("CHAT_JWT_SECRET").map(Secret::new);
        match &jwt_secret {
            Some(secret) if secret.expose().len() < MIN_JWT_SECRET_LEN => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    format!("must be at least {MIN_JWT_SECRET_LEN} bytes"),
                ));
            }
            None if mongodb_uri.is_some() => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    "is required when CHAT_MONGODB_URI is set (every pod must sign with the same key)",
                ));
            }
            _ => {}
        }

        let jwt_ttl = Duration::from_secs(parse_number(
            &mut get,
            "CHAT_JWT_TTL_SECS",
            900,
            30..=86_400,
        )?);

        let dedupe_ttl = Duration::from_secs(parse_number(
            &mut get,
            "CHAT_DEDUPE_TTL_SECS",
            24 * 3600,
            60..=7 * 24 * 3600,
        )?);

        let cors_origins = match get("CHAT_CORS_ORIGINS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(parse_origin)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };

        let rate_limit_per_sec =
            parse_number(&mut get, "CHAT_RATE_LIMIT_PER_SEC", 10, 1..=100_000)?;
        let rate_limit_burst = parse_number(&mut get, "CHAT_RATE_LIMIT_BURST", 20, 1..=100_000)?;
        let shutdown_grace = Duration::from_secs(parse_number(
            &mut get,
            "CHAT_SHUTDOWN_GRACE_SECS",
            25,
            0..=3_600,
        )?);

        let pod_name = get("CHAT_POD_NAME")
            .or_else(hostname)
            .unwrap_or_else(|| "chat-server".into());
        let web_dir = PathBuf::from(get("CHAT_WEB_DIR").unwrap_or_else(|| "web/dist".into()));

        let log_filter = get("RUST_LOG").unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|e| invalid("RUST_LOG", format!("not a tracing filter: {e}")))?;
        let log_format = match get("CHAT_LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(invalid(
                    "CHAT_LOG_FORMAT",
                    format!("{other:?} is not json or pretty"),
                ));
            }
        };

        let limits = parse_limits(&mut get)?;

        Ok(Self {
            listen_addr,
            mongodb_uri,
            mongodb_db,
            redis,
            data_dir,
            jwt_secret,
            jwt_ttl,
            dedupe_ttl,
            cors_origins,
            rate_limit_per_sec: u32::try_from(rate_limit_per_sec).unwrap_or(u32::MAX),
            rate_limit_burst: u32::try_from(rate_limit_burst).unwrap_or(u32::MAX),
            shutdown_grace,
            pod_name,
            web_dir,
            log_filter,
            log_format,
            limits,
        })
    }
}

fn parse_redis(
    get: &mut impl FnMut(&'static str) -> Option<String>,
) -> Result<Option<RedisConfig>, ConfigError> {
    let urls = get("CHAT_REDIS_URL").map(Secret::new);
    let sentinels = get("CHAT_REDIS_SENTINELS");
    // Behind Sentinel there are replicas to wait for, and a failover that
    // would lose what only the primary had: acks wait for one by default.
    // Checked even without Redis: a typo should not wait for the day it is used.
    let default_replicas = u64::from(sentinels.is_some());
    let min_replicas = parse_number(get, "CHAT_REDIS_MIN_REPLICAS", default_replicas, 0..=16)?;
    let wait_timeout = Duration::from_millis(parse_number(
        get,
        "CHAT_REDIS_WAIT_TIMEOUT_MS",
        1_000,
        10..=10_000,
    )?);
    let endpoint = match (urls, sentinels) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "CHAT_REDIS_SENTINELS",
                "set CHAT_REDIS_URL or CHAT_REDIS_SENTINELS, not both",
            ));
        }
        (Some(urls), None) => {
            // One URL, or a comma-separated list of a Redis Cluster's seed nodes.
            let mut seeds = urls.expose().split(',').map(str::trim).peekable();
            if seeds.peek().is_none_or(|url| url.is_empty()) {
                return Err(invalid("CHAT_REDIS_URL", "is empty"));
            }
            for url in seeds {
                redis::Client::open(url).map_err(|e| {
                    invalid(
                        "CHAT_REDIS_URL",
                        format!("not a Redis URL ({})", e.category()),
                    )
                })?;
            }
            RedisEndpoint::Urls(urls)
        }
        (None, Some(list)) => {
            let sentinels = list
                .split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(|address| {
                    let (host, port) = address.rsplit_once(':').unwrap_or((address, "26379"));
                    match port.parse::<u16>() {
                        Ok(port) if !host.is_empty() && port > 0 => Ok((host.to_owned(), port)),
                        _ => Err(invalid(
                            "CHAT_REDIS_SENTINELS",
                            format!("{address:?} is not host:port"),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            if sentinels.is_empty() {
                return Err(invalid("CHAT_REDIS_SENTINELS", "is empty"));
            }
            let master = get("CHAT_REDIS_MASTER_NAME").unwrap_or_else(|| "chat".into());
            if master.is_empty() || master.contains(char::is_whitespace) {
                return Err(invalid(
                    "CHAT_REDIS_MASTER_NAME",
                    "must be a Sentinel master name (no spaces)",
                ));
            }
            RedisEndpoint::Sentinel {
                sentinels,
                master,
                password: get("CHAT_REDIS_PASSWORD").map(Secret::new),
            }
        }
    };
    Ok(Some(RedisConfig {
        endpoint,
        min_replicas: u32::try_from(min_replicas).unwrap_or(u32::MAX),
        wait_timeout,
    }))
}

fn parse_limits(
    get: &mut impl FnMut(&'static str) -> Option<String>,
) -> Result<Limits, ConfigError> {
    let default = Limits::default();
    let secs = |d: Duration| d.as_secs();
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(Limits {
        header_timeout: Duration::from_secs(parse_number(
            get,
            "CHAT_HTTP_HEADER_TIMEOUT_SECS",
            secs(default.header_timeout),
            1..=3_600,
        )?),
        request_timeout: Duration::from_secs(parse_number(
            get,
            "CHAT_HTTP_REQUEST_TIMEOUT_SECS",
            secs(default.request_timeout),
            1..=3_600,
        )?),
        connections_per_user: count(parse_number(
            get,
            "CHAT_MAX_CONNECTIONS_PER_USER",
            default.connections_per_user as u64,
            1..=100_000,
        )?),
        connections_per_address: count(parse_number(
            get,
            "CHAT_MAX_CONNECTIONS_PER_ADDRESS",
            default.connections_per_address as u64,
            1..=1_000_000,
        )?),
        queue_bytes: count(parse_number(
            get,
            "CHAT_MAX_QUEUE_BYTES",
            default.queue_bytes as u64,
            64 * 1024..=1 << 30,
        )?),
        password_hashes: count(parse_number(
            get,
            "CHAT_PASSWORD_HASH_CONCURRENCY",
            default.password_hashes as u64,
            1..=256,
        )?),
        signups_per_address_per_hour: u32::try_from(parse_number(
            get,
            "CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR",
            u64::from(default.signups_per_address_per_hour),
            1..=1_000_000,
        )?)
        .unwrap_or(u32::MAX),
        trusted_proxies: match get("CHAT_TRUSTED_PROXIES") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(parse_network)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        },
        upload_timeout: Duration::from_secs(parse_number(
            get,
            "CHAT_UPLOAD_TIMEOUT_SECS",
            secs(default.upload_timeout),
            1..=3_600,
        )?),
        attachment_bytes: count(parse_number(
            get,
            "CHAT_MAX_ATTACHMENT_BYTES",
            default.attachment_bytes as u64,
            1024..=1 << 30,
        )?),
        upload_quota_bytes: parse_number(
            get,
            "CHAT_UPLOAD_QUOTA_BYTES",
            default.upload_quota_bytes,
            0..=1 << 50,
        )?,
        upload_memory_bytes: count(parse_number(
            get,
            "CHAT_UPLOAD_MEMORY_BYTES",
            default.upload_memory_bytes as u64,
            1 << 20..=1 << 32,
        )?),
    })
}

/// A CIDR block, or a single address (a /32 or /128).
fn parse_network(raw: &str) -> Result<ipnet::IpNet, ConfigError> {
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            invalid(
                "CHAT_TRUSTED_PROXIES",
                format!("{raw:?} is not an address or a CIDR block like 10.0.0.0/8"),
            )
        })
}

fn parse_number(
    get: &mut impl FnMut(&'static str) -> Option<String>,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    let value: u64 = raw
        .parse()
        .map_err(|_| invalid(var, format!("{raw:?} is not a whole number")))?;
    if !range.contains(&value) {
        return Err(invalid(
            var,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// An allowed CORS origin is exactly `scheme://host[:port]` (`is_origin`). A wildcard is refused:
/// the API takes credentials, and browsers reject `*` with credentials anyway.
fn parse_origin(origin: &str) -> Result<HeaderValue, ConfigError> {
    const VAR: &str = "CHAT_CORS_ORIGINS";
    if origin == "*" {
        return Err(invalid(
            VAR,
            "a wildcard is not allowed; list the exact origins",
        ));
    }
    if !is_origin(origin) {
        return Err(invalid(
            VAR,
            format!(
                "{origin:?} is not an origin like https://chat.example.com (lowercase scheme, host and port only)"
            ),
        ));
    }
    HeaderValue::from_str(origin)
        .map_err(|_| invalid(VAR, format!("{origin:?} is not a valid header value")))
}

/// Whether `origin` is `http` or `https`, `://`, a host and an optional
/// port, as browsers send it: a lowercase DNS name (letters, digits and
/// inner hyphens per label) or a bracketed IPv6 address, then `:` and up to
/// five digits. The ChatCluster CRD refuses what this refuses with one
/// regular expression (`corsOrigins` in operator/src/crd.rs); the operator's
/// real-API-server tests hold the two to the same answers.
pub fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host_ok, port) = match rest.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, port)) => (
                !address.is_empty()
                    && address
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b':' | b'.')),
                port,
            ),
            None => (false, ""),
        },
        None => {
            let (host, port) = match rest.find(':') {
                Some(at) => rest.split_at(at),
                None => (rest, ""),
            };
            let label_ok = |label: &str| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            (host.split('.').all(label_ok), port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        });
    host_ok && port_ok
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<_, _> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_value_can_come_from_the_file_its_file_variable_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, "from-the-file\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let env = |vars: Vec<(&'static str, String)>| {
            move |key: &str| Ok(vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
        };

        let read = value_or_file(
            "CHAT_JWT_SECRET",
            env(vec![("CHAT_JWT_SECRET_FILE", path.clone())]),
        );
        assert_eq!(read.unwrap().as_deref(), Some("from-the-file\n"));
        let direct = value_or_file(
            "CHAT_JWT_SECRET",
            env(vec![("CHAT_JWT_SECRET", "direct".into())]),
        );
        assert_eq!(direct.unwrap().as_deref(), Some("direct"));
        assert_eq!(value_or_file("CHAT_JWT_SECRET", env(vec![])).unwrap(), None);
        // An empty one is unset: an override file can switch the other on.
        let emptied = value_or_file(
            "CHAT_JWT_SECRET",
            env(vec![
                ("CHAT_JWT_SECRET", "direct".into()),
                ("CHAT_JWT_SECRET_FILE", String::new()),
            ]),
        );
        assert_eq!(emptied.unwrap().as_deref(), Some("direct"));

        let both = value_or_file(
            "CHAT_JWT_SECRET",
            env(vec![
                ("CHAT_JWT_SECRET", "direct".into()),
                ("CHAT_JWT_SECRET_FILE", path),
            ]),
        )
        .unwrap_err();
        assert_eq!(both.var, "CHAT_JWT_SECRET");
        assert!(both.reason.contains("not both"), "{both}");
        let missing = value_or_file(
            "CHAT_REDIS_URL",
            env(vec![(
                "CHAT_REDIS_URL_FILE",
                "/nonexistent/redis-url".into(),
            )]),
        )
        .unwrap_err();
        assert!(
            missing.to_string().starts_with(
                "CHAT_REDIS_URL: CHAT_REDIS_URL_FILE: cannot read /nonexistent/redis-url"
            ),
            "{missing}"
        );
    }

    #[test]
    fn defaults_run_embedded_on_port_8080() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen_addr, "0.0.0.0:8080".parse().unwrap());
        assert!(
            config.mongodb_uri.is_none() && config.redis.is_none() && config.jwt_secret.is_none()
        );
        assert_eq!(config.mongodb_db, "chat");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.jwt_ttl, Duration::from_secs(900));
        assert_eq!(
            (config.rate_limit_per_sec, config.rate_limit_burst),
            (10, 20)
        );
        assert_eq!(config.shutdown_grace, Duration::from_secs(25));
        assert_eq!(config.web_dir, PathBuf::from("web/dist"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.cors_origins.is_empty());
    }

    #[test]
    fn mongodb_without_a_jwt_secret_is_refused_naming_the_variable() {
        let err = config(&[("CHAT_MONGODB_URI", "mongodb://db:27017")]).unwrap_err();
        assert_eq!(err.var, "CHAT_JWT_SECRET");
        assert!(err.to_string().starts_with("CHAT_JWT_SECRET: "));
        let secret = "x".repeat(32);
        assert!(
            config(&[
                ("CHAT_MONGODB_URI", "mongodb://db:27017"),
                ("CHAT_JWT_SECRET", &secret)
            ])
            .is_ok()
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&'static str, &str)] = &[
            ("CHAT_LISTEN_ADDR", "localhost"),
            ("CHAT_MONGODB_URI", "postgres://x"),
            ("CHAT_MONGODB_DB", "a/b"),
            ("CHAT_REDIS_URL", "http://not-redis"),
            ("CHAT_REDIS_URL", "redis://a:7000,http://b:7000"),
            ("CHAT_REDIS_URL", " , "),
            ("CHAT_REDIS_SENTINELS", "sentinel-0:port"),
            ("CHAT_REDIS_SENTINELS", " ,"),
            ("CHAT_REDIS_MIN_REPLICAS", "17"),
            ("CHAT_REDIS_WAIT_TIMEOUT_MS", "0"),
            ("CHAT_JWT_SECRET", "short"),
            ("CHAT_JWT_TTL_SECS", "ten"),
            ("CHAT_JWT_TTL_SECS", "0"),
            ("CHAT_DEDUPE_TTL_SECS", "5"),
            ("CHAT_CORS_ORIGINS", "*"),
            (
                "CHAT_CORS_ORIGINS",
                "https://ok.example, https://bad.example/path",
            ),
            ("CHAT_RATE_LIMIT_PER_SEC", "-1"),
            ("CHAT_RATE_LIMIT_BURST", "0"),
            ("CHAT_SHUTDOWN_GRACE_SECS", "1.5"),
            ("RUST_LOG", "info,[[["),
            ("CHAT_LOG_FORMAT", "xml"),
            ("CHAT_HTTP_HEADER_TIMEOUT_SECS", "0"),
            ("CHAT_HTTP_REQUEST_TIMEOUT_SECS", "soon"),
            ("CHAT_MAX_CONNECTIONS_PER_USER", "0"),
            ("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "-5"),
            ("CHAT_MAX_QUEUE_BYTES", "1024"),
            ("CHAT_PASSWORD_HASH_CONCURRENCY", "0"),
            ("CHAT_TRUSTED_PROXIES", "10.0.0.0/8, ingress"),
            ("CHAT_TRUSTED_PROXIES", "10.0.0.0/33"),
        ];
        for (var, value) in cases {
            let err =
                config(&[(var, value)]).expect_err(&format!("{var}={value} should be refused"));
            assert_eq!(&err.var, var, "{var}={value} blamed {}", err.var);
        }
    }

    #[test]
    fn a_redis_cluster_is_given_by_its_seed_nodes() {
        let seeds = "redis://10.0.0.1:7000, redis://10.0.0.2:7000,redis://10.0.0.3:7000";
        let redis = config(&[("CHAT_REDIS_URL", seeds)]).unwrap().redis.unwrap();
        assert_eq!(redis.endpoint, RedisEndpoint::Urls(Secret::new(seeds)));
        assert_eq!(redis.min_replicas, 0, "a plain URL acks on the primary");
    }

    #[test]
    fn sentinels_name_a_master_and_acks_wait_for_a_replica() {
        let redis = config(&[
            ("CHAT_REDIS_SENTINELS", "s-0:26379, s-1:26380,s-2"),
            ("CHAT_REDIS_PASSWORD", "pw"),
        ])
        .unwrap()
        .redis
        .unwrap();
        assert_eq!(
            redis.endpoint,
            RedisEndpoint::Sentinel {
                sentinels: vec![
                    ("s-0".into(), 26379),
                    ("s-1".into(), 26380),
                    ("s-2".into(), 26379)
                ],
                master: "chat".into(),
                password: Some(Secret::new("pw")),
            }
        );
        assert_eq!(
            (redis.min_replicas, redis.wait_timeout),
            (1, Duration::from_secs(1))
        );
        let both = config(&[
            ("CHAT_REDIS_SENTINELS", "s-0"),
            ("CHAT_REDIS_URL", "redis://cache"),
        ]);
        assert_eq!(both.unwrap_err().var, "CHAT_REDIS_SENTINELS");
        let zero = config(&[
            ("CHAT_REDIS_SENTINELS", "s-0"),
            ("CHAT_REDIS_MIN_REPLICAS", "0"),
        ]);
        assert_eq!(zero.unwrap().redis.unwrap().min_replicas, 0);
    }

    #[test]
    fn limits_have_defaults_and_take_proxies_as_blocks_or_addresses() {
        let limits = config(&[]).unwrap().limits;
        assert_eq!(limits, Limits::default());
        assert_eq!(limits.header_timeout, Duration::from_secs(10));
        assert!(limits.trusted_proxies.is_empty());
        let limits = config(&[
            ("CHAT_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,fd00::/8"),
            ("CHAT_MAX_CONNECTIONS_PER_USER", "3"),
        ])
        .unwrap()
        .limits;
        let proxies: Vec<String> = limits
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert_eq!(limits.connections_per_user, 3);
    }

    #[test]
    fn cors_origins_are_exact() {
        let config = config(&[(
            "CHAT_CORS_ORIGINS",
            "https://chat.example.com, http://localhost:5173",
        )])
        .unwrap();
        assert_eq!(
            config.cors_origins,
            vec!["https://chat.example.com", "http://localhost:5173"]
        );
    }

    #[test]
    fn an_origin_is_a_lowercase_scheme_host_and_port_only() {
        for good in [
            "https://chat.example.com",
            "http://localhost:5173",
            "https://10.0.0.1:8443",
            "https://[::1]:8080",
            "https://xn--bcher-kva.example",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "https://h?x",
            "https://u@h",
            "https://u:p@h",
            "https://a,b",
            "https://h#f",
            "https://h/",
            "https://h/path",
            "https://Chat.example.com",
            "HTTPS://h",
            "ftp://h",
            "https://",
            "https://h:",
            "https://h:123456",
            "https://-h",
            "https://h..x",
            "https://[zz]",
            "https://h*",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = "s".repeat(40);
        let sentinel = config(&[
            ("CHAT_REDIS_SENTINELS", "s-0"),
            ("CHAT_REDIS_PASSWORD", "hunter3"),
        ])
        .unwrap();
        let config = config(&[
            ("CHAT_MONGODB_URI", "mongodb://user:hunter2@db"),
            ("CHAT_JWT_SECRET", &secret),
            ("CHAT_REDIS_URL", "redis://:pw@cache"),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains(&secret) && !debug.contains(":pw@"),
            "{debug}"
        );
        let debug = format!("{sentinel:?}");
        assert!(
            debug.contains("s-0") && !debug.contains("hunter3"),
            "{debug}"
        );
    }
}

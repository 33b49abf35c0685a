//! Prometheus metrics: one registry per server (so tests can run several servers
//! in one process), rendered in the text format at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    /// Open WebSocket connections on this instance.
    pub ws_connections: IntGauge,
    /// Closed WebSocket connections by reason (`slow_consumer`, `flooding`, ...).
    pub ws_disconnects: IntCounterVec,
    /// Chat messages accepted from clients on this instance.
    pub messages_received: IntCounter,
    /// Files stored by uploads on this instance, and their bytes.
    pub uploads: IntCounter,
    pub upload_bytes: IntCounter,
    /// Frames written to clients (per-recipient deliveries).
    pub frames_sent: IntCounter,
    /// Messages refused by the per-user rate limit.
    pub rate_limited: IntCounter,
    /// Redis failures (publish, subscribe, script, stream), each logged where it happened.
    pub bus_errors: IntCounter,
    /// Acked messages still waiting in the Redis stream to be written to the store.
    pub persist_backlog: IntGauge,
    /// Messages written to the store by the persist worker.
    pub persisted: IntCounter,
    /// From a message's acceptance (its timestamp, set by the pod that
    /// sequenced it) to its hand-off to this instance's recipients. Across
    /// pods it includes their clock difference.
    pub delivery_latency: Histogram,
    /// From a message's acceptance to the bus's answer for it: sequenced,
    /// durable and published, what its sender waits for before the ack.
    /// Beside `delivery_latency`, it tells a slow append (Redis, the group
    /// commit) from a slow fan-out.
    pub append_latency: Histogram,
    /// 1 when a dependency (`mongodb`/`embedded` store, `redis`) answered the
    /// last readiness check, 0 when it did not.
    pub dependency_up: IntGaugeVec,
    /// Blocking work running now, by kind (`password_hash`, `image_decode`):
    /// at most its slots (`crate::blocking`).
    pub blocking_running: IntGaugeVec,
}

/// Seconds, for the message latencies: fine below 10 ms, where a chat's
/// p99 belongs, coarse above.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0,
];

/// A histogram of message latency, in [`LATENCY_BUCKETS`].
fn latency(name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "chat_http_requests_total",
                "HTTP requests by route template, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "chat_http_request_duration_seconds",
                "HTTP request latency by route template",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        let ws_connections = IntGauge::new("chat_ws_connections", "Open WebSocket connections")?;
        let ws_disconnects = IntCounterVec::new(
            Opts::new(
                "chat_ws_disconnects_total",
                "Closed WebSocket connections by reason",
            ),
            &["reason"],
        )?;
        let messages_received = IntCounter::new(
            "chat_messages_received_total",
            "Chat messages accepted from clients",
        )?;
        let uploads = IntCounter::new("chat_uploads_total", "Files stored by uploads")?;
        let upload_bytes = IntCounter::new(
            "chat_upload_bytes_total",
            "Bytes of the files stored by uploads",
        )?;
        let frames_sent = IntCounter::new(
            "chat_ws_frames_sent_total",
            "Frames written to WebSocket clients",
        )?;
        let rate_limited = IntCounter::new(
            "chat_rate_limited_total",
            "Messages refused by the per-user rate limit",
        )?;
        let bus_errors = IntCounter::new(
            "chat_bus_errors_total",
            "Redis failures seen by the message bus",
        )?;
        let persist_backlog = IntGauge::new(
            "chat_persist_backlog",
            "Acked messages not yet written to the store",
        )?;
        let persisted = IntCounter::new(
            "chat_persisted_messages_total",
            "Messages written to the store by the persist worker",
        )?;
        let delivery_latency = latency(
            "chat_delivery_latency_seconds",
            "Time from a message's acceptance to its hand-off to this instance's recipients",
        )?;
        let append_latency = latency(
            "chat_append_latency_seconds",
            "Time from a message's acceptance to its append answered: sequenced, durable, published",
        )?;
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "chat_dependency_up",
                "Whether a dependency answered the last readiness check",
            ),
            &["dependency"],
        )?;
        let blocking_running = IntGaugeVec::new(
            Opts::new(
                "chat_blocking_work_running",
                "Password hashes and image decodes running now, by kind",
            ),
            &["work"],
        )?;
        for collector in [
            Box::new(ws_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(blocking_running.clone()),
            Box::new(delivery_latency.clone()),
            Box::new(append_latency.clone()),
            Box::new(dependency_up.clone()),
            Box::new(ws_disconnects.clone()),
            Box::new(messages_received.clone()),
            Box::new(frames_sent.clone()),
            Box::new(uploads.clone()),
            Box::new(upload_bytes.clone()),
            Box::new(rate_limited.clone()),
            Box::new(bus_errors.clone()),
            Box::new(persist_backlog.clone()),
            Box::new(persisted.clone()),
        ] {
            registry.register(collector)?;
        }
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            ws_connections,
            ws_disconnects,
            messages_received,
            uploads,
            upload_bytes,
            frames_sent,
            rate_limited,
            bus_errors,
            persist_backlog,
            persisted,
            delivery_latency,
            append_latency,
            dependency_up,
            blocking_running,
        })
    }

    /// Counts and times one HTTP request under its route template and method.
    pub fn observe_http(&self, route: &str, method: &str, status: &str, seconds: f64) {
        self.http_duration
            .with_label_values(&[route, method])
            .observe(seconds);
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

//! The operator's Prometheus metrics and its small HTTP endpoint: `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (it has reached the API
//! server and the ChatCluster API is installed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::reflector::Store;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::crd::ChatCluster;

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    /// Failed reconciles by error kind (see `controller::Error::kind`).
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: IntGauge,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "chat_operator_reconciles_total",
            "ChatCluster reconciliations started",
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "chat_operator_reconcile_errors_total",
                "ChatCluster reconciliations that failed, by error kind",
            ),
            &["error"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "chat_operator_reconcile_duration_seconds",
                "Time to reconcile one ChatCluster",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let leader = IntGauge::new(
            "chat_operator_leader",
            "1 while this replica is the elected leader",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    /// Exposes every ChatCluster's replica counts, read from the controller's
    /// cache at scrape time, so a deleted ChatCluster leaves no stale series
    /// behind to alert on.
    pub fn watch_clusters(&self, clusters: Store<ChatCluster>) -> Result<(), prometheus::Error> {
        self.registry
            .register(Box::new(ClusterCollector::new(clusters)?))
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// `chat_operator_cluster_replicas` and `chat_operator_cluster_ready_replicas`
/// by namespace and name, from the ChatClusters' status.
struct ClusterCollector {
    clusters: Store<ChatCluster>,
    replicas: IntGaugeVec,
    ready: IntGaugeVec,
}

impl ClusterCollector {
    fn new(clusters: Store<ChatCluster>) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["namespace", "name"])
        };
        Ok(Self {
            clusters,
            replicas: gauge(
                "chat_operator_cluster_replicas",
                "Chat pods a ChatCluster wants (from its status)",
            )?,
            ready: gauge(
                "chat_operator_cluster_ready_replicas",
                "Chat pods of a ChatCluster that are ready (from its status)",
            )?,
        })
    }
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.replicas
            .desc()
            .into_iter()
            .chain(self.ready.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.replicas.reset();
        self.ready.reset();
        for cluster in self.clusters.state() {
            let Some(status) = &cluster.status else {
                continue;
            };
            let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
            let name = cluster.metadata.name.as_deref().unwrap_or_default();
            self.replicas
                .with_label_values(&[namespace, name])
                .set(i64::from(status.replicas));
            self.ready
                .with_label_values(&[namespace, name])
                .set(i64::from(status.ready_replicas));
        }
        self.replicas
            .collect()
            .into_iter()
            .chain(self.ready.collect())
            .collect()
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .with_state(metrics)
}

/// Serves [`router`] until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(error) => {
            tracing::error!(%error, "encoding metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                "metrics unavailable".to_owned(),
            )
        }
    }
}

async fn readiness(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn cluster(ready: i32) -> ChatCluster {
        serde_json::from_value(json!({
            "apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat", "uid": "u1"}, "spec": {},
            "status": {"replicas": 3, "readyReplicas": ready, "selector": "", "phase": "Progressing", "conditions": []},
        }))
        .unwrap()
    }

    #[test]
    fn cluster_gauges_follow_the_cache_and_vanish_with_the_cluster() {
        let metrics = Metrics::new().unwrap();
        let (reader, mut writer) = reflector::store();
        metrics.watch_clusters(reader).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(cluster(2)));
        let text = metrics.render().unwrap();
        assert!(
            text.contains(
                r#"chat_operator_cluster_ready_replicas{name="demo",namespace="chat"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"chat_operator_cluster_replicas{name="demo",namespace="chat"} 3"#),
            "{text}"
        );
        writer.apply_watcher_event(&watcher::Event::Delete(cluster(2)));
        let text = metrics.render().unwrap();
        assert!(!text.contains("name=\"demo\""), "{text}");
    }
}

//! The ChatCluster's status, computed by a pure function of the resource (its
//! previous status included) and what was observed of its chat Deployment.
//!
//! Idempotent by construction: the same observation gives the same status,
//! with every `lastTransitionTime` kept from the previous status unless that
//! condition's value changed. Writing it back therefore changes nothing, and
//! the controller's own status writes never wake it up again.

use crate::crd::{ChatCluster, ChatClusterStatus, Condition, Phase};
use crate::desired::{Component, selector_labels, selector_string};

/// What the controller saw of the chat server Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Pods wanted (the Deployment's spec, or the autoscaler's choice).
    pub desired: i32,
    pub ready: i32,
    /// Pods already running the current template.
    pub updated: i32,
    /// The Deployment gave up waiting for its rollout (its `Progressing`
    /// condition is False: the progress deadline passed).
    pub stalled: bool,
    /// The Deployment's controller has seen its latest spec
    /// (`status.observedGeneration` is `metadata.generation`): until then
    /// its counts describe the previous template, and a rollout just asked
    /// for would read as complete.
    pub current: bool,
}

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// The status to write. `observed` is `None` before the Deployment exists;
/// `now` is an RFC 3339 time, used only for conditions that change.
pub fn status(cluster: &ChatCluster, observed: Option<Observed>, now: &str) -> ChatClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let instance = cluster.metadata.name.clone().unwrap_or_default();
    let seen = observed.unwrap_or_default();
    let rolled_out = observed.is_some()
        && seen.current
        && seen.updated >= seen.desired
        && seen.ready >= seen.desired;
    let available = seen.ready > 0 || (observed.is_some() && seen.desired == 0);
    // No pod ready is a fault once pods had been ready (or the fault was
    // already reported), or once the rollout is past its deadline; before
    // that, a new cluster is still starting, not degraded.
    let was_up = previous
        .conditions
        .iter()
        .any(|c| c.status == "True" && (c.kind == AVAILABLE || c.kind == DEGRADED));
    let degraded =
        observed.is_some() && seen.desired > 0 && seen.ready == 0 && (was_up || seen.stalled);
    // Working towards the spec: not there yet, and not stuck with nothing ready.
    let progressing = observed.is_none() || (!rolled_out && !degraded);

    let phase = if cluster.spec.paused {
        Phase::Paused
    } else if observed.is_none() {
        Phase::Pending
    } else if degraded {
        Phase::Degraded
    } else if rolled_out {
        Phase::Running
    } else {
        Phase::Progressing
    };
    let pods = format!("{} of {} chat pods ready", seen.ready, seen.desired);
    let conditions = vec![
        condition(
            &previous,
            AVAILABLE,
            available,
            if available { "PodsReady" } else { "NoPodReady" },
            &pods,
            now,
            generation,
        ),
        condition(
            &previous,
            PROGRESSING,
            progressing,
            if progressing {
                "RollingOut"
            } else if rolled_out {
                "RolloutComplete"
            } else {
                "Stalled"
            },
            &format!("{} of {} chat pods updated", seen.updated, seen.desired),
            now,
            generation,
        ),
        condition(
            &previous,
            DEGRADED,
            degraded,
            if !degraded {
                "AsExpected"
            } else if seen.stalled {
                "ProgressDeadlineExceeded"
            } else {
                "NoPodReady"
            },
            &pods,
            now,
            generation,
        ),
    ];
    ChatClusterStatus {
        observed_generation: generation,
        replicas: seen.desired,
        ready_replicas: seen.ready,
        selector: selector_string(&selector_labels(&instance, Component::Server)),
        phase,
        conditions,
    }
}

/// The condition reporting whether the Redis servers, Sentinels and MongoDB
/// members are all ready on their current spec and the MongoDB init Job has
/// not failed.
pub const BACKENDS_READY: &str = "BackendsReady";

/// `status` with the [`BACKENDS_READY`] condition: True when `issues` is
/// empty, else False naming each (see `controller::backend_issues`).
pub fn with_backends(
    mut status: ChatClusterStatus,
    cluster: &ChatCluster,
    issues: &[String],
    now: &str,
) -> ChatClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let failed = issues.iter().any(|issue| issue.contains("failed"));
    let (reason, message) = match issues {
        [] => ("AllReady", "every backend pod ready".to_owned()),
        _ if failed => ("Failed", issues.join("; ")),
        _ => ("NotReady", issues.join("; ")),
    };
    status.conditions.push(condition(
        &previous,
        BACKENDS_READY,
        issues.is_empty(),
        reason,
        &message,
        now,
        cluster.metadata.generation,
    ));
    status
}

/// The condition reporting whether the last reconcile applied every child.
pub const RECONCILED: &str = "Reconciled";

/// Why a reconcile fell short: a `reason` of the [`RECONCILED`] condition
/// and the message naming what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub reason: &'static str,
    pub message: String,
}

/// `status` with the [`RECONCILED`] condition: True unless `shortfall`.
pub fn with_reconciled(
    mut status: ChatClusterStatus,
    cluster: &ChatCluster,
    shortfall: Option<&Shortfall>,
    now: &str,
) -> ChatClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    status.conditions.retain(|c| c.kind != RECONCILED);
    let (reason, message) = match shortfall {
        None => ("Applied", "every child applied"),
        Some(shortfall) => (shortfall.reason, shortfall.message.as_str()),
    };
    status.conditions.push(condition(
        &previous,
        RECONCILED,
        shortfall.is_none(),
        reason,
        message,
        now,
        cluster.metadata.generation,
    ));
    status
}

/// The condition reporting a volume size the spec asks for and the
/// operator cannot apply; present only while that is so.
pub const VOLUMES_RESIZABLE: &str = "VolumesResizable";

/// `status` with the [`VOLUMES_RESIZABLE`] condition, False, when a resize
/// was refused (`why`).
pub fn with_resize_refused(
    status: ChatClusterStatus,
    cluster: &ChatCluster,
    why: Option<&str>,
    now: &str,
) -> ChatClusterStatus {
    with_false_condition(
        status,
        cluster,
        VOLUMES_RESIZABLE,
        "ResizeRefused",
        why,
        now,
    )
}

/// The condition reporting generated credentials that are gone while
/// volumes hold data made with them; present only while that is so, and
/// nothing is applied meanwhile.
pub const CREDENTIALS_AVAILABLE: &str = "CredentialsAvailable";

/// `status` with the [`CREDENTIALS_AVAILABLE`] condition, False, when the
/// credentials of existing data are lost (`why`).
pub fn with_credentials_lost(
    status: ChatClusterStatus,
    cluster: &ChatCluster,
    why: Option<&str>,
    now: &str,
) -> ChatClusterStatus {
    with_false_condition(
        status,
        cluster,
        CREDENTIALS_AVAILABLE,
        "SecretMissing",
        why,
        now,
    )
}

/// `status` with the condition `kind` False for `why`, when there is one.
fn with_false_condition(
    mut status: ChatClusterStatus,
    cluster: &ChatCluster,
    kind: &str,
    reason: &str,
    why: Option<&str>,
    now: &str,
) -> ChatClusterStatus {
    if let Some(why) = why {
        let previous = cluster.status.clone().unwrap_or_default();
        status.conditions.push(condition(
            &previous,
            kind,
            false,
            reason,
            why,
            now,
            cluster.metadata.generation,
        ));
    }
    status
}

fn condition(
    previous: &ChatClusterStatus,
    kind: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let since = previous
        .conditions
        .iter()
        .find(|c| c.kind == kind && c.status == status)
        .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
    Condition {
        kind: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(spec: serde_json::Value) -> ChatCluster {
        serde_json::from_value(json!({
            "apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat", "generation": 4}, "spec": spec,
        }))
        .unwrap()
    }

    fn value<'a>(status: &'a ChatClusterStatus, kind: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.kind == kind).unwrap()
    }

    #[test]
    fn phases_follow_the_deployment() {
        let demo = cluster(json!({}));
        assert_eq!(status(&demo, None, "t0").phase, Phase::Pending);
        let rolling = status(
            &demo,
            Some(Observed {
                desired: 3,
                ready: 1,
                updated: 1,
                ..Default::default()
            }),
            "t0",
        );
        assert_eq!(rolling.phase, Phase::Progressing);
        assert_eq!(value(&rolling, AVAILABLE).status, "True");
        assert_eq!(value(&rolling, PROGRESSING).status, "True");
        let running = status(
            &demo,
            Some(Observed {
                desired: 3,
                ready: 3,
                updated: 3,
                current: true,
                ..Default::default()
            }),
            "t0",
        );
        assert_eq!(running.phase, Phase::Running);
        assert_eq!(value(&running, PROGRESSING).reason, "RolloutComplete");
        // Right after a change to the template, the Deployment's counts are
        // those of the previous one: still rolling out.
        let just_changed = status(
            &demo,
            Some(Observed {
                desired: 3,
                ready: 3,
                updated: 3,
                current: false,
                ..Default::default()
            }),
            "t0",
        );
        assert_eq!(just_changed.phase, Phase::Progressing);
        assert_eq!(value(&just_changed, PROGRESSING).reason, "RollingOut");

        let none_ready = Observed {
            desired: 3,
            ready: 0,
            updated: 3,
            ..Default::default()
        };
        // A new cluster whose pods are still starting is not degraded.
        let starting = status(&demo, Some(none_ready), "t0");
        assert_eq!(starting.phase, Phase::Progressing);
        assert_eq!(value(&starting, DEGRADED).status, "False");
        // Pods that were ready and are no longer: degraded, and it stays so
        // (the status is idempotent) until a pod is ready again.
        let mut was_running = demo.clone();
        was_running.status = Some(running);
        let down = status(&was_running, Some(none_ready), "t1");
        assert_eq!(down.phase, Phase::Degraded);
        assert_eq!(value(&down, DEGRADED).status, "True");
        assert_eq!(value(&down, AVAILABLE).status, "False");
        let mut still_down = demo.clone();
        still_down.status = Some(down.clone());
        assert_eq!(status(&still_down, Some(none_ready), "t2"), down);
        // A rollout past its deadline with nothing ready: degraded too.
        let stalled = Observed {
            stalled: true,
            ..none_ready
        };
        let stuck = status(&demo, Some(stalled), "t0");
        assert_eq!(stuck.phase, Phase::Degraded);
        assert_eq!(value(&stuck, DEGRADED).reason, "ProgressDeadlineExceeded");
        assert_eq!(
            status(&cluster(json!({"paused": true})), None, "t0").phase,
            Phase::Paused
        );
    }

    #[test]
    fn status_carries_what_scale_and_printer_columns_read() {
        let status = status(
            &cluster(json!({})),
            Some(Observed {
                desired: 3,
                ready: 2,
                updated: 3,
                ..Default::default()
            }),
            "t0",
        );
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.observed_generation
            ),
            (3, 2, Some(4))
        );
        assert_eq!(
            status.selector,
            "app.kubernetes.io/component=server,app.kubernetes.io/instance=demo,app.kubernetes.io/name=chatcluster"
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn the_same_observation_gives_the_same_status() {
        let mut demo = cluster(json!({}));
        let seen = Some(Observed {
            desired: 3,
            ready: 3,
            updated: 3,
            current: true,
            ..Default::default()
        });
        let first = status(&demo, seen, "2026-11-23T10:00:00Z");
        demo.status = Some(first.clone());
        let again = status(&demo, seen, "2026-11-23T11:00:00Z");
        assert_eq!(
            again, first,
            "nothing to write, so no self-triggered reconcile"
        );
    }

    #[test]
    fn transition_times_change_only_on_transitions() {
        let mut demo = cluster(json!({}));
        demo.status = Some(status(
            &demo,
            Some(Observed {
                desired: 3,
                ready: 3,
                updated: 3,
                current: true,
                ..Default::default()
            }),
            "t1",
        ));
        let after = status(
            &demo,
            Some(Observed {
                desired: 3,
                ready: 0,
                updated: 3,
                current: true,
                ..Default::default()
            }),
            "t2",
        );
        assert_eq!(
            value(&after, AVAILABLE).last_transition_time,
            "t2",
            "Available flipped"
        );
        assert_eq!(
            value(&after, DEGRADED).last_transition_time,
            "t2",
            "Degraded flipped"
        );
        assert_eq!(
            value(&after, PROGRESSING).last_transition_time,
            "t1",
            "Progressing stayed False"
        );
    }
}

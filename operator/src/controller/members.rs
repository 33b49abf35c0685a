//! Shrinking a managed MongoDB replica set without losing its majority.
//!
//! Fewer `members` in the spec must leave the replica set before their pods
//! go: a StatefulSet scaled down first would stop members the set still
//! counts votes for, and going from three to one that way leaves one vote of
//! three, no majority, no primary, and a set only a forced reconfiguration
//! repairs. So the StatefulSet keeps its live replica count until the init
//! Job for the new spec (which removes the members one at a time, through
//! the primary) has succeeded; then the next reconcile scales it down.
//! Growing needs no order: new pods start, then the Job adds them.

use serde_json::Value;

use super::objects::{Live, ObjectKey};

const COMPONENT: &str = "/metadata/labels/app.kubernetes.io~1component";

fn is_mongodb(object: &Value, kind: &str) -> bool {
    object.get("kind").and_then(Value::as_str) == Some(kind)
        && object.pointer(COMPONENT).and_then(Value::as_str) == Some("mongodb")
}

fn replicas(statefulset: &Value) -> Option<i64> {
    statefulset
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
}

/// Keeps the live replica count of the desired MongoDB StatefulSet while
/// the spec asks for fewer members and the desired init Job has not
/// succeeded yet. Returns what it held, for the log.
pub fn hold_until_removed(desired: &mut [Value], live: &Live) -> Option<String> {
    let job = desired
        .iter()
        .find(|o| is_mongodb(o, "Job"))
        .and_then(ObjectKey::of)?;
    let removed = live.objects.get(&job).is_some_and(|job| {
        job.pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .is_some_and(|n| n >= 1)
    });
    let statefulset = desired.iter_mut().find(|o| is_mongodb(o, "StatefulSet"))?;
    let key = ObjectKey::of(statefulset)?;
    let now = live.objects.get(&key).and_then(replicas)?;
    let wanted = replicas(statefulset)?;
    if wanted >= now || removed {
        return None;
    }
    statefulset["spec"]["replicas"] = now.into();
    Some(format!(
        "{key} stays at {now} replicas until Job/{} has removed the members beyond {wanted}",
        job.name
    ))
}

/// The MongoDB Jobs that must be gone before the desired one is made: every
/// other one, while the desired one does not exist yet. Two runs of the
/// members script at once (the old one still reconfiguring while the new
/// one starts) would each work from their own view of the set.
pub fn jobs_in_the_way(desired: &[Value], live: &Live) -> Vec<ObjectKey> {
    let Some(wanted) = desired
        .iter()
        .find(|o| is_mongodb(o, "Job"))
        .and_then(ObjectKey::of)
    else {
        return Vec::new();
    };
    if live.objects.contains_key(&wanted) {
        return Vec::new();
    }
    live.objects
        .iter()
        .filter(|(key, object)| **key != wanted && is_mongodb(object, "Job"))
        .map(|(key, _)| key.clone())
        .collect()
}

/// The MongoDB Jobs that failed (their `Failed` condition True: every retry
/// of their pod used up) at least `after` before `now`, with why. A Job's
/// template cannot change, so it runs again only when deleted and made
/// anew: the controller does that for these, so a failure that has since
/// gone (a member that was down) does not hold the StatefulSet forever,
/// while one that persists is retried no faster than every `after`.
pub fn failed_jobs(
    live: &Live,
    now: time::OffsetDateTime,
    after: std::time::Duration,
) -> Vec<(ObjectKey, String)> {
    live.objects
        .iter()
        .filter(|(_, object)| is_mongodb(object, "Job"))
        .filter_map(|(key, job)| {
            let failed = job
                .pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Failed" && c["status"] == "True")?;
            let since = failed["lastTransitionTime"].as_str().and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            });
            // No time: as old as can be.
            let old_enough = since.is_none_or(|since| now - since >= after);
            let why = failed["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            old_enough.then(|| (key.clone(), why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn statefulset(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "demo-mongodb", "labels": {"app.kubernetes.io/component": "mongodb"}},
               "spec": {"replicas": replicas}})
    }

    fn job(name: &str, succeeded: Option<i64>) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "mongodb"}},
               "status": {"succeeded": succeeded}})
    }

    fn live(objects: &[Value]) -> Live {
        Live {
            objects: objects
                .iter()
                .map(|o| (ObjectKey::of(o).unwrap(), o.clone()))
                .collect(),
            service_monitor_api: true,
        }
    }

    #[test]
    fn fewer_members_wait_for_the_job_that_removes_them() {
        let mut desired = vec![statefulset(1), job("demo-mongodb-init-new", None)];
        // The new Job not made yet, then running: three pods stay.
        let before = live(&[statefulset(3), job("demo-mongodb-init-old", Some(1))]);
        assert!(hold_until_removed(&mut desired, &before).is_some());
        assert_eq!(desired[0]["spec"]["replicas"], 3);
        let mut desired = vec![statefulset(1), job("demo-mongodb-init-new", None)];
        let running = live(&[statefulset(3), job("demo-mongodb-init-new", Some(0))]);
        assert!(hold_until_removed(&mut desired, &running).is_some());
        assert_eq!(desired[0]["spec"]["replicas"], 3);
        // Done: the StatefulSet shrinks.
        let mut desired = vec![statefulset(1), job("demo-mongodb-init-new", None)];
        let done = live(&[statefulset(3), job("demo-mongodb-init-new", Some(1))]);
        assert_eq!(hold_until_removed(&mut desired, &done), None);
        assert_eq!(desired[0]["spec"]["replicas"], 1);
    }

    #[test]
    fn a_failed_job_is_retried_once_it_failed_long_enough_ago() {
        let failed = |name: &str, at: &str| {
            let mut job = job(name, Some(0));
            job["status"]["conditions"] = json!([{"type": "Failed", "status": "True",
                "lastTransitionTime": at, "message": "Job has reached the specified backoff limit"}]);
            job
        };
        let now = time::OffsetDateTime::parse(
            "2026-12-04T10:10:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let after = std::time::Duration::from_secs(300);
        let current = live(&[
            statefulset(3),
            failed("demo-mongodb-init-a", "2026-12-04T10:04:00Z"),
            failed("demo-mongodb-init-b", "2026-12-04T10:08:00Z"),
            job("demo-mongodb-init-c", Some(1)),
        ]);
        let retried = failed_jobs(&current, now, after);
        assert_eq!(retried.len(), 1, "{retried:?}");
        assert_eq!(retried[0].0.name, "demo-mongodb-init-a");
        assert!(retried[0].1.contains("backoff limit"));
    }

    #[test]
    fn the_old_job_goes_before_the_new_one_is_made() {
        let desired = vec![statefulset(3), job("demo-mongodb-init-new", None)];
        let old = live(&[statefulset(3), job("demo-mongodb-init-old", None)]);
        let in_the_way = jobs_in_the_way(&desired, &old);
        assert_eq!(in_the_way.len(), 1);
        assert_eq!(in_the_way[0].name, "demo-mongodb-init-old");
        // Once the new one exists (or with no old one), nothing waits.
        let both = live(&[
            job("demo-mongodb-init-old", None),
            job("demo-mongodb-init-new", None),
        ]);
        assert!(jobs_in_the_way(&desired, &both).is_empty());
        assert!(jobs_in_the_way(&desired, &live(&[statefulset(3)])).is_empty());
    }

    #[test]
    fn more_or_the_same_members_are_applied_at_once() {
        for (wanted, now) in [(3, 1), (3, 3)] {
            let mut desired = vec![statefulset(wanted), job("demo-mongodb-init-new", None)];
            let current = live(&[statefulset(now)]);
            assert_eq!(hold_until_removed(&mut desired, &current), None);
            assert_eq!(desired[0]["spec"]["replicas"], wanted);
        }
    }
}

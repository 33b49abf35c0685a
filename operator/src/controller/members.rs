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
    fn more_or_the_same_members_are_applied_at_once() {
        for (wanted, now) in [(3, 1), (3, 3)] {
            let mut desired = vec![statefulset(wanted), job("demo-mongodb-init-new", None)];
            let current = live(&[statefulset(now)]);
            assert_eq!(hold_until_removed(&mut desired, &current), None);
            assert_eq!(desired[0]["spec"]["replicas"], wanted);
        }
    }
}

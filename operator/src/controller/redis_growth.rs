//! Growing a single Redis into a highly available set without losing acks.
//!
//! A single Redis's pod gets a new template when `redis.managed.replicas`
//! goes from 1 to 3 (the Sentinel-aware start script), so the StatefulSet
//! would replace it, and the Sentinels would fail over to a new replica.
//! But the chat pods of the previous configuration ack on the single server
//! without waiting for a replica (there was none), so a failover while they
//! run can lose acked messages and give their seqs to others. So pod 0 keeps
//! its old template (the StatefulSet's rolling update partition) until every
//! chat pod finds Redis through the Sentinels and waits for a replica; the
//! new pods start as its replicas meanwhile. Then the next reconcile lifts
//! the partition and pod 0 is replaced like any primary.

use serde_json::{Value, json};

use super::objects::{Live, ObjectKey};

const COMPONENT: &str = "/metadata/labels/app.kubernetes.io~1component";

fn is(object: &Value, kind: &str, component: &str) -> bool {
    object.get("kind").and_then(Value::as_str) == Some(kind)
        && object.pointer(COMPONENT).and_then(Value::as_str) == Some(component)
}

/// Whether a pod template's first container has the environment variable `name`.
fn has_env(workload: &Value, name: &str) -> bool {
    workload
        .pointer("/spec/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .is_some_and(|env| env.iter().any(|e| e["name"] == name))
}

/// A Redis StatefulSet whose pods run with Sentinels (they are told the
/// other pods' names).
fn highly_available(statefulset: &Value) -> bool {
    has_env(statefulset, "REDIS_PODS")
}

fn partition(statefulset: &Value) -> i64 {
    statefulset
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Every chat pod runs the Deployment's current template, which finds Redis
/// through the Sentinels.
fn chat_pods_use_sentinels(deployment: &Value) -> bool {
    let int = |pointer: &str| deployment.pointer(pointer).and_then(Value::as_i64);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    let wanted = int("/spec/replicas").unwrap_or(1);
    let rolled = generation.is_some() && observed >= generation;
    has_env(deployment, "CHAT_REDIS_SENTINELS")
        && rolled
        && int("/status/updatedReplicas").unwrap_or(0) >= wanted
        && int("/status/replicas").unwrap_or(0) == wanted
        && int("/status/readyReplicas").unwrap_or(0) >= wanted
}

/// Holds pod 0 of the desired Redis StatefulSet on its running template
/// (partition 1) while a single Redis grows into a highly available set and
/// the chat pods do not all use the Sentinels yet. Returns what it held, for
/// the log.
pub fn hold_single_server(desired: &mut [Value], live: &Live) -> Option<String> {
    let chat_ready = live
        .objects
        .values()
        .find(|o| is(o, "Deployment", "server"))
        .is_some_and(chat_pods_use_sentinels);
    let statefulset = desired.iter_mut().find(|o| is(o, "StatefulSet", "redis"))?;
    let key = ObjectKey::of(statefulset)?;
    let running = live.objects.get(&key)?;
    let held = partition(running) > 0;
    // Growing: the running set is the single server, or was held before.
    let growing = !highly_available(running) || held;
    if !highly_available(statefulset) || !growing || chat_ready {
        if held {
            // Lifted by saying so: an object is applied only when it asks
            // for something the live one lacks, so leaving the field out
            // would leave the partition in place.
            statefulset["spec"]["updateStrategy"] =
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
        }
        return None;
    }
    statefulset["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
    Some(format!(
        "{key}: pod 0, the single server, keeps running until every chat pod finds Redis through the Sentinels"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(component: &str) -> Value {
        json!({"app.kubernetes.io/component": component})
    }

    fn redis(ha: bool, partition: Option<i64>) -> Value {
        let env = if ha {
            json!([{"name": "REDIS_PASSWORD"}, {"name": "REDIS_PODS", "value": "a b c"}])
        } else {
            json!([{"name": "REDIS_PASSWORD"}])
        };
        let mut statefulset = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "demo-redis", "labels": labels("redis")},
            "spec": {"replicas": if ha { 3 } else { 1 }, "template": {"spec": {"containers": [{"name": "redis", "env": env}]}}},
        });
        if let Some(partition) = partition {
            statefulset["spec"]["updateStrategy"] =
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": partition}});
        }
        statefulset
    }

    fn chat(sentinels: bool, generation: i64, observed: i64, updated: i64, replicas: i64) -> Value {
        let env = if sentinels {
            json!([{"name": "CHAT_REDIS_SENTINELS", "value": "s:26379"}])
        } else {
            json!([{"name": "CHAT_REDIS_URL"}])
        };
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "demo", "labels": labels("server"), "generation": generation},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "server", "env": env}]}}},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated, "readyReplicas": replicas},
        })
    }

    fn live(objects: &[Value]) -> Live {
        let mut live = Live::default();
        for object in objects {
            live.objects
                .insert(ObjectKey::of(object).unwrap(), object.clone());
        }
        live
    }

    fn held(desired: &[Value]) -> i64 {
        partition(&desired[0])
    }

    #[test]
    fn a_single_server_growing_keeps_pod_zero_until_every_chat_pod_uses_the_sentinels() {
        // The first reconcile of the growth: nothing uses the Sentinels yet.
        let mut desired = vec![redis(true, None)];
        let running = live(&[redis(false, None), chat(false, 1, 1, 2, 2)]);
        assert!(hold_single_server(&mut desired, &running).is_some());
        assert_eq!(held(&desired), 1);

        // The chat Deployment changed but not yet rolled, or rolled half-way.
        for chat in [
            chat(true, 2, 1, 2, 2),
            chat(true, 2, 2, 1, 3),
            chat(true, 2, 2, 2, 3),
        ] {
            let mut desired = vec![redis(true, None)];
            let running = live(&[redis(true, Some(1)), chat]);
            assert!(hold_single_server(&mut desired, &running).is_some());
            assert_eq!(held(&desired), 1);
        }

        // Every chat pod on the Sentinels: pod 0 is replaced.
        let mut desired = vec![redis(true, None)];
        let running = live(&[redis(true, Some(1)), chat(true, 2, 2, 2, 2)]);
        assert_eq!(hold_single_server(&mut desired, &running), None);
        assert_eq!(
            desired[0].pointer("/spec/updateStrategy/rollingUpdate/partition"),
            Some(&json!(0)),
            "lifted in so many words"
        );
    }

    #[test]
    fn nothing_is_held_but_a_growth() {
        // A highly available set at rest, with its chat pods changing.
        let mut desired = vec![redis(true, None)];
        let running = live(&[redis(true, None), chat(true, 3, 2, 0, 2)]);
        assert_eq!(hold_single_server(&mut desired, &running), None);
        // A single server staying single.
        let mut desired = vec![redis(false, None)];
        let running = live(&[redis(false, None), chat(false, 2, 1, 0, 2)]);
        assert_eq!(hold_single_server(&mut desired, &running), None);
        // A new instance: no StatefulSet runs yet.
        let mut desired = vec![redis(true, None)];
        assert_eq!(hold_single_server(&mut desired, &live(&[])), None);
        assert_eq!(desired[0].pointer("/spec/updateStrategy"), None);
    }
}

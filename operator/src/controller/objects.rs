//! The children as the API server holds them: which API each kind lives in,
//! what a cluster's children look like now, and the pure decision of what to
//! write. The controller compares before it writes, so a reconcile with
//! nothing to change makes no changing call at all.

use std::collections::BTreeMap;
use std::fmt;

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::desired::quantity_value;

/// Every kind the operator creates: `(apiVersion, kind, plural)`.
pub const CHILD_KINDS: [(&str, &str, &str); 11] = [
    ("v1", "Secret", "secrets"),
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Service", "services"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "Deployment", "deployments"),
    ("batch/v1", "Job", "jobs"),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
    ("networking.k8s.io/v1", "Ingress", "ingresses"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "servicemonitors",
    ),
];

/// The kind that exists only where the Prometheus Operator is installed.
pub const SERVICE_MONITOR: &str = "ServiceMonitor";

/// The API of one of [`CHILD_KINDS`].
pub fn api_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (_, _, plural) = CHILD_KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// Which object: kind and name (the namespace is the ChatCluster's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of a JSON object with `apiVersion`, `kind` and `metadata.name`.
    pub fn of(object: &Value) -> Option<Self> {
        Some(Self {
            api_version: object.get("apiVersion")?.as_str()?.to_owned(),
            kind: object.get("kind")?.as_str()?.to_owned(),
            name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// What exists now of one ChatCluster's children.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// The children this ChatCluster owns, by key.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Whether the cluster serves the ServiceMonitor API.
    pub service_monitor_api: bool,
}

/// The writes that bring the live children to the desired ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Objects to server-side apply, in the desired (apply) order.
    pub apply: Vec<Value>,
    /// Owned objects no longer wanted.
    pub prune: Vec<ObjectKey>,
    /// Wanted, but their API is not served (a ServiceMonitor without the
    /// Prometheus Operator).
    pub unavailable: Vec<ObjectKey>,
}

impl Plan {
    pub fn changes_nothing(&self) -> bool {
        self.apply.is_empty() && self.prune.is_empty()
    }
}

/// What to write. `keep` names owned objects never pruned (the generated JWT
/// key outlives a switch to a Secret of the user's own: switching back must
/// not log everyone out).
pub fn plan(desired: &[Value], live: &Live, keep: &[ObjectKey]) -> Plan {
    let mut plan = Plan::default();
    let mut wanted = Vec::with_capacity(desired.len());
    for object in desired {
        let Some(key) = ObjectKey::of(object) else {
            continue;
        };
        if key.kind == SERVICE_MONITOR && !live.service_monitor_api {
            plan.unavailable.push(key.clone());
        } else if live
            .objects
            .get(&key)
            .is_none_or(|current| !contains(current, object))
        {
            plan.apply.push(object.clone());
        }
        wanted.push(key);
    }
    plan.prune = live
        .objects
        .keys()
        .filter(|key| !wanted.contains(key) && !keep.contains(key))
        .cloned()
        .collect();
    plan
}

/// With an autoscaler, the desired Deployment leaves `spec.replicas` to it;
/// but until another manager (the HPA, through the scale subresource) has
/// written the field, this operator is its only owner, and an apply without
/// it would remove it: the Deployment would fall to 1 pod. So the live
/// count is sent until someone else owns it.
pub fn keep_replicas_until_owned(desired: &mut [Value], live: &Live, manager: &str) {
    for object in desired.iter_mut() {
        let Some(key) = ObjectKey::of(object).filter(|k| k.kind == "Deployment") else {
            continue;
        };
        if object.pointer("/spec/replicas").is_some() {
            continue;
        }
        let Some(current) = live.objects.get(&key) else {
            continue;
        };
        let Some(replicas) = current.pointer("/spec/replicas").cloned() else {
            continue;
        };
        let owned_by_another = current
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|entry| entry.get("manager").and_then(Value::as_str) != Some(manager))
            .any(|entry| entry.pointer("/fieldsV1/f:spec/f:replicas").is_some());
        if !owned_by_another
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("replicas".to_owned(), replicas);
        }
    }
}

/// Whether `live` already holds every field of `desired` with the same value.
/// Fields the API server defaults, or other managers own, are not ours to
/// compare; `apiVersion` and `kind` are not returned in list items.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(field, want)| match live.get(field) {
                _ if field == "apiVersion" || field == "kind" => true,
                Some(have) => contains(have, want),
                // The API server drops nulls and empty lists and maps.
                None => is_empty(want),
            })
        }
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| contains(l, d))
        }
        // The API server stores quantities in its canonical form (`1024Mi`
        // comes back `1Gi`): the same amount is no difference, or every pass
        // would apply again and say so.
        (Value::String(live), Value::String(desired)) => {
            live == desired
                || quantity_value(live).is_some_and(|l| Some(l) == quantity_value(desired))
        }
        (live, desired) => live == desired,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_replica_count_is_kept_until_the_autoscaler_owns_it() {
        let deployment = |replicas: Option<i64>, managers: Value| {
            let mut object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "demo", "managedFields": managers},
                "spec": {"template": {}}});
            if let Some(replicas) = replicas {
                object["spec"]["replicas"] = json!(replicas);
            }
            object
        };
        let ours = json!([{"manager": "chat-operator", "operation": "Apply",
                           "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}]);
        let mut live = Live::default();
        live.objects.insert(
            ObjectKey::of(&deployment(None, json!([]))).unwrap(),
            deployment(Some(5), ours.clone()),
        );
        // Autoscaling just enabled: only this operator owns the count.
        let mut desired = vec![deployment(None, json!([]))];
        keep_replicas_until_owned(&mut desired, &live, "chat-operator");
        assert_eq!(desired[0]["spec"]["replicas"], 5);

        // The HPA wrote it: left to the HPA.
        let mut both = ours.as_array().unwrap().clone();
        both.push(json!({"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
                         "fieldsV1": {"f:spec": {"f:replicas": {}}}}));
        live.objects.insert(
            ObjectKey::of(&deployment(None, json!([]))).unwrap(),
            deployment(Some(7), json!(both)),
        );
        let mut desired = vec![deployment(None, json!([]))];
        keep_replicas_until_owned(&mut desired, &live, "chat-operator");
        assert!(desired[0]["spec"].get("replicas").is_none());

        // Without an autoscaler the spec's count stands.
        let mut desired = vec![deployment(Some(2), json!([]))];
        keep_replicas_until_owned(&mut desired, &live, "chat-operator");
        assert_eq!(desired[0]["spec"]["replicas"], 2);
    }
    use serde_json::json;

    fn key(kind: &str, name: &str) -> ObjectKey {
        let api_version = CHILD_KINDS
            .iter()
            .find(|(_, k, _)| *k == kind)
            .map(|(v, _, _)| (*v).to_owned())
            .unwrap();
        ObjectKey {
            api_version,
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    fn object(kind: &str, name: &str, spec: Value) -> Value {
        let key = key(kind, name);
        json!({"apiVersion": key.api_version, "kind": kind, "metadata": {"name": name}, "spec": spec})
    }

    fn live(objects: &[Value], service_monitor_api: bool) -> Live {
        Live {
            objects: objects
                .iter()
                .map(|o| (ObjectKey::of(o).unwrap(), o.clone()))
                .collect(),
            service_monitor_api,
        }
    }

    #[test]
    fn server_defaults_and_other_managers_fields_are_not_differences() {
        let desired = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "chat", "args": []}]}}}});
        let live = json!({
            "metadata": {"resourceVersion": "7", "managedFields": []},
            "spec": {"replicas": 3, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "chat", "terminationMessagePath": "/dev/termination-log"}]}}},
            "status": {"readyReplicas": 3},
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn the_same_quantity_in_another_form_is_no_difference() {
        let live = json!({"resources": {"requests": {"memory": "1Gi", "cpu": "500m", "storage": "1536Mi"}}});
        let same = json!({"resources": {"requests": {"memory": "1024Mi", "cpu": "0.5", "storage": "1.5Gi"}}});
        assert!(contains(&live, &same));
        let more = json!({"resources": {"requests": {"memory": "2Gi"}}});
        assert!(!contains(&live, &more));
        assert!(!contains(
            &json!({"image": "redis:7"}),
            &json!({"image": "redis:7.0"})
        ));
    }

    #[test]
    fn a_changed_or_missing_field_or_list_item_is_a_difference() {
        let live = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
        assert!(!contains(&live, &json!({"spec": {"replicas": 5}})));
        assert!(!contains(&live, &json!({"spec": {"paused": true}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}})
        ));
        assert!(!contains(
            &live,
            &json!({"spec": {"ports": [{"port": 81}]}})
        ));
    }

    #[test]
    fn plan_writes_only_what_is_missing_or_different() {
        let desired = vec![
            object("ConfigMap", "demo-config", json!(null)),
            object("Deployment", "demo", json!({"replicas": 3})),
            object("Service", "demo", json!({"type": "ClusterIP"})),
        ];
        let current = live(
            &[
                object("ConfigMap", "demo-config", json!(null)),
                object("Deployment", "demo", json!({"replicas": 5})),
            ],
            false,
        );
        let plan = plan(&desired, &current, &[]);
        assert_eq!(plan.apply, desired[1..].to_vec());
        assert!(plan.prune.is_empty());
        assert!(super::plan(&desired, &live(&desired, false), &[]).changes_nothing());
    }

    #[test]
    fn plan_prunes_owned_children_no_longer_wanted_but_keeps_the_jwt_key() {
        let desired = vec![object("Deployment", "demo", json!({}))];
        let current = live(
            &[
                object("Deployment", "demo", json!({})),
                object("Ingress", "demo", json!({})),
                object("Secret", "demo-jwt", json!(null)),
            ],
            true,
        );
        let plan = plan(&desired, &current, &[key("Secret", "demo-jwt")]);
        assert_eq!(plan.prune, vec![key("Ingress", "demo")]);
    }

    #[test]
    fn a_service_monitor_waits_for_its_api() {
        let desired = vec![object("ServiceMonitor", "demo", json!({}))];
        let without = plan(&desired, &live(&[], false), &[]);
        assert!(without.apply.is_empty());
        assert_eq!(without.unavailable, vec![key("ServiceMonitor", "demo")]);
        assert_eq!(plan(&desired, &live(&[], true), &[]).apply, desired);
    }

    #[test]
    fn every_child_kind_has_an_api() {
        for (api_version, kind, plural) in CHILD_KINDS {
            let api = api_resource(api_version, kind).unwrap();
            assert_eq!(
                (api.api_version.as_str(), api.plural.as_str()),
                (api_version, plural)
            );
        }
        assert!(api_resource("v1", "Pod").is_none());
    }
}

//! Growing the volumes of the managed Redis and MongoDB, and changing the
//! other fields a StatefulSet cannot change in place.
//!
//! A StatefulSet's volume claim templates cannot change once it exists, and
//! the claims it made are not resized by it. So a bigger size in the spec is
//! carried out the way Kubernetes documents: each claim is patched to the new
//! size (the storage class must allow it: `allowVolumeExpansion`), then the
//! StatefulSet is deleted without its pods (orphan propagation) and applied
//! again with the new template, adopting them, in one step: a failure after
//! the delete is retried by the next reconcile, which finds it missing and
//! creates it. A smaller size, or a class that cannot grow, keeps the live
//! template, so everything else in the StatefulSet still applies, and is
//! reported: the `VolumesResizable` condition and a warning event say why.
//! A new governing Service or pod management policy (this operator's own
//! upgrades) is carried out the same way.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::objects::{Live, ObjectKey};
use super::{Error, api_error};
use crate::desired::quantity_bytes;

/// How long a StatefulSet deleted without its pods may take to go (the
/// garbage collector removes its `orphan` finalizer); longer fails the
/// reconcile, which is retried.
const ORPHANED_WITHIN: Duration = Duration::from_secs(30);

/// A claim template whose size the spec changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resize {
    pub template: String,
    pub from: String,
    pub to: String,
}

impl Resize {
    /// Whether the new size is bigger (a size this cannot read counts as not).
    pub fn grows(&self) -> bool {
        matches!(
            (quantity_bytes(&self.from), quantity_bytes(&self.to)),
            (Some(from), Some(to)) if to > from
        )
    }
}

fn templates(statefulset: &Value) -> &[Value] {
    statefulset
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn size(template: &Value) -> Option<&str> {
    template
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
}

/// The claim templates of a desired StatefulSet whose storage request
/// differs from the live one's (by name; a template only one side has is
/// not a resize).
pub fn resizes(desired: &Value, live: &Value) -> Vec<Resize> {
    templates(desired)
        .iter()
        .filter_map(|wanted| {
            let name = wanted.pointer("/metadata/name")?.as_str()?;
            let current = templates(live)
                .iter()
                .find(|t| t.pointer("/metadata/name").and_then(Value::as_str) == Some(name))?;
            let (from, to) = (size(current)?, size(wanted)?);
            let same =
                from == to || quantity_bytes(from).is_some_and(|f| Some(f) == quantity_bytes(to));
            (!same).then(|| Resize {
                template: name.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
            })
        })
        .collect()
}

/// Why a desired StatefulSet cannot have its claim templates' storage
/// classes: a claim keeps the class it was made with.
pub fn class_change(desired: &Value, live: &Value) -> Option<String> {
    let class = |t: &Value| {
        t.pointer("/spec/storageClassName")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    templates(desired).iter().find_map(|wanted| {
        let name = wanted.pointer("/metadata/name")?.as_str()?;
        let current = templates(live)
            .iter()
            .find(|t| t.pointer("/metadata/name").and_then(Value::as_str) == Some(name))?;
        (class(wanted) != class(current)).then(|| {
            format!(
                "volume {name} cannot move from storage class {} to {}: existing volumes keep theirs",
                class(current).unwrap_or_else(|| "(default)".into()),
                class(wanted).unwrap_or_else(|| "(default)".into())
            )
        })
    })
}

/// Which fields a desired StatefulSet changes that the API server refuses
/// to change in place (besides claim templates, handled as resizes).
pub fn fixed_changes(desired: &Value, live: &Value) -> Vec<&'static str> {
    ["serviceName", "podManagementPolicy"]
        .into_iter()
        .filter(|field| {
            let pointer = format!("/spec/{field}");
            // The API server defaults the policy to OrderedReady.
            let live_value = live.pointer(&pointer).and_then(Value::as_str).unwrap_or(
                if *field == "podManagementPolicy" {
                    "OrderedReady"
                } else {
                    ""
                },
            );
            desired
                .pointer(&pointer)
                .and_then(Value::as_str)
                .is_some_and(|wanted| wanted != live_value)
        })
        .collect()
}

/// `desired` with the live claim templates, which the API server accepts.
pub fn keep_live_claims(desired: &mut Value, live: &Value) {
    if let (Some(spec), Some(current)) = (
        desired.pointer_mut("/spec").and_then(Value::as_object_mut),
        live.pointer("/spec/volumeClaimTemplates"),
    ) {
        spec.insert("volumeClaimTemplates".to_owned(), current.clone());
    }
}

/// Whether `claim` was made by StatefulSet `statefulset` from `template`:
/// `<template>-<statefulset>-<ordinal>`.
pub fn is_claim_of(claim: &str, template: &str, statefulset: &str) -> bool {
    claim
        .strip_prefix(template)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(statefulset))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// What happened to one StatefulSet's volumes.
pub enum Outcome {
    /// Its claims were patched and it was re-created with the new size.
    Grown(String),
    /// It was re-created for fields that cannot change in place.
    Recreated(String),
    /// The live size stays; why.
    Refused(String),
}

/// Brings each desired StatefulSet's volumes to the spec's size where the
/// storage allows, and its fixed fields to the desired ones, before the
/// other children are applied; where the storage does not allow, the
/// desired object keeps the live templates.
pub async fn resize(
    client: &Client,
    namespace: &str,
    desired: &mut [Value],
    live: &Live,
) -> Result<Vec<Outcome>, Error> {
    let mut outcomes = Vec::new();
    for object in desired.iter_mut() {
        let Some(key) = ObjectKey::of(object).filter(|k| k.kind == "StatefulSet") else {
            continue;
        };
        let Some(current) = live.objects.get(&key) else {
            continue;
        };
        let resizes = resizes(object, current);
        let class_change = class_change(object, current);
        let fixed = fixed_changes(object, current);
        if resizes.is_empty() && class_change.is_none() && fixed.is_empty() {
            continue;
        }
        let refused = match (class_change, resizes.is_empty()) {
            (Some(why), _) => Some(why),
            (None, true) => None,
            (None, false) => refusal(client, namespace, &key.name, &resizes).await?,
        };
        let grows = refused.is_none() && !resizes.is_empty();
        if let Some(why) = refused {
            keep_live_claims(object, current);
            outcomes.push(Outcome::Refused(format!("StatefulSet {}: {why}", key.name)));
        }
        if grows {
            patch_claims(client, namespace, &key.name, &resizes).await?;
        }
        if !grows && fixed.is_empty() {
            continue;
        }
        recreate(client, namespace, &key.name, object).await?;
        if grows {
            let sizes: Vec<String> = resizes
                .iter()
                .map(|r| format!("{} {} to {}", r.template, r.from, r.to))
                .collect();
            outcomes.push(Outcome::Grown(format!(
                "StatefulSet {}: {}",
                key.name,
                sizes.join(", ")
            )));
        }
        if !fixed.is_empty() {
            outcomes.push(Outcome::Recreated(format!(
                "StatefulSet {}: new {}",
                key.name,
                fixed.join(" and ")
            )));
        }
    }
    Ok(outcomes)
}

/// The claims `statefulset` made from `template`.
pub(super) async fn claims(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    template: &str,
) -> Result<Vec<PersistentVolumeClaim>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let all = api
        .list(&Default::default())
        .await
        .map_err(api_error("listing", "PersistentVolumeClaims"))?;
    Ok(all
        .items
        .into_iter()
        .filter(|claim| is_claim_of(&claim.name_any(), template, statefulset))
        .collect())
}

/// Why the resizes cannot be made, if they cannot.
async fn refusal(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    resizes: &[Resize],
) -> Result<Option<String>, Error> {
    if let Some(shrink) = resizes.iter().find(|r| !r.grows()) {
        return Ok(Some(format!(
            "volume {} cannot go from {} to {}: volumes only grow",
            shrink.template, shrink.from, shrink.to
        )));
    }
    let classes: Api<StorageClass> = Api::all(client.clone());
    for resize in resizes {
        for claim in claims(client, namespace, statefulset, &resize.template).await? {
            let Some(class) = claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
            else {
                return Ok(Some(format!(
                    "claim {} has no storage class, so it cannot be expanded",
                    claim.name_any()
                )));
            };
            let expandable = classes
                .get_opt(&class)
                .await
                .map_err(api_error("reading", format!("StorageClass/{class}")))?
                .and_then(|c| c.allow_volume_expansion)
                .unwrap_or(false);
            if !expandable {
                return Ok(Some(format!(
                    "storage class {class} of claim {} does not allow volume expansion",
                    claim.name_any()
                )));
            }
        }
    }
    Ok(None)
}

/// Patches every claim of `statefulset` to its new size.
async fn patch_claims(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    resizes: &[Resize],
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for resize in resizes {
        for claim in claims(client, namespace, statefulset, &resize.template).await? {
            let name = claim.name_any();
            let patch = json!({"spec": {"resources": {"requests": {"storage": resize.to}}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_error(
                    "resizing",
                    format!("PersistentVolumeClaim/{name}"),
                ))?;
        }
    }
    Ok(())
}

/// Deletes the StatefulSet without its pods, waits until it is gone and
/// applies `desired` in its place, which adopts them.
async fn recreate(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    desired: &Value,
) -> Result<(), Error> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let object = format!("StatefulSet/{statefulset}");
    match statefulsets
        .delete(statefulset, &DeleteParams::orphan())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return super::apply(client, namespace, desired).await.map(drop);
        }
        Err(source) => return Err(api_error("deleting (orphaning its pods)", &object)(source)),
    }
    let deadline = Instant::now() + ORPHANED_WITHIN;
    loop {
        let gone = statefulsets
            .get_opt(statefulset)
            .await
            .map_err(api_error("reading", &object))?
            .is_none();
        if gone {
            return super::apply(client, namespace, desired).await.map(drop);
        }
        if Instant::now() > deadline {
            return Err(Error::Stuck(format!(
                "{object} deleted to be re-created is still there after {}s",
                ORPHANED_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statefulset(templates: &[(&str, &str)]) -> Value {
        let templates: Vec<Value> = templates
            .iter()
            .map(|(name, size)| {
                json!({"metadata": {"name": name}, "spec": {"resources": {"requests": {"storage": size}}}})
            })
            .collect();
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "demo-mongodb"},
               "spec": {"replicas": 3, "volumeClaimTemplates": templates}})
    }

    #[test]
    fn a_changed_size_is_a_resize_and_an_equal_one_is_not() {
        let live = statefulset(&[("data", "20Gi")]);
        assert!(resizes(&statefulset(&[("data", "20Gi")]), &live).is_empty());
        // The same quantity written another way.
        assert!(resizes(&statefulset(&[("data", "20480Mi")]), &live).is_empty());
        let grow = resizes(&statefulset(&[("data", "30Gi")]), &live);
        assert_eq!(
            grow,
            [Resize {
                template: "data".into(),
                from: "20Gi".into(),
                to: "30Gi".into()
            }]
        );
        assert!(grow[0].grows());
        let shrink = resizes(&statefulset(&[("data", "10Gi")]), &live);
        assert!(!shrink[0].grows());
        // A template only one side has (persistence switched) is not a resize.
        assert!(resizes(&statefulset(&[("other", "1Gi")]), &live).is_empty());
    }

    #[test]
    fn a_refused_resize_keeps_the_live_templates_and_nothing_else() {
        let live = statefulset(&[("data", "20Gi")]);
        let mut desired = statefulset(&[("data", "10Gi")]);
        desired["spec"]["replicas"] = json!(5);
        keep_live_claims(&mut desired, &live);
        assert_eq!(
            desired["spec"]["volumeClaimTemplates"],
            live["spec"]["volumeClaimTemplates"]
        );
        assert_eq!(desired["spec"]["replicas"], 5);
    }

    #[test]
    fn a_changed_storage_class_is_refused() {
        let live = statefulset(&[("data", "20Gi")]);
        assert_eq!(class_change(&live, &live), None);
        let mut desired = live.clone();
        desired["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = json!("fast");
        let why = class_change(&desired, &live).unwrap();
        assert!(why.contains("(default) to fast"), "{why}");
    }

    #[test]
    fn a_new_governing_service_or_pod_policy_needs_a_new_statefulset() {
        let mut live = statefulset(&[("data", "20Gi")]);
        live["spec"]["serviceName"] = json!("demo-redis");
        let mut desired = live.clone();
        assert!(fixed_changes(&desired, &live).is_empty());
        // What the API server filled in is no change.
        desired["spec"]["podManagementPolicy"] = json!("OrderedReady");
        assert!(fixed_changes(&desired, &live).is_empty());
        desired["spec"]["podManagementPolicy"] = json!("Parallel");
        desired["spec"]["serviceName"] = json!("demo-redis-headless");
        assert_eq!(
            fixed_changes(&desired, &live),
            ["serviceName", "podManagementPolicy"]
        );
    }

    #[test]
    fn claims_are_recognised_by_the_statefulsets_naming() {
        assert!(is_claim_of("data-demo-mongodb-0", "data", "demo-mongodb"));
        assert!(is_claim_of("data-demo-mongodb-12", "data", "demo-mongodb"));
        assert!(!is_claim_of("data-demo-mongodb-x", "data", "demo-mongodb"));
        assert!(!is_claim_of("data-demo-mongodb-", "data", "demo-mongodb"));
        assert!(!is_claim_of(
            "data-demo-mongodb-init-0",
            "data",
            "demo-mongodb"
        ));
        assert!(!is_claim_of("data-demo-redis-0", "data", "demo-mongodb"));
    }
}

//! Growing the volumes of the managed Redis and MongoDB.
//!
//! A StatefulSet's volume claim templates cannot change once it exists, and
//! the claims it made are not resized by it. So a bigger size in the spec is
//! carried out the way Kubernetes documents: each claim is patched to the new
//! size (the storage class must allow it: `allowVolumeExpansion`), then the
//! StatefulSet is deleted without its pods (orphan propagation) and applied
//! again with the new template, adopting them. A smaller size, or a class
//! that cannot grow, keeps the live template, so everything else in the
//! StatefulSet still applies, and is reported: the `VolumesResizable`
//! condition and a warning event say why.

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
    /// The live size stays; why.
    Refused(String),
}

/// Brings each desired StatefulSet's volumes to the spec's size where the
/// storage allows, before the children are applied; where it does not, the
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
        if resizes.is_empty() && class_change.is_none() {
            continue;
        }
        let refused = match class_change {
            Some(why) => Some(why),
            None => refusal(client, namespace, &key.name, &resizes).await?,
        };
        match refused {
            Some(why) => {
                keep_live_claims(object, current);
                outcomes.push(Outcome::Refused(format!("StatefulSet {}: {why}", key.name)));
            }
            None => {
                grow(client, namespace, &key.name, &resizes).await?;
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

/// Patches every claim to its new size, then deletes the StatefulSet
/// without its pods and waits until it is gone, so the apply that follows
/// creates it with the new templates.
async fn grow(
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
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let object = format!("StatefulSet/{statefulset}");
    match statefulsets
        .delete(statefulset, &DeleteParams::orphan())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
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
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Stuck(format!(
                "{object} deleted to grow its volumes is still there after {}s",
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

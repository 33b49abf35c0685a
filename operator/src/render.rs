//! Everything the operator would apply for a ChatCluster, in apply order, as
//! JSON values (every object with its `apiVersion` and `kind`). `render` and
//! the controller share this list, so a dry run shows exactly what is applied.

use serde::Serialize;
use serde_json::Value;

use crate::crd::ChatCluster;
use crate::desired::{self, BuildError};

fn value<T: Serialize>(object: T) -> Result<Value, BuildError> {
    serde_json::to_value(object).map_err(|source| BuildError::Shape {
        what: "object",
        source,
    })
}

/// The secret values the children depend on. A pure function cannot read
/// them, so the caller does (or generates the key, for a new cluster).
#[derive(Debug, Clone, Default)]
pub struct SecretValues {
    /// The JWT signing key: the generated one, or the value of `jwtSecret`.
    pub jwt_key: String,
    /// The managed Redis's password (generated once, then read back).
    pub redis_password: String,
    /// The managed MongoDB's credentials (generated once, then read back).
    pub mongodb: desired::MongoDbCredentials,
    /// Values of the user's Secrets the pods read (external Redis URL and
    /// MongoDB URI), so that rotating one rolls the pods.
    pub referenced: Vec<String>,
}

impl SecretValues {
    /// Only (new or existing) generated values.
    pub fn generated(
        jwt_key: impl Into<String>,
        redis_password: impl Into<String>,
        mongodb: desired::MongoDbCredentials,
    ) -> Self {
        Self {
            jwt_key: jwt_key.into(),
            redis_password: redis_password.into(),
            mongodb,
            referenced: Vec::new(),
        }
    }

    /// What the Redis servers and Sentinels read: the password.
    fn redis_digest(&self) -> String {
        desired::digest([self.redis_password.as_str()])
    }

    /// What the MongoDB members read: the keyfile and the passwords.
    fn mongodb_digest(&self) -> String {
        desired::digest(self.mongodb.values())
    }

    fn digest(&self) -> String {
        desired::digest(
            [self.jwt_key.as_str(), self.redis_password.as_str()]
                .into_iter()
                .chain(self.mongodb.values())
                .chain(self.referenced.iter().map(String::as_str)),
        )
    }
}

/// The children of `cluster`, in apply order.
pub fn children(cluster: &ChatCluster, secrets: &SecretValues) -> Result<Vec<Value>, BuildError> {
    let secrets_digest = secrets.digest();
    let (redis_digest, mongodb_digest) = (secrets.redis_digest(), secrets.mongodb_digest());
    let jwt_key = secrets.jwt_key.as_str();
    let mut objects = Vec::new();
    let optional = [
        desired::jwt_secret(cluster, jwt_key)?
            .map(value)
            .transpose()?,
        desired::redis_auth_secret(cluster, &secrets.redis_password)?
            .map(value)
            .transpose()?,
        desired::mongodb_auth_secret(cluster, &secrets.mongodb)?
            .map(value)
            .transpose()?,
        desired::connection_secret(cluster, &secrets.redis_password, &secrets.mongodb)?
            .map(value)
            .transpose()?,
    ];
    objects.extend(optional.into_iter().flatten());
    objects.push(value(desired::config_map(cluster)?)?);
    // Before the StatefulSets that name their pods through them.
    for service in desired::redis_headless_services(cluster)? {
        objects.push(value(service)?);
    }
    let backing = [
        desired::redis_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_service(cluster)?.map(value).transpose()?,
        desired::redis_statefulset(cluster)?
            .map(|set| value(desired::rolled_with(set, &redis_digest)))
            .transpose()?,
        desired::redis_sentinel_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_sentinel_service(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_sentinel_statefulset(cluster)?
            .map(|set| value(desired::rolled_with(set, &redis_digest)))
            .transpose()?,
        desired::mongodb_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::mongodb_service(cluster)?.map(value).transpose()?,
        desired::mongodb_statefulset(cluster)?
            .map(|set| value(desired::rolled_with(set, &mongodb_digest)))
            .transpose()?,
        desired::mongodb_init_job(cluster, &mongodb_digest)?
            .map(value)
            .transpose()?,
    ];
    objects.extend(backing.into_iter().flatten());
    for budget in desired::redis_disruption_budgets(cluster)? {
        objects.push(value(budget)?);
    }
    if let Some(budget) = desired::mongodb_disruption_budget(cluster)? {
        objects.push(value(budget)?);
    }
    objects.push(value(desired::deployment(cluster, &secrets_digest)?)?);
    objects.push(value(desired::service(cluster)?)?);
    objects.push(value(desired::disruption_budget(cluster)?)?);
    let extras = [
        desired::horizontal_autoscaler(cluster)?
            .map(value)
            .transpose()?,
        desired::ingress(cluster)?.map(value).transpose()?,
        desired::service_monitor(cluster)?,
    ];
    objects.extend(extras.into_iter().flatten());
    Ok(objects)
}

/// The children as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&yaml(object)?);
    }
    Ok(out)
}

/// YAML that YAML 1.1 parsers read back the same: kubectl (go-yaml) and
/// PyYAML take a plain `yes`, `no`, `on`, `off`, `y` or `n` for a boolean,
/// which serde_yaml_ng (YAML 1.2) leaves unquoted. Booleans are always
/// written `true`/`false`, so a plain scalar of those words is a string.
pub fn yaml<T: Serialize>(value: &T) -> Result<String, serde_yaml_ng::Error> {
    let value =
        serde_json::to_value(value).map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
    let text = serde_yaml_ng::to_string(&sorted(value))?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(&quote_yaml11_boolean(line));
        out.push('\n');
    }
    Ok(out)
}

/// Object keys in sorted order at every level. serde_json keeps insertion
/// order when another crate in the build enables its `preserve_order`
/// feature, which would make the output depend on what is built alongside.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn quote_yaml11_boolean(line: &str) -> String {
    const AMBIGUOUS: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];
    let start = match line.rfind(": ") {
        Some(i) => i + 2,
        None => line.len() - line.trim_start_matches([' ', '-']).len(),
    };
    let (head, scalar) = line.split_at(start);
    if AMBIGUOUS.contains(&scalar.to_ascii_lowercase().as_str()) {
        format!("{head}'{scalar}'")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn yaml_11_booleans_written_as_strings_are_quoted() {
        let value = serde_json::json!({"args": ["--appendonly", "yes", "on"], "mode": "No", "flag": true, "name": "yesterday"});
        let text = yaml(&value).unwrap();
        assert!(
            text.contains("- 'yes'") && text.contains("- 'on'") && text.contains("mode: 'No'"),
            "{text}"
        );
        assert!(
            text.contains("flag: true") && text.contains("name: yesterday"),
            "{text}"
        );
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    /// A pod reads a Secret's value only when it starts: each StatefulSet's
    /// pods are stamped with the digest of what they read, so a new Redis
    /// password rolls the Redis servers and Sentinels (not MongoDB), and new
    /// MongoDB credentials roll the members (not Redis).
    #[test]
    fn a_changed_credential_rolls_the_pods_that_read_it() {
        let cluster: ChatCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "chatcluster.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat", "uid": "1f0c6a1e-0000-4000-8000-000000000001"},
            "spec": {"redis": {"managed": {"replicas": 3}}, "mongodb": {"managed": {"members": 3}}},
        }))
        .unwrap();
        let stamps = |secrets: &SecretValues| -> BTreeMap<String, Value> {
            children(&cluster, secrets)
                .unwrap()
                .into_iter()
                .filter(|o| o["kind"] == "StatefulSet")
                .map(|o| {
                    let stamp = o["spec"]["template"]["metadata"]["annotations"]
                        [desired::CONFIG_HASH]
                        .clone();
                    (o["metadata"]["name"].as_str().unwrap().to_owned(), stamp)
                })
                .collect()
        };
        let mongodb = desired::MongoDbCredentials::generate();
        let before = stamps(&SecretValues::generated("k", "p1", mongodb.clone()));
        assert_eq!(before.len(), 3, "{before:?}");
        assert!(before.values().all(Value::is_string), "{before:?}");
        let changed = |after: &BTreeMap<String, Value>| -> Vec<String> {
            before
                .iter()
                .filter(|(name, stamp)| after[name.as_str()] != **stamp)
                .map(|(name, _)| name.clone())
                .collect()
        };
        let new_password = stamps(&SecretValues::generated("k", "p2", mongodb.clone()));
        assert_eq!(
            changed(&new_password),
            ["demo-redis", "demo-redis-sentinel"]
        );
        let new_jwt_key = stamps(&SecretValues::generated("k2", "p1", mongodb));
        assert!(changed(&new_jwt_key).is_empty());
        let new_mongodb = stamps(&SecretValues::generated(
            "k",
            "p1",
            desired::MongoDbCredentials::generate(),
        ));
        assert_eq!(changed(&new_mongodb), ["demo-mongodb"]);
    }

    /// What checkov asks of every workload (scripts/check_packaging.py runs
    /// it): no API token where nothing calls the API, requests on every
    /// container, and a read-only root filesystem.
    #[test]
    fn every_pod_is_locked_down_and_every_container_sized() {
        let cluster: ChatCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "chatcluster.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "demo", "namespace": "chat", "uid": "1f0c6a1e-0000-4000-8000-000000000001"},
            "spec": {"mongodb": {"managed": {"members": 3}}},
        }))
        .unwrap();
        let secrets = SecretValues::generated("k", "p", desired::MongoDbCredentials::default());
        let children = children(&cluster, &secrets).unwrap();
        let pods: Vec<&Value> = children
            .iter()
            .filter_map(|o| o.pointer("/spec/template/spec"))
            .collect();
        assert_eq!(pods.len(), 4, "server, Redis, MongoDB and its init Job");
        for pod in pods {
            assert_eq!(pod["automountServiceAccountToken"], false, "{pod}");
            let containers = pod["containers"].as_array().unwrap().iter();
            let init = pod["initContainers"].as_array().into_iter().flatten();
            for container in containers.chain(init) {
                let name = &container["name"];
                assert!(
                    container.pointer("/resources/requests/cpu").is_some(),
                    "{name}"
                );
                assert!(
                    container.pointer("/resources/requests/memory").is_some(),
                    "{name}"
                );
                assert!(
                    container.pointer("/resources/limits/memory").is_some(),
                    "{name}"
                );
                assert_eq!(
                    container["securityContext"]["readOnlyRootFilesystem"], true,
                    "{name}"
                );
            }
        }
    }
}

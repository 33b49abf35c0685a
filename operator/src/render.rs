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
    let backing = [
        desired::redis_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_service(cluster)?.map(value).transpose()?,
        desired::redis_statefulset(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_sentinel_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_sentinel_service(cluster)?
            .map(value)
            .transpose()?,
        desired::redis_sentinel_deployment(cluster)?
            .map(value)
            .transpose()?,
        desired::mongodb_network_policy(cluster)?
            .map(value)
            .transpose()?,
        desired::mongodb_service(cluster)?.map(value).transpose()?,
        desired::mongodb_statefulset(cluster)?
            .map(value)
            .transpose()?,
        desired::mongodb_init_job(cluster)?.map(value).transpose()?,
    ];
    objects.extend(backing.into_iter().flatten());
    for budget in desired::redis_disruption_budgets(cluster)? {
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

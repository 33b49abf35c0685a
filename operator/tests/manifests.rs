//! The shipped manifests and what `render` prints, checked against the
//! generated CRD and the Kubernetes 1.31 OpenAPI schemas.

use std::path::{Path, PathBuf};
use std::process::Command;

use chat_operator::crd::ChatCluster;
use chat_operator::render;
use kube::CustomResourceExt;
use serde::Deserialize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("manifests/examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "a minimal and a full example");
    files
}

/// The project's Python (with kubernetes-validate), installed by scripts/test.sh.
fn python() -> PathBuf {
    let python = std::env::var("CHAT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run scripts/test.sh",
        python.display()
    );
    python
}

fn validate(mode: &str, target: &str, files: &[&Path]) {
    let output = Command::new(python())
        .arg(root().join("operator/tests/validate.py"))
        .args([mode, target])
        .args(files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{mode} validation failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn manifests_crd_yaml_is_the_generated_crd() {
    let generated = render::yaml(&ChatCluster::crd()).unwrap();
    let shipped = std::fs::read_to_string(root().join("manifests/crd.yaml")).unwrap();
    assert!(
        shipped == generated,
        "manifests/crd.yaml is stale: run `cargo run -p chat-operator -- crd > manifests/crd.yaml`"
    );
}

#[test]
fn the_crd_has_the_contracted_names_and_subresources() {
    let crd = serde_json::to_value(ChatCluster::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "chatcluster.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "ChatCluster");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "chat");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Phase", "Age"]);
    let text = crd.to_string();
    assert!(
        text.contains("x-kubernetes-validations"),
        "CEL rules are in the schema"
    );
    assert!(text.contains("set redis.managed or redis.external, not both"));
}

#[test]
fn examples_validate_against_the_crd_schema() {
    let files = examples();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let crd = root().join("manifests/crd.yaml");
    validate("crd", &crd.display().to_string(), &paths);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let _: ChatCluster =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn everything_render_prints_is_valid_kubernetes_1_31() {
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = Vec::new();
    for (i, file) in examples().iter().enumerate() {
        let cluster: ChatCluster =
            serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let objects = render::children(
            &cluster,
            &render::SecretValues::generated(
                "a-generated-key",
                "a-generated-password",
                chat_operator::desired::MongoDbCredentials::default(),
            ),
        )
        .unwrap();
        let path = dir.path().join(format!("rendered-{i}.yaml"));
        std::fs::write(&path, render::to_yaml(&objects).unwrap()).unwrap();
        rendered.push(path);
    }
    let paths: Vec<&Path> = rendered.iter().map(PathBuf::as_path).collect();
    validate("objects", "1.31.0", &paths);
}

#[test]
fn the_binary_renders_a_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["render", "-f"])
        .arg(root().join("manifests/examples/minimal.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_yaml_ng::Value::deserialize(document).unwrap();
            value["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    for kind in [
        "Secret",
        "ConfigMap",
        "StatefulSet",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["render", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.yaml"));
}

fn operator_manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(root().join("manifests/operator.yaml")).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde_json::Value::deserialize(document).unwrap())
        .collect()
}

#[test]
fn the_operator_manifest_is_valid_kubernetes_1_31() {
    validate(
        "objects",
        "1.31.0",
        &[root().join("manifests/operator.yaml").as_path()],
    );
    let kinds: Vec<String> = operator_manifest()
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
}

/// The verbs the ClusterRole grants on `group`/`resource`.
fn granted(role: &serde_json::Value, group: &str, resource: &str) -> Vec<String> {
    let mut verbs = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let has =
            |field: &str, want: &str| rule[field].as_array().unwrap().iter().any(|v| v == want);
        if has("apiGroups", group) && has("resources", resource) {
            verbs.extend(
                rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned()),
            );
        }
    }
    verbs.sort();
    verbs
}

#[test]
fn the_operator_is_granted_exactly_what_the_controller_does() {
    let objects = operator_manifest();
    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                "no wildcards: {rule}"
            );
        }
    }
    let sorted = |verbs: &[&str]| {
        let mut verbs: Vec<String> = verbs.iter().map(|v| (*v).to_owned()).collect();
        verbs.sort();
        verbs
    };
    // Every child kind: listed by label (observe), watched (owns), applied
    // (server-side apply creates or patches) and pruned.
    for (api_version, kind, plural) in chat_operator::controller::objects::CHILD_KINDS {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let mut want = vec!["create", "delete", "list", "patch", "watch"];
        if kind == "ServiceMonitor" {
            // Its API may not exist, so it is not watched.
            want.retain(|v| *v != "watch");
        }
        if kind == "Secret" || kind == "StatefulSet" {
            // The Secrets a ChatCluster names are read by name, and so is a
            // StatefulSet re-created to grow its volumes, until it is gone.
            want.push("get");
        }
        assert_eq!(granted(role, group, plural), sorted(&want), "{kind}");
    }
    assert_eq!(
        granted(role, "chatcluster.dev", "chatclusters"),
        sorted(&["get", "list", "watch"])
    );
    assert_eq!(
        granted(role, "chatcluster.dev", "chatclusters/status"),
        sorted(&["patch"])
    );
    assert_eq!(
        granted(role, "events.k8s.io", "events"),
        sorted(&["create", "patch"])
    );
    // Growing volumes: the claims resized, their classes read.
    assert_eq!(
        granted(role, "", "persistentvolumeclaims"),
        sorted(&["list", "patch"])
    );
    assert_eq!(
        granted(role, "storage.k8s.io", "storageclasses"),
        sorted(&["get"])
    );
    let lease_role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(
        lease_role["metadata"]["namespace"], "chat-operator",
        "Leases only in the operator's namespace"
    );
    assert_eq!(
        granted(lease_role, "coordination.k8s.io", "leases"),
        sorted(&["create", "get", "patch"])
    );

    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "chat-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
}

/// The fields a CEL rule reads, as paths from the node that carries it: `[]`
/// for the node itself (`self.all(...)`, `self % 2`), `["a", "b"]` for
/// `self.a.b`. Presence tests (`has(self.a)`) cost nothing whatever the field
/// holds, so they are not reads.
fn rule_reads(rule: &str) -> Vec<Vec<String>> {
    const METHODS: [&str; 12] = [
        "all",
        "exists",
        "exists_one",
        "map",
        "filter",
        "size",
        "matches",
        "contains",
        "startsWith",
        "endsWith",
        "split",
        "lowerAscii",
    ];
    let mut text = rule.to_owned();
    while let Some(start) = text.find("has(") {
        let end = text[start..]
            .find(')')
            .map_or(text.len(), |e| start + e + 1);
        text.replace_range(start..end, "true");
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut reads = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("self") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + 4..];
        if before.is_some_and(ident) || rest.starts_with(ident) {
            continue; // part of another name, e.g. `oldSelf`
        }
        let mut path = Vec::new();
        while let Some(after_dot) = rest.strip_prefix('.') {
            let len = after_dot
                .find(|c: char| !ident(c))
                .unwrap_or(after_dot.len());
            let name = &after_dot[..len];
            if METHODS.contains(&name) && after_dot[len..].starts_with('(') {
                break; // a method of what the path names so far
            }
            path.push(name.to_owned());
            rest = &after_dot[len..];
        }
        reads.push(path);
    }
    reads
}

/// Where `schema` (and everything inside it) lacks a size bound, as JSON
/// pointers from `at`: strings need maxLength (or an enum), lists maxItems,
/// maps maxProperties.
fn unbounded(schema: &serde_json::Value, at: &str) -> Vec<String> {
    let mut found = Vec::new();
    match schema["type"].as_str() {
        Some("string") if schema["maxLength"].is_null() && schema["enum"].is_null() => {
            found.push(at.to_owned());
        }
        Some("array") => {
            if schema["maxItems"].is_null() {
                found.push(at.to_owned());
            }
            found.extend(unbounded(&schema["items"], &format!("{at}/items")));
        }
        Some("object") => {
            if let Some(values) = schema["additionalProperties"].as_object() {
                if schema["maxProperties"].is_null() {
                    found.push(at.to_owned());
                }
                let values = serde_json::Value::Object(values.clone());
                found.extend(unbounded(&values, &format!("{at}/additionalProperties")));
            }
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                found.extend(unbounded(property, &format!("{at}/properties/{name}")));
            }
        }
        _ => {}
    }
    found
}

/// Every rule in `schema` that reads a list, string or map without a size
/// bound: the API server would estimate its cost at the request size limit.
fn rules_reading_unbounded_fields(schema: &serde_json::Value, at: &str) -> Vec<String> {
    let mut found = Vec::new();
    for validation in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rule = validation["rule"].as_str().unwrap_or_default();
        for path in rule_reads(rule) {
            let mut node = schema;
            let mut pointer = at.to_owned();
            for name in &path {
                node = &node["properties"][name];
                pointer.push_str(&format!("/properties/{name}"));
            }
            for field in unbounded(node, &pointer) {
                found.push(format!("`{rule}` reads {field}, which has no size bound"));
            }
        }
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        found.extend(rules_reading_unbounded_fields(
            property,
            &format!("{at}/properties/{name}"),
        ));
    }
    if schema["items"].is_object() {
        found.extend(rules_reading_unbounded_fields(
            &schema["items"],
            &format!("{at}/items"),
        ));
    }
    found
}

#[test]
fn every_field_a_cel_rule_reads_has_a_size_bound() {
    let crd = serde_json::to_value(ChatCluster::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let found = rules_reading_unbounded_fields(schema, "");
    assert!(found.is_empty(), "{found:#?}");

    // The check itself finds the shape a real API server refuses.
    let refused = serde_json::json!({
        "type": "object",
        "properties": {"origins": {
            "type": "array",
            "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(o, o.matches('^https://'))"}],
        }},
        "x-kubernetes-validations": [{"rule": "!has(self.origins) || self.origins.size() < 3"}],
    });
    assert_eq!(rules_reading_unbounded_fields(&refused, "").len(), 4);
    assert_eq!(
        rule_reads("!has(self.autoscaling) || self.autoscaling.minReplicas <= oldSelf.x"),
        [vec!["autoscaling".to_owned(), "minReplicas".to_owned()]]
    );
}

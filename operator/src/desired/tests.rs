//! Builder tests: what a minimal and a full ChatCluster turn into.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::*;
use crate::crd::ChatCluster;

fn cluster(spec: Value) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "chatcluster.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": "demo", "namespace": "chat", "uid": "1f0c6a1e-0000-4000-8000-000000000001"},
        "spec": spec,
    }))
    .unwrap()
}

fn full() -> ChatCluster {
    cluster(json!({
        "replicas": 5,
        "image": {"repository": "registry.example.com/chat-server", "tag": "1.2.3", "pullPolicy": "Always"},
        "logLevel": "debug",
        "rateLimit": {"perSecond": 50, "burst": 100},
        "corsOrigins": ["https://chat.example.com", "https://admin.example.com"],
        "shutdownGraceSeconds": 40,
        "jwtSecret": {"name": "chat-keys", "key": "jwt"},
        "redis": {"external": {"urlSecretRef": {"name": "redis-creds", "key": "url"}}},
        "mongodb": {"managed": {"members": 3, "storageSize": "50Gi", "storageClassName": "fast"}, "database": "chatprod"},
        "service": {"type": "LoadBalancer", "port": 443},
        "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls", "className": "nginx"},
        "autoscaling": {"minReplicas": 3, "maxReplicas": 20, "targetCpuUtilization": 60},
        "metrics": {"serviceMonitor": true},
    }))
}

fn container(deployment: &Deployment) -> Value {
    serde_json::to_value(deployment).unwrap()["spec"]["template"]["spec"]["containers"][0].clone()
}

/// Every environment variable the pod gets: from the ConfigMap and inline.
fn env_names(cluster: &ChatCluster) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = config_map(cluster)
        .unwrap()
        .data
        .unwrap()
        .into_keys()
        .collect();
    let env = container(&deployment(cluster, "").unwrap())["env"]
        .as_array()
        .unwrap()
        .clone();
    names.extend(env.iter().map(|e| e["name"].as_str().unwrap().to_owned()));
    names
}

#[test]
fn an_empty_spec_is_a_working_cluster() {
    let cluster = cluster(json!({}));
    assert_eq!(cluster.spec.replicas, 3);
    assert!(
        cluster.spec.managed_redis().unwrap().persistence.enabled,
        "AOF by default"
    );
    assert_eq!(cluster.spec.managed_mongodb().unwrap().members, 1);
    let deployment = deployment(&cluster, "").unwrap();
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        deployment.metadata.owner_references.as_ref().unwrap()[0].kind,
        "ChatCluster"
    );
    assert!(redis_statefulset(&cluster).unwrap().is_some());
    assert!(mongodb_statefulset(&cluster).unwrap().is_some());
    assert!(
        jwt_secret(&cluster, "k").unwrap().is_some(),
        "a key is generated when none is named"
    );
    assert!(horizontal_autoscaler(&cluster).unwrap().is_none());
    assert!(ingress(&cluster).unwrap().is_none());
    assert!(service_monitor(&cluster).unwrap().is_none());
}

#[test]
fn limits_that_are_set_reach_the_server_and_the_rest_keep_its_defaults() {
    let cluster = cluster(json!({"limits": {
        "connectionsPerUser": 5,
        "headerTimeoutSeconds": 7,
        "trustedProxies": ["10.0.0.0/8", "192.168.0.10"],
        "attachmentBytes": 2097152,
        "uploadQuotaBytes": 5_000_000_000_u64,
        "uploadMemoryBytes": 134_217_728,
    }}));
    let data = config_map(&cluster).unwrap().data.unwrap();
    assert_eq!(data["CHAT_MAX_ATTACHMENT_BYTES"], "2097152");
    assert_eq!(data["CHAT_UPLOAD_QUOTA_BYTES"], "5000000000");
    assert_eq!(data["CHAT_UPLOAD_MEMORY_BYTES"], "134217728");
    assert!(!data.contains_key("CHAT_UPLOAD_TIMEOUT_SECS"));
    assert_eq!(data["CHAT_MAX_CONNECTIONS_PER_USER"], "5");
    assert_eq!(data["CHAT_HTTP_HEADER_TIMEOUT_SECS"], "7");
    assert_eq!(data["CHAT_TRUSTED_PROXIES"], "10.0.0.0/8,192.168.0.10");
    assert!(!data.contains_key("CHAT_MAX_QUEUE_BYTES"));
    assert!(!data.contains_key("CHAT_PASSWORD_HASH_CONCURRENCY"));
}

/// Behind the operator's Ingress every client's TCP peer is the ingress
/// controller: the pods trust the private ranges for `X-Forwarded-For`
/// unless the spec names the proxies itself, and without an Ingress they
/// trust nobody.
#[test]
fn behind_its_ingress_the_pods_trust_the_controller_for_client_addresses() {
    let behind = cluster(json!({"ingress": {"host": "chat.example.com"}}));
    let data = config_map(&behind).unwrap().data.unwrap();
    assert_eq!(
        data["CHAT_TRUSTED_PROXIES"],
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
    );
    let named = cluster(json!({
        "ingress": {"host": "chat.example.com"},
        "limits": {"trustedProxies": ["10.244.0.0/16"]},
    }));
    let data = config_map(&named).unwrap().data.unwrap();
    assert_eq!(data["CHAT_TRUSTED_PROXIES"], "10.244.0.0/16");
    let direct = cluster(json!({}));
    let data = config_map(&direct).unwrap().data.unwrap();
    assert!(!data.contains_key("CHAT_TRUSTED_PROXIES"));
}

#[test]
fn the_server_gets_exactly_the_environment_design_lists() {
    let expected: BTreeSet<String> = [
        "CHAT_LISTEN_ADDR",
        "CHAT_MONGODB_URI",
        "CHAT_MONGODB_DB",
        "CHAT_REDIS_URL",
        "CHAT_DATA_DIR",
        "CHAT_JWT_SECRET",
        "CHAT_JWT_TTL_SECS",
        "CHAT_CORS_ORIGINS",
        "CHAT_RATE_LIMIT_PER_SEC",
        "CHAT_RATE_LIMIT_BURST",
        "CHAT_SHUTDOWN_GRACE_SECS",
        "CHAT_POD_NAME",
        "CHAT_WEB_DIR",
        "RUST_LOG",
        "CHAT_LOG_FORMAT",
    ]
    .map(String::from)
    .into();
    assert_eq!(env_names(&cluster(json!({}))), expected);
    // Behind its Ingress the pods trust the ingress controller for client
    // addresses (`limits.trustedProxies`, or the private ranges).
    let mut behind_ingress = expected.clone();
    behind_ingress.insert("CHAT_TRUSTED_PROXIES".to_owned());
    assert_eq!(env_names(&full()), behind_ingress);
}

#[test]
fn the_server_pod_is_probed_drained_and_locked_down() {
    let cluster = full();
    let deployment = deployment(&cluster, "").unwrap();
    let json = serde_json::to_value(&deployment).unwrap();
    let pod = &json["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example.com/chat-server:1.2.3");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(
        container["ports"][0],
        json!({"name": "http", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // /readyz gives each dependency 2 s (server/src/health.rs, CHECK_TIMEOUT,
    // checked at once): a probe that gives up sooner (the kubelet's default
    // is 1 s) marks a pod unready while Redis or MongoDB still answers in
    // time, and under a slow dependency every pod flaps.
    let timeout = container["readinessProbe"]["timeoutSeconds"]
        .as_i64()
        .unwrap_or(1);
    assert!(timeout > 2, "readiness timeout {timeout} s");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace >= 40 + pre_stop,
        "termination grace {grace} covers preStop {pre_stop} + CHAT_SHUTDOWN_GRACE_SECS 40"
    );
    assert_eq!(
        json["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(
        json["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert!(
        json["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count"
    );
    let env = container["env"].as_array().unwrap();
    let jwt = env.iter().find(|e| e["name"] == "CHAT_JWT_SECRET").unwrap();
    assert_eq!(
        jwt["valueFrom"]["secretKeyRef"],
        json!({"name": "chat-keys", "key": "jwt"})
    );
    let redis = env.iter().find(|e| e["name"] == "CHAT_REDIS_URL").unwrap();
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"],
        json!({"name": "redis-creds", "key": "url"})
    );
}

#[test]
fn the_config_hash_changes_with_configuration_and_secrets_only() {
    let hash = |cluster: &ChatCluster, secrets: &str| {
        deployment(cluster, secrets)
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH]
            .clone()
    };
    let base = cluster(json!({}));
    assert_eq!(hash(&base, "s1"), hash(&cluster(json!({})), "s1"), "stable");
    assert_eq!(
        hash(&base, "s1"),
        hash(&cluster(json!({"replicas": 7})), "s1"),
        "scaling does not roll pods"
    );
    assert_ne!(
        hash(&base, "s1"),
        hash(&cluster(json!({"logLevel": "debug"})), "s1")
    );
    assert_ne!(
        hash(&base, "s1"),
        hash(
            &cluster(json!({"corsOrigins": ["https://x.example"]})),
            "s1"
        )
    );
    assert_ne!(
        hash(&base, "s1"),
        hash(&base, "s2"),
        "a rotated key rolls the pods"
    );
}

#[test]
fn external_backends_are_referenced_not_deployed() {
    let cluster = cluster(json!({
        "redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}},
        "mongodb": {"external": {"uriSecretRef": {"name": "m", "key": "uri"}}},
    }));
    assert!(redis_statefulset(&cluster).unwrap().is_none());
    assert!(redis_service(&cluster).unwrap().is_none());
    assert!(mongodb_statefulset(&cluster).unwrap().is_none());
    assert!(mongodb_init_job(&cluster, "").unwrap().is_none());
    assert!(
        connection_secret(&cluster, "pw", &MongoDbCredentials::default())
            .unwrap()
            .is_none(),
        "nothing to connect to of ours"
    );
}

#[test]
fn managed_backends_get_persistent_volumes_and_connection_strings() {
    let prod = full();
    let mongodb = serde_json::to_value(mongodb_statefulset(&prod).unwrap().unwrap()).unwrap();
    assert_eq!(mongodb["spec"]["replicas"], 3);
    assert_eq!(
        mongodb["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    assert_eq!(
        mongodb["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
    let credentials = MongoDbCredentials {
        app_password: "app-pw".into(),
        ..MongoDbCredentials::default()
    };
    let secret = connection_secret(&prod, "pw", &credentials)
        .unwrap()
        .unwrap();
    let uri = String::from_utf8(secret.data.unwrap()["mongodb-uri"].0.clone()).unwrap();
    assert_eq!(
        uri.matches(".demo-mongodb.chat.svc:27017").count(),
        3,
        "{uri}"
    );
    assert!(uri.starts_with("mongodb://chat:app-pw@"), "{uri}");
    assert!(uri.ends_with("replicaSet=rs0&authSource=admin"), "{uri}");

    let redis =
        serde_json::to_value(redis_statefulset(&cluster(json!({}))).unwrap().unwrap()).unwrap();
    let args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        args.contains(&json!("--appendonly")) && args.contains(&json!("yes")),
        "{args:?}"
    );
    assert!(redis["spec"]["volumeClaimTemplates"].is_array());
    let ephemeral = cluster(json!({"redis": {"managed": {"persistence": {"enabled": false}}}}));
    let redis = serde_json::to_value(redis_statefulset(&ephemeral).unwrap().unwrap()).unwrap();
    assert!(redis["spec"].get("volumeClaimTemplates").is_none());
}

#[test]
fn optional_children_follow_the_spec() {
    let cluster = full();
    let hpa = serde_json::to_value(horizontal_autoscaler(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].as_i64(),
            hpa["spec"]["maxReplicas"].as_i64()
        ),
        (Some(3), Some(20))
    );
    let ingress = serde_json::to_value(ingress(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "chat-tls");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
        "10485760",
        "uploads up to the server's limit get through"
    );
    let monitor = service_monitor(&cluster).unwrap().unwrap();
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service = serde_json::to_value(service(&cluster).unwrap()).unwrap();
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
}

#[test]
fn every_child_carries_the_standard_labels() {
    let objects = crate::render::children(
        &full(),
        &crate::render::SecretValues::generated(
            "key",
            "password",
            crate::desired::MongoDbCredentials::default(),
        ),
    )
    .unwrap();
    assert!(objects.len() >= 10, "{}", objects.len());
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        for key in ["name", "instance", "component", "part-of", "managed-by"] {
            assert!(
                labels[format!("app.kubernetes.io/{key}")].is_string(),
                "{} lacks {key}: {labels}",
                object["kind"]
            );
        }
        // Owned, so garbage-collected with the cluster: all but the data
        // credentials, which outlive it as the volumes do.
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let owned = !crate::desired::data_credentials("demo").contains(&name.to_owned());
        assert_eq!(
            object["metadata"]["ownerReferences"][0]["controller"] == true,
            owned,
            "{} {name}",
            object["kind"]
        );
        assert!(object["apiVersion"].is_string() && object["kind"].is_string());
        // The controller finds, lists and prunes children by these labels and kinds.
        let key = crate::controller::objects::ObjectKey::of(object).unwrap();
        assert!(
            crate::controller::objects::api_resource(&key.api_version, &key.kind).is_some(),
            "{key} is not among the child kinds the controller knows"
        );
    }
}

#[test]
fn the_managed_redis_requires_its_password_and_only_chat_pods_reach_the_backends() {
    let cluster = cluster(json!({}));
    let redis = serde_json::to_value(redis_statefulset(&cluster).unwrap().unwrap()).unwrap();
    let container = &redis["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(after("--requirepass"), "$(REDIS_PASSWORD)");
    assert_eq!(after("--maxmemory-policy"), "volatile-ttl");
    // 75% of the default 256Mi limit.
    assert_eq!(
        after("--maxmemory"),
        (256u64 * 1024 * 1024 / 100 * 75).to_string()
    );
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "demo-redis-auth"
    );
    let auth = redis_auth_secret(&cluster, "s3cret").unwrap().unwrap();
    assert_eq!(auth.data.unwrap()["password"].0, b"s3cret");
    let url = connection_secret(&cluster, "s3cret", &MongoDbCredentials::default())
        .unwrap()
        .unwrap()
        .data
        .unwrap()["redis-url"]
        .0
        .clone();
    assert_eq!(
        String::from_utf8(url).unwrap(),
        "redis://:s3cret@demo-redis.chat.svc:6379"
    );

    let redis_policy =
        serde_json::to_value(redis_network_policy(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(
        redis_policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "redis"
    );
    let from = &redis_policy["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "server"
    );
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "demo"
    );

    assert_eq!(
        admitted(&mongodb_network_policy(&cluster).unwrap().unwrap()),
        ["mongodb", "mongodb-init", "server"]
            .map(String::from)
            .into()
    );
    let job = serde_json::to_value(mongodb_init_job(&cluster, "").unwrap().unwrap()).unwrap();
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"],
        "mongodb-init",
        "the policy admits the init Job by this label"
    );

    let external = crate::desired::tests::cluster(json!({
        "redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}},
        "mongodb": {"external": {"uriSecretRef": {"name": "m", "key": "uri"}}},
    }));
    assert!(redis_network_policy(&external).unwrap().is_none());
    assert!(mongodb_network_policy(&external).unwrap().is_none());
    assert!(redis_auth_secret(&external, "x").unwrap().is_none());
}

#[test]
fn the_managed_mongodb_authenticates_with_generated_credentials() {
    let cluster = cluster(json!({"mongodb": {"managed": {"members": 3}, "database": "chatprod"}}));
    let credentials = MongoDbCredentials::generate();
    assert_eq!(credentials.keyfile.len(), 756, "the keyfile mongod expects");
    assert_ne!(credentials.root_password, credentials.app_password);
    let secret = mongodb_auth_secret(&cluster, &credentials)
        .unwrap()
        .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["app-password"].0, credentials.app_password.as_bytes());
    assert_eq!(secret.metadata.name.as_deref(), Some("demo-mongodb-auth"));

    let set = serde_json::to_value(mongodb_statefulset(&cluster).unwrap().unwrap()).unwrap();
    let pod = &set["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains(r#""--keyFile","/keyfile/keyfile""#), "{args}");
    assert_eq!(
        pod["containers"][0]["env"][0]["name"],
        "MONGO_INITDB_ROOT_USERNAME"
    );
    assert_eq!(pod["initContainers"][0]["name"], "keyfile");
    let secret_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "keyfile-secret")
        .unwrap();
    assert_eq!(secret_volume["secret"]["secretName"], "demo-mongodb-auth");

    let job = serde_json::to_value(mongodb_init_job(&cluster, "").unwrap().unwrap()).unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let script = container["command"][2].as_str().unwrap();
    assert!(script.contains("rs.initiate"), "{script}");
    assert!(
        script.contains("createUser") && script.contains("updateUser"),
        "{script}"
    );
    assert!(
        !script.contains(&credentials.root_password),
        "no secret in the Job's spec"
    );
    let env = container["env"].to_string();
    assert!(
        env.contains("chatprod") && env.contains("demo-mongodb-auth"),
        "{env}"
    );

    // A MongoDB made before credentials existed keeps running without them.
    let legacy = crate::desired::tests::cluster(json!({"mongodb": {"managed": {"auth": false}}}));
    assert!(
        mongodb_auth_secret(&legacy, &credentials)
            .unwrap()
            .is_none()
    );
    let set = serde_json::to_value(mongodb_statefulset(&legacy).unwrap().unwrap()).unwrap();
    assert!(!set.to_string().contains("keyFile"));
    let uri = connection_secret(&legacy, "pw", &credentials)
        .unwrap()
        .unwrap()
        .data
        .unwrap()["mongodb-uri"]
        .0
        .clone();
    assert!(!String::from_utf8(uri).unwrap().contains('@'));
}

/// The components a NetworkPolicy admits.
fn admitted(policy: &k8s_openapi::api::networking::v1::NetworkPolicy) -> BTreeSet<String> {
    serde_json::to_value(policy).unwrap()["spec"]["ingress"][0]["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_highly_available_redis_has_replicas_and_sentinels_and_the_pods_find_it_through_them() {
    let cluster = cluster(json!({"redis": {"managed": {"replicas": 3}}}));
    let redis = serde_json::to_value(redis_statefulset(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(redis["spec"]["replicas"], 3);
    let container = &redis["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "sh");
    assert!(
        container["command"][2]
            .as_str()
            .unwrap()
            .contains("--replicaof"),
        "the start script decides whom to follow"
    );
    let args = container["args"].as_array().unwrap();
    let masterauth = args.iter().position(|a| a == "--masterauth").unwrap();
    assert_eq!(args[masterauth + 1], "$(REDIS_PASSWORD)");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    for name in ["POD_NAME", "REDIS_HOST", "MASTER_NAME"] {
        assert!(env.contains_key(name), "the start script needs {name}");
    }
    // Pods know each other by stable names under headless Services.
    assert_eq!(env["ANNOUNCE"]["value"], "$(POD_NAME).demo-redis-headless");
    assert_eq!(
        env["REDIS_PODS"]["value"],
        "demo-redis-0.demo-redis-headless demo-redis-1.demo-redis-headless demo-redis-2.demo-redis-headless"
    );
    assert_eq!(
        env["SENTINEL_PODS"]["value"],
        "demo-redis-sentinel-0.demo-redis-sentinel-headless demo-redis-sentinel-1.demo-redis-sentinel-headless demo-redis-sentinel-2.demo-redis-sentinel-headless"
    );
    assert_eq!(redis["spec"]["serviceName"], "demo-redis-headless");
    assert_eq!(redis["spec"]["podManagementPolicy"], "Parallel");
    // No preStop failover: asked for while every pod stops, Sentinel
    // carries it out later against the primary that restarted meanwhile.
    assert!(container["lifecycle"].is_null());
    let headless: Vec<Value> = redis_headless_services(&cluster)
        .unwrap()
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    assert_eq!(headless.len(), 2);
    for service in &headless {
        assert_eq!(service["spec"]["clusterIP"], "None");
        assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    }
    assert_eq!(
        headless[1]["metadata"]["name"],
        "demo-redis-sentinel-headless"
    );

    let sentinels =
        serde_json::to_value(redis_sentinel_statefulset(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(sentinels["spec"]["replicas"], 3);
    assert_eq!(
        sentinels["spec"]["serviceName"],
        "demo-redis-sentinel-headless"
    );
    // What a Sentinel learned survives its pod.
    assert_eq!(
        sentinels["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let sentinel = &sentinels["spec"]["template"]["spec"]["containers"][0];
    let script = sentinel["command"][2].as_str().unwrap();
    for line in [
        "sentinel monitor $MASTER_NAME $primary 6379 2",
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames no",
        "sentinel myid $myid",
    ] {
        assert!(script.contains(line), "{line}");
    }
    let service = serde_json::to_value(redis_sentinel_service(&cluster).unwrap().unwrap()).unwrap();
    assert_eq!(service["metadata"]["name"], "demo-redis-sentinel");
    assert_eq!(service["spec"]["ports"][0]["port"], 26379);

    // The chat pods ask the Sentinels for the primary; no URL names one.
    let server = container_env(&cluster);
    assert_eq!(
        server["CHAT_REDIS_SENTINELS"]["value"],
        "demo-redis-sentinel.chat.svc:26379"
    );
    assert_eq!(server["CHAT_REDIS_MASTER_NAME"]["value"], "chat");
    assert_eq!(
        server["CHAT_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"],
        json!({"name": "demo-redis-auth", "key": "password"})
    );
    assert!(!server.contains_key("CHAT_REDIS_URL"));
    // The URL stays for pods of the previous version during the switch.
    let connections = connection_secret(&cluster, "pw", &MongoDbCredentials::default())
        .unwrap()
        .unwrap();
    assert!(connections.data.unwrap().contains_key("redis-url"));

    let everyone: BTreeSet<String> = ["redis", "redis-sentinel", "server"]
        .map(String::from)
        .into();
    assert_eq!(
        admitted(&redis_network_policy(&cluster).unwrap().unwrap()),
        everyone
    );
    let sentinel_policy = redis_sentinel_network_policy(&cluster).unwrap().unwrap();
    assert_eq!(admitted(&sentinel_policy), everyone);
    assert_eq!(
        serde_json::to_value(&sentinel_policy).unwrap()["spec"]["ingress"][0]["ports"][0]["port"],
        26379
    );
    assert_eq!(redis_disruption_budgets(&cluster).unwrap().len(), 2);

    // One server: none of it.
    let single = crate::desired::tests::cluster(json!({}));
    assert!(redis_sentinel_statefulset(&single).unwrap().is_none());
    assert_eq!(redis_headless_services(&single).unwrap().len(), 1);
    assert!(redis_sentinel_service(&single).unwrap().is_none());
    assert!(redis_sentinel_network_policy(&single).unwrap().is_none());
    assert!(redis_disruption_budgets(&single).unwrap().is_empty());
    let redis = serde_json::to_value(redis_statefulset(&single).unwrap().unwrap()).unwrap();
    assert!(redis["spec"]["template"]["spec"]["containers"][0]["command"].is_null());
    assert!(container_env(&single).contains_key("CHAT_REDIS_URL"));
}

/// The chat server container's inline environment, by name.
fn container_env(cluster: &ChatCluster) -> std::collections::BTreeMap<String, Value> {
    container(&deployment(cluster, "").unwrap())["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[test]
fn the_init_job_brings_the_members_to_the_spec_through_the_replica_set() {
    let cluster = cluster(json!({"mongodb": {"managed": {"members": 3}}}));
    let job = serde_json::to_value(mongodb_init_job(&cluster, "").unwrap().unwrap()).unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let env: std::collections::BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(
        env["MEMBERS"],
        "demo-mongodb-0.demo-mongodb.chat.svc:27017,demo-mongodb-1.demo-mongodb.chat.svc:27017,demo-mongodb-2.demo-mongodb.chat.svc:27017"
    );
    assert!(
        env["MEMBERS_SCRIPT"]
            .as_str()
            .unwrap()
            .contains("rs.remove")
    );
    let script = container["command"][2].as_str().unwrap();
    assert!(
        script.contains("/?replicaSet=rs0'") && script.contains("--eval \"$MEMBERS_SCRIPT\""),
        "{script}"
    );
    // The set is reached through any member, member 0 included only as one
    // of them (it may be the one down), and the headless Service finds the
    // members the set still has beyond the wanted ones; member 0 alone
    // initiates, and only when no set answers.
    assert!(
        script.contains(",demo-mongodb.chat.svc:27017/?replicaSet=rs0'"),
        "{script}"
    );
    let initiation = script
        .lines()
        .position(|l| l.contains("rs.initiate"))
        .unwrap();
    assert!(
        script
            .lines()
            .nth(initiation - 1)
            .unwrap()
            .starts_with("if ! mongosh")
            && script
                .lines()
                .nth(initiation - 1)
                .unwrap()
                .contains("rs.status().ok"),
        "{script}"
    );
    // The final configuration is checked, not assumed.
    let members = env["MEMBERS_SCRIPT"].as_str().unwrap();
    assert!(
        members.contains("throw new Error(`the set has"),
        "{members}"
    );
    // Another member count is another Job (its template cannot change).
    let two = mongodb_init_job(
        &crate::desired::tests::cluster(json!({"mongodb": {"managed": {"members": 1}}})),
        "",
    )
    .unwrap()
    .unwrap();
    assert_ne!(
        two.metadata.name,
        job["metadata"]["name"].as_str().map(str::to_owned)
    );
    // So are new credentials: its run sets the `chat` user's password again.
    let rotated = mongodb_init_job(&cluster, "another digest")
        .unwrap()
        .unwrap();
    assert_ne!(
        rotated.metadata.name,
        job["metadata"]["name"].as_str().map(str::to_owned)
    );
}

#[test]
fn quantities_read_as_the_api_server_writes_them() {
    use crate::desired::{quantity_bytes, quantity_value};
    assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
    assert_eq!(quantity_bytes("1024Mi"), Some(1 << 30));
    assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
    assert_eq!(quantity_bytes("2Pi"), Some(2 << 50));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("1e3"), Some(1000));
    assert_eq!(quantity_bytes("1E3"), Some(1000));
    assert_eq!(quantity_bytes("1E"), Some(1_000_000_000_000_000_000));
    assert_eq!(quantity_bytes("1048576"), Some(1 << 20));
    assert_eq!(quantity_value("250m"), Some(0.25));
    assert_eq!(quantity_value(".5"), Some(0.5));
    for bad in [
        "", "Gi", "1.2.3Gi", "-1Gi", "1GiB", "1 Gi", "1e", "1e+", "abc", "1ee3",
    ] {
        assert_eq!(quantity_value(bad), None, "{bad:?}");
    }
}

/// A rolling update of MongoDB waits for each member to be the primary or a
/// secondary again (not merely listening: RECOVERING members do not count
/// for the majority), a slow start is not cut short by the liveness probe,
/// and a drain takes at most one member of three.
#[test]
fn mongodb_members_are_ready_by_their_replica_set_state_and_drained_one_at_a_time() {
    let three = cluster(json!({"mongodb": {"managed": {"members": 3}}}));
    let set = serde_json::to_value(mongodb_statefulset(&three).unwrap().unwrap()).unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let ready = container["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        ready.contains("mongosh")
            && ready.contains("isWritablePrimary")
            && ready.contains("secondary"),
        "{ready}"
    );
    assert!(
        container["startupProbe"]["failureThreshold"]
            .as_i64()
            .unwrap()
            * 5
            >= 600
    );
    // A removed member's volume goes with it; the set's, on deletion, stay.
    assert_eq!(
        set["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenScaled": "Delete", "whenDeleted": "Retain"})
    );
    let budget = serde_json::to_value(
        crate::desired::mongodb_disruption_budget(&three)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        set["spec"]["selector"]["matchLabels"]
    );
    // One member: a budget could only ever block its drain.
    let one = cluster(json!({"mongodb": {"managed": {"members": 1}}}));
    assert!(
        crate::desired::mongodb_disruption_budget(&one)
            .unwrap()
            .is_none()
    );
}

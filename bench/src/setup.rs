//! Accounts and rooms for a run, created through chatcluster's REST API:
//! `users` accounts, `rooms` public rooms, and every user a member of the
//! rooms its connections will open.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Value, json};

pub struct User {
    pub token: String,
}

pub struct Fixture {
    pub users: Vec<User>,
    pub rooms: Vec<String>,
}

/// Registration hashes passwords (argon2id): a few at a time is as fast as it gets.
const PARALLEL: usize = 8;

/// POSTs JSON; a 429 (sign-ins are rate limited per address) waits as told and retries.
async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    for _ in 0..100 {
        let mut request = client.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 429 {
            let wait = answer["error"]["retry_after"].as_f64().unwrap_or(1.0);
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait.clamp(0.05, 30.0))).await;
            continue;
        }
        if !status.is_success() {
            bail!("POST {url}: {status} {answer}");
        }
        return Ok(answer);
    }
    bail!("POST {url}: still rate limited after 100 tries")
}

/// Creates the fixture through `base` (any server of the cluster: they share the store).
/// Connection `i` will be user `i % users` in room `i % rooms`.
pub async fn create(
    base: &str,
    users: usize,
    rooms: usize,
    connections: usize,
) -> anyhow::Result<Fixture> {
    let client = reqwest::Client::new();
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xffffff
    );
    let accounts: Vec<anyhow::Result<User>> = stream::iter(0..users)
        .map(|i| {
            let client = client.clone();
            let run = run.clone();
            async move {
                let email = format!("b{run}u{i}@bench.example");
                let password = "bench-password-1";
                post(&client, format!("{base}/api/auth/register"), None,
                    json!({"username": format!("b{run}u{i}"), "email": email, "password": password})).await?;
                let login = post(&client, format!("{base}/api/auth/login"), None,
                    json!({"email": email, "password": password})).await?;
                let token = login["token"].as_str().context("login without a token")?.to_owned();
                Ok(User { token })
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let users: Vec<User> = accounts.into_iter().collect::<anyhow::Result<_>>()?;

    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let room = post(
            &client,
            format!("{base}/api/rooms"),
            Some(&users[0].token),
            json!({"name": format!("bench {run} {r}"), "is_private": false}),
        )
        .await?;
        room_ids.push(
            room["id"]
                .as_str()
                .context("room without an id")?
                .to_owned(),
        );
    }
    // Each user joins the rooms its connections open (joining twice is harmless).
    let mut joins = std::collections::BTreeSet::new();
    for i in 0..connections {
        joins.insert((i % users.len(), i % rooms));
    }
    let results: Vec<anyhow::Result<Value>> = stream::iter(joins)
        .map(|(u, r)| {
            let url = format!("{base}/api/rooms/{}/join", room_ids[r]);
            let client = client.clone();
            let token = users[u].token.clone();
            async move { post(&client, url, Some(&token), json!({})).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(Fixture {
        users,
        rooms: room_ids,
    })
}

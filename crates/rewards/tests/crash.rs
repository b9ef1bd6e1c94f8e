//! The events service killed (SIGKILL) in the middle of a claim storm and
//! started again: every claim answered 201 exists and is eventually PAID, and
//! stock arithmetic holds. Runs the real binary, on SQLite and PostgreSQL.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey, Role};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

const SECRET: &str = "crash-test-secret-crash-test-secret!";

store_tests!(killed_mid_storm_loses_no_acknowledged_claim);

/// The events service's process, killed when dropped (a failing test must not leave it running).
struct EventsProcess(Child);

impl EventsProcess {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for EventsProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn events_process(url: &str, port: u16, log: &std::path::Path) -> EventsProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rewards"));
    command.arg("events");
    for (key, _) in std::env::vars() {
        if key.starts_with("REWARDS_") {
            command.env_remove(key);
        }
    }
    command
        .env("REWARDS_IDENTITY_SECRET", SECRET)
        .env("REWARDS_EVENTS__LISTEN", format!("127.0.0.1:{port}"))
        .env("REWARDS_EVENTS__DATABASE_URL", url)
        .env("REWARDS_EVENTS__PAYOUT_POLL_MS", "20")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(EventsProcess)
        .unwrap()
}

struct Caller {
    client: reqwest::Client,
    base: String,
    key: IdentityKey,
}

impl Caller {
    async fn send(
        &self,
        method: Method,
        path: &str,
        who: &Identity,
        body: Option<Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header(IDENTITY_HEADER, self.key.sign(&method, path, who));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await
    }

    async fn wait_up(&self) {
        let started = Instant::now();
        while self.client.get(format!("{}/health", self.base)).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "the events service did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn killed_mid_storm_loses_no_acknowledged_claim(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let caller = Arc::new(Caller {
        client: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        key: IdentityKey::from_secret(SECRET.as_bytes()).unwrap(),
    });
    let mut process = events_process(&store.url, port, &dir.path().join("first.log"));
    caller.wait_up().await;

    let operator = Identity { sub: "op".into(), username: "op".into(), roles: vec![Role::Operator] };
    let event: Value = caller
        .send(
            Method::POST,
            "/events",
            &operator,
            Some(json!({ "name": "storm", "condition": { "type": "none" },
            "startDate": "2020-01-01", "endDate": "2099-12-31", "status": "ACTIVE" })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reward: Value = caller
        .send(
            Method::POST,
            "/rewards",
            &operator,
            Some(json!({ "eventId": event["id"], "name": "r", "type": "POINT",
            "details": {}, "quantity": 1, "stock": 150 })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body = json!({ "eventId": event["id"], "rewardId": reward["id"] });

    // A storm of claims over about a second; the process is killed while it
    // rages, once some claims have been acknowledged.
    let granted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let storm: Vec<_> = (0..400)
        .map(|i| {
            let (caller, body, granted) = (caller.clone(), body.clone(), granted.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i % 100) * 10)).await;
                let who = Identity { sub: format!("p{i}"), username: format!("p{i}"), roles: vec![Role::User] };
                match caller.send(Method::POST, "/reward-claims", &who, Some(body)).await {
                    Ok(r) if r.status() == 201 => {
                        let id = r.json::<Value>().await.ok()?["id"].as_str()?.to_owned();
                        granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Some(id)
                    }
                    _ => None,
                }
            })
        })
        .collect();
    let started = Instant::now();
    while granted.load(std::sync::atomic::Ordering::SeqCst) < 10 {
        assert!(started.elapsed() < Duration::from_secs(20), "no claim was acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill().unwrap();
    process.wait().unwrap();
    let mut acknowledged = Vec::new();
    for task in storm {
        if let Some(id) = task.await.unwrap() {
            acknowledged.push(id);
        }
    }

    assert!(acknowledged.len() >= 10, "{} acknowledged", acknowledged.len());
    let mut process = events_process(&store.url, port, &dir.path().join("second.log"));
    caller.wait_up().await;
    let started = Instant::now();
    for id in &acknowledged {
        loop {
            let claim: Value = caller
                .send(Method::GET, &format!("/reward-claims/{id}"), &operator, None)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(claim["code"], "NOT_FOUND", "an acknowledged claim was lost: {id}");
            if claim["status"] == "PAID" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{id} was never paid: {claim}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let reward_now: Value = caller
        .send(Method::GET, &format!("/rewards/{}", reward["id"].as_str().unwrap()), &operator, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut live = 0i64;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/reward-claims?rewardId={}&limit=100", reward["id"].as_str().unwrap());
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = caller.send(Method::GET, &path, &operator, None).await.unwrap().json().await.unwrap();
        live += page["items"].as_array().unwrap().len() as i64;
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert!(live >= acknowledged.len() as i64);
    assert_eq!(reward_now["remaining"].as_i64().unwrap() + live, 150, "stock consumed equals claims granted");
    process.kill().unwrap();
    process.wait().unwrap();
}

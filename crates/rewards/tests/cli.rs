//! The `rewards` binary as a newcomer and an operator run it: real processes,
//! real ports, signals.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewards");
const SECRET: &str = "cli-test-secret-cli-test-secret-0123";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `rewards` command with none of the caller's `REWARDS_*` settings.
fn rewards(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("REWARDS_") {
            command.env_remove(key);
        }
    }
    command
}

struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn start(mut command: Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let child = command.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
        Self { child, log: log.to_owned() }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "did not exit within {limit:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_healthy(client: &reqwest::Client, url: &str, process: &Process) {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{url} never answered; log:\n{}", process.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Ports {
    gateway: u16,
    auth: u16,
    events: u16,
}

fn up(data_dir: &Path, ports: &Ports, log: &Path) -> Process {
    let mut command = rewards(&["up", "--data-dir", data_dir.to_str().unwrap()]);
    command.args(["--gateway-listen", &format!("127.0.0.1:{}", ports.gateway)]);
    command.args(["--auth-listen", &format!("127.0.0.1:{}", ports.auth)]);
    command.args(["--events-listen", &format!("127.0.0.1:{}", ports.events)]);
    Process::start(command, log)
}

async fn ready_report(client: &reqwest::Client, gateway: u16) -> Value {
    let response = client.get(format!("http://127.0.0.1:{gateway}/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn up_serves_all_three_stops_cleanly_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = Ports { gateway: free_port(), auth: free_port(), events: free_port() };
    let client = reqwest::Client::new();

    let mut first = up(&data, &ports, &dir.path().join("first.log"));
    wait_healthy(&client, &format!("http://127.0.0.1:{}/health", ports.gateway), &first).await;
    let report = ready_report(&client, ports.gateway).await;
    assert_eq!(report["status"], "ready");
    for service in ["auth-service", "event-service"] {
        assert_eq!(report["checks"][service]["status"], "up", "{report}");
        assert_eq!(report["checks"][service]["checks"]["store"]["kind"], "sqlite");
    }
    // Health of each backend, reached through the gateway.
    for path in ["/auth-service/health", "/event-service/health"] {
        let response = client.get(format!("http://127.0.0.1:{}{path}", ports.gateway)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert!(data.join("auth.db").exists() && data.join("events.db").exists());
    let log = first.log_text();
    assert!(log.contains(&format!("http://127.0.0.1:{}", ports.gateway)), "the log says where it listens:\n{log}");

    // The bootstrap admin's generated password is printed once, and works through the gateway.
    let password = log
        .lines()
        .find_map(|l| l.split("with password: ").nth(1))
        .expect("a generated admin password is printed")
        .trim()
        .to_owned();
    assert!(password.len() >= 16);
    let login = client
        .post(format!("http://127.0.0.1:{}/auth-service/auth/login", ports.gateway))
        .json(&serde_json::json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let tokens: Value = login.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(log.matches(&password).count(), 1, "printed once, never logged");

    // The admin's token opens the operators' routes of the events service through the gateway.
    let token = tokens["access_token"].as_str().unwrap();
    let created = client
        .post(format!("http://127.0.0.1:{}/event-service/events", ports.gateway))
        .bearer_auth(token)
        .json(&serde_json::json!({ "name": "First event", "condition": { "type": "loginDays", "days": 1 },
            "startDate": "2026-01-01", "endDate": "2026-12-31", "status": "ACTIVE" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let anonymous =
        client.get(format!("http://127.0.0.1:{}/event-service/events", ports.gateway)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    first.signal("-INT");
    let status = first.wait(Duration::from_secs(25));
    assert_eq!(status.code(), Some(0), "Ctrl-C exits 0; log:\n{}", first.log_text());
    assert!(first.log_text().contains("store closed"));

    // An operator rotates the signing key while the platform is down.
    let rotated = rewards(&["admin", "rotate-keys"]).env("REWARDS_DATA_DIR", &data).output().unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("added signing key"));

    let mut second = up(&data, &ports, &dir.path().join("second.log"));
    wait_healthy(&client, &format!("http://127.0.0.1:{}/health", ports.gateway), &second).await;
    let again = ready_report(&client, ports.gateway).await;
    for service in ["auth-service", "event-service"] {
        let created = |r: &Value| r["checks"][service]["checks"]["store"]["createdAt"].clone();
        assert_eq!(created(&again), created(&report), "{service} kept its store");
    }
    assert!(second.log_text().contains("store opened"));
    assert!(!second.log_text().contains("with password"), "the admin exists; nothing is printed again");
    let jwks: Value = client
        .get(format!("http://127.0.0.1:{}/auth-service/.well-known/jwks.json", ports.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "the old and the rotated-in key: {jwks}");
    let login: Value = client
        .post(format!("http://127.0.0.1:{}/auth-service/auth/login", ports.gateway))
        .json(&serde_json::json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events: Value = client
        .get(format!("http://127.0.0.1:{}/event-service/events", ports.gateway))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["items"][0]["name"], "First event", "the event survived the restart");
    second.signal("-TERM");
    assert_eq!(second.wait(Duration::from_secs(25)).code(), Some(0), "SIGTERM exits 0");
}

#[tokio::test]
async fn up_refuses_a_busy_port_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = Ports { gateway: busy.local_addr().unwrap().port(), auth: free_port(), events: free_port() };
    let mut process = up(&dir.path().join("data"), &ports, &dir.path().join("up.log"));
    let status = process.wait(Duration::from_secs(20));
    assert!(!status.success());
    assert!(process.log_text().contains("cannot listen on"), "{}", process.log_text());
}

#[tokio::test]
async fn separate_processes_share_a_secret_and_answer_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports { gateway: free_port(), auth: free_port(), events: free_port() };
    let client = reqwest::Client::new();
    // PostgreSQL for the events store when a test database is configured.
    let pg = rewards_kit::testing::TestStore::postgres().await;

    let mut auth = rewards(&["auth"]);
    auth.env("REWARDS_IDENTITY_SECRET", SECRET)
        .env("REWARDS_DATA_DIR", dir.path().join("data"))
        .env("REWARDS_AUTH__LISTEN", format!("127.0.0.1:{}", ports.auth));
    let auth = Process::start(auth, &dir.path().join("auth.log"));

    let mut events = rewards(&["events", "--log-format", "json"]);
    events
        .env("REWARDS_IDENTITY_SECRET", SECRET)
        .env("REWARDS_DATA_DIR", dir.path().join("data"))
        .env("REWARDS_EVENTS__LISTEN", format!("127.0.0.1:{}", ports.events));
    if let Some(pg) = &pg {
        events.env("REWARDS_EVENTS__DATABASE_URL", &pg.url);
    }
    let events = Process::start(events, &dir.path().join("events.log"));

    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "identity_secret = \"{SECRET}\"\n[gateway]\nlisten = \"127.0.0.1:{}\"\nauth_url = \"http://127.0.0.1:{}\"\nevents_url = \"http://127.0.0.1:{}\"\n",
            ports.gateway, ports.auth, ports.events
        ),
    )
    .unwrap();
    let gateway =
        Process::start(rewards(&["gateway", "--config", config.to_str().unwrap()]), &dir.path().join("gw.log"));

    wait_healthy(&client, &format!("http://127.0.0.1:{}/health", ports.auth), &auth).await;
    wait_healthy(&client, &format!("http://127.0.0.1:{}/health", ports.events), &events).await;
    wait_healthy(&client, &format!("http://127.0.0.1:{}/ready", ports.gateway), &gateway).await;
    let report = ready_report(&client, ports.gateway).await;
    let events_kind = if pg.is_some() { "postgres" } else { "sqlite" };
    assert_eq!(report["checks"]["event-service"]["checks"]["store"]["kind"], events_kind);
    assert_eq!(report["checks"]["auth-service"]["checks"]["store"]["kind"], "sqlite");

    // JSON logs carry the request id on every request line.
    let id = "cli-json-log-check";
    // Asked again until the line is in the log: on a busy machine the write
    // can lag, and the gateway's health probe may briefly take the instance
    // out of rotation (then the request is answered without reaching it).
    let mut line = None;
    for _ in 0..100 {
        let _ = client
            .get(format!("http://127.0.0.1:{}/event-service/health", ports.gateway))
            .header("x-request-id", id)
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        line = events.log_text().lines().find(|l| l.contains(id)).map(str::to_owned);
        if line.is_some() {
            break;
        }
    }
    let line = line.expect("a log line with the id");
    let json: Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(json["span"]["request_id"], id);
    assert!(!events.log_text().contains(SECRET) && !gateway.log_text().contains(SECRET), "secrets are never logged");
}

#[test]
fn a_single_service_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = rewards(&["auth"]).env("REWARDS_DATA_DIR", dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REWARDS_IDENTITY_SECRET"), "{stderr}");
}

#[test]
fn bad_configuration_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = rewards(&["up", "--config", dir.path().join("nope.toml").to_str().unwrap()]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[gateway]\nlisten = \"not an address\"\n").unwrap();
    let output = rewards(&["up", "--config", typo.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen"));

    let bad_env = rewards(&["up"]).env("REWARDS_AUTH__MAX_CONNECTIONS", "many").output().unwrap();
    assert_eq!(bad_env.status.code(), Some(2));
}

#[test]
fn migrate_prepares_stores_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let output = rewards(&["migrate"]).env("REWARDS_DATA_DIR", dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("auth:") && stdout.contains("events:") && stdout.contains("schema version"), "{stdout}");
    assert!(dir.path().join("auth.db").exists() && dir.path().join("events.db").exists());

    let only_events = tempfile::tempdir().unwrap();
    let output =
        rewards(&["migrate", "--service", "events"]).env("REWARDS_DATA_DIR", only_events.path()).output().unwrap();
    assert!(output.status.success());
    assert!(!only_events.path().join("auth.db").exists() && only_events.path().join("events.db").exists());
}

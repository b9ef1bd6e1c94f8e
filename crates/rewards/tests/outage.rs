//! The events service's PostgreSQL stopped (`pg_ctl stop -m immediate`) in
//! the middle of a claim load, and started again: while it is down every
//! claim is answered 503 SERVICE_UNAVAILABLE with `Retry-After` within 2 s and
//! `/ready` says so within 1 s; once it is back claims succeed within 2 s;
//! every claim answered 201 is in the store, PAID, and stock is exact.
//!
//! It needs a PostgreSQL it may stop, so it starts a private cluster (never
//! the shared test server) from the server binaries under
//! `/usr/lib/postgresql/*/bin`, as the `postgres` user when run as root.
//! Without them it is skipped, loudly — unless `REWARDS_TEST_POSTGRES_URL` is
//! set (CI), where missing binaries fail it.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rewards_events::EventsSettings;
use rewards_kit::clock::SharedClock;
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey, Role};
use rewards_kit::testing::{POSTGRES_URL_ENV, TestServer, postgres_url};
use serde_json::{Value, json};

/// Concurrent claimers.
const CLAIMERS: usize = 16;
/// Longest answer to a claim made while the store is down.
const DOWN_ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How soon `/ready` must report the store down.
const UNREADY_WITHIN: Duration = Duration::from_secs(1);
/// How soon claims must succeed again once the store accepts connections.
const RECOVER_WITHIN: Duration = Duration::from_secs(2);
/// How long the store stays down.
const OUTAGE: Duration = Duration::from_secs(3);

/// Where the PostgreSQL server binaries are, and how to run them.
struct Binaries {
    bin: PathBuf,
    /// Run as root: initdb refuses root, so everything runs as `postgres`.
    as_postgres: Option<(u32, u32)>,
}

/// The server binaries, or why they cannot be used here.
fn binaries() -> Result<Binaries, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            ["initdb", "pg_ctl", "postgres"].iter().all(|b| bin.join(b).is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    let Some((_, bin)) = found.pop() else {
        return Err("no /usr/lib/postgresql/*/bin with initdb, pg_ctl and postgres".to_owned());
    };
    let as_postgres = if id(&["-u"])? == 0 {
        if !Path::new("/usr/sbin/runuser").is_file() && !Path::new("/sbin/runuser").is_file() {
            return Err("running as root and `runuser` is missing".to_owned());
        }
        Some((id(&["-u", "postgres"])?, id(&["-g", "postgres"])?))
    } else {
        None
    };
    Ok(Binaries { bin, as_postgres })
}

fn id(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id").args(args).output().map_err(|e| format!("id {args:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| format!("id {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

/// A private PostgreSQL cluster in a temporary directory, stopped and
/// removed when dropped (a failing test must not leave it running).
struct Cluster {
    bins: Binaries,
    root: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn create(bins: Binaries) -> Self {
        let root = tempfile::Builder::new().prefix("rewards-outage-").tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join("sock")).unwrap();
        if let Some((uid, gid)) = bins.as_postgres {
            for dir in [root.path().to_owned(), root.path().join("sock")] {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster's directory");
            }
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { bins, root, port };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        cluster
    }

    fn data(&self) -> String {
        self.root.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    fn start(&self) {
        let options = format!("-h 127.0.0.1 -p {} -k {}", self.port, self.root.path().join("sock").display());
        let log = self.root.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["start", "-w", "-t", "60", "-D", &self.data(), "-l", &log, "-o", &options]);
    }

    /// Stops the server at once: no checkpoint, every connection cut.
    fn stop_immediately(&self) {
        self.run("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &self.data()]);
    }

    fn command(&self, binary: &str, args: &[&str]) -> Command {
        let path = self.bins.bin.join(binary);
        let mut command = match self.bins.as_postgres {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server's output goes to its log; nothing may hold our pipes.
        command.args(args).current_dir(self.root.path()).stdin(Stdio::null());
        command
    }

    fn run(&self, binary: &str, args: &[&str]) -> Output {
        let out = self.command(binary, args).output().unwrap_or_else(|e| panic!("{binary}: {e}"));
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &data])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The TempDir removes the files.
    }
}

/// A claim's answer, as the load saw it.
#[derive(Debug, Clone)]
struct Sample {
    started: Instant,
    took: Duration,
    /// 0: no HTTP answer (`code` says why).
    status: u16,
    code: Option<String>,
    retry_after: bool,
    claim_id: Option<String>,
}

impl Sample {
    fn ended(&self) -> Instant {
        self.started + self.took
    }

    fn is_unavailable(&self) -> bool {
        self.status == 503 && self.code.as_deref() == Some("SERVICE_UNAVAILABLE") && self.retry_after
    }
}

struct Caller {
    server: TestServer,
    client: reqwest::Client,
    key: IdentityKey,
}

impl Caller {
    fn request(&self, method: Method, path: &str, who: &Identity) -> reqwest::RequestBuilder {
        self.client
            .request(method.clone(), self.server.url(path))
            .header(IDENTITY_HEADER, self.key.sign(&method, path, who))
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let operator = Identity { sub: "op".into(), username: "op".into(), roles: vec![Role::Operator] };
        let response = self.request(Method::POST, path, &operator).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    async fn claim(&self, who: &Identity, key: &str, body: &Value) -> Sample {
        let started = Instant::now();
        let sent = self.request(Method::POST, "/reward-claims", who).header("idempotency-key", key).json(body).send();
        let (status, code, retry_after, claim_id) = match sent.await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
                let json: Value = response.json().await.unwrap_or(Value::Null);
                let code = json["code"].as_str().map(str::to_owned);
                let id = (status == 201).then(|| json["id"].as_str().map(str::to_owned)).flatten();
                (status, code, retry_after, id)
            }
            Err(err) => (0, Some(format!("no answer: {err}")), false, None),
        };
        Sample { started, took: started.elapsed(), status, code, retry_after, claim_id }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_is_answered_503_and_loses_no_acknowledged_claim() {
    let bins = match binaries() {
        Ok(bins) => bins,
        Err(why) if postgres_url().is_some() => {
            panic!("{POSTGRES_URL_ENV} is set, but PostgreSQL cannot be run: {why}")
        }
        Err(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "\n*** PostgreSQL outage test SKIPPED: {why} (it needs the PostgreSQL server binaries) ***\n"
            );
            return;
        }
    };
    let test_started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::create(bins);
        cluster.start();
        cluster
    })
    .await
    .unwrap();
    let cluster = Arc::new(cluster);

    let settings = EventsSettings::default();
    assert_eq!(settings.pool_timeout_ms, rewards_kit::store::DEFAULT_POOL_TIMEOUT_MS);
    let state = rewards_events::open(&settings, &cluster.url(), SharedClock::system()).await.unwrap();
    let key = IdentityKey::generate();
    let server = TestServer::spawn(rewards_events::router(state.clone(), key.clone())).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let caller = Arc::new(Caller { server, client, key });

    let event = caller
        .create(
            "/events",
            json!({ "name": "outage", "condition": { "type": "none" },
                "startDate": "2020-01-01", "endDate": "2099-12-31", "status": "ACTIVE" }),
        )
        .await;
    let reward = caller
        .create(
            "/rewards",
            json!({ "eventId": event["id"], "name": "r", "type": "POINT", "details": {}, "quantity": 1,
                "stock": 100_000, "perUserLimit": 1000 }),
        )
        .await;
    let reward_id = reward["id"].as_str().unwrap().to_owned();
    let body = json!({ "eventId": event["id"], "rewardId": reward_id });

    // The load: each claimer claims again as soon as it is answered, a new
    // player every 500 claims (the per-user limit is 1000).
    let stop = Arc::new(AtomicBool::new(false));
    let granted = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..CLAIMERS)
        .map(|c| {
            let (caller, body, stop, granted) = (caller.clone(), body.clone(), stop.clone(), granted.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let player = format!("p{c}-{}", n / 500);
                    let who = Identity { sub: player.clone(), username: player, roles: vec![Role::User] };
                    let sample = caller.claim(&who, &format!("k{c}-{n}"), &body).await;
                    if sample.status == 201 {
                        granted.fetch_add(1, Ordering::AcqRel);
                    }
                    samples.push(sample);
                    n += 1;
                }
                samples
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let granted_before = granted.load(Ordering::Acquire);
    assert!(granted_before > 0, "no claim was granted before the outage");

    // The outage.
    let stop_began = Instant::now();
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop_immediately()).await.unwrap();
    let down = Instant::now();

    // `/ready` notices.
    let unready_after = loop {
        let ready = caller.client.get(caller.server.url("/ready")).send().await.unwrap();
        if ready.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body: Value = ready.json().await.unwrap();
            assert_eq!(body["checks"]["store"]["status"], "down", "{body}");
            break down.elapsed();
        }
        assert!(down.elapsed() < Duration::from_secs(5), "/ready never reported the store down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;

    // Back again.
    let restart_began = Instant::now();
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start()).await.unwrap();
    let up = Instant::now();
    let granted_at_up = granted.load(Ordering::Acquire);
    let recovered_after = loop {
        if granted.load(Ordering::Acquire) > granted_at_up {
            break up.elapsed();
        }
        if up.elapsed() >= Duration::from_secs(10) {
            let who = Identity { sub: "probe".into(), username: "probe".into(), roles: vec![Role::User] };
            let probe = caller.claim(&who, "probe", &body).await;
            panic!("no claim was granted after the store came back; a claim now: {probe:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep((RECOVER_WITHIN + Duration::from_secs(1)).saturating_sub(up.elapsed())).await;
    let ready = caller.client.get(caller.server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "/ready after the store came back");

    stop.store(true, Ordering::Release);
    let mut samples = Vec::new();
    for task in load {
        samples.extend(task.await.unwrap());
    }

    // What the load saw.
    let strange: Vec<&Sample> = samples.iter().filter(|s| s.status != 201 && s.status != 503).collect();
    assert!(strange.is_empty(), "answers other than 201 and 503: {:?}", &strange[..strange.len().min(10)]);
    let bare_503: Vec<&Sample> = samples.iter().filter(|s| s.status == 503 && !s.is_unavailable()).collect();
    assert!(bare_503.is_empty(), "503s without SERVICE_UNAVAILABLE and Retry-After: {:?}", &bare_503[..1]);

    let before: Vec<&Sample> = samples.iter().filter(|s| s.ended() <= stop_began).collect();
    let in_flight: Vec<&Sample> = samples.iter().filter(|s| s.started < down && s.ended() > stop_began).collect();
    let while_down: Vec<&Sample> = samples.iter().filter(|s| s.started >= down && s.started < restart_began).collect();
    let after_up: Vec<&Sample> = samples.iter().filter(|s| s.started >= up).collect();
    assert!(!while_down.is_empty(), "no claim was made while the store was down");
    let slowest = |set: &[&Sample]| set.iter().map(|s| s.took).max().unwrap_or_default();

    for s in &while_down {
        assert!(s.took <= DOWN_ANSWER_WITHIN, "a claim made while the store was down took {:?}: {s:?}", s.took);
        // One made just before the restart may be answered by the store come back.
        if s.ended() <= restart_began {
            assert!(s.is_unavailable(), "a claim made while the store was down: {s:?}");
        }
    }
    assert!(unready_after <= UNREADY_WITHIN, "/ready reported the store down {unready_after:?} after it stopped");
    assert!(recovered_after <= RECOVER_WITHIN, "the first claim granted {recovered_after:?} after the store came back");
    let late_refusals: Vec<&&Sample> =
        after_up.iter().filter(|s| s.started >= up + RECOVER_WITHIN && s.status != 201).collect();
    assert!(late_refusals.is_empty(), "claims refused {RECOVER_WITHIN:?} after the store came back: {late_refusals:?}");

    // Nothing acknowledged is missing, and stock is exact.
    let acknowledged: Vec<&str> = samples.iter().filter_map(|s| s.claim_id.as_deref()).collect();
    assert_eq!(acknowledged.len(), samples.iter().filter(|s| s.status == 201).count(), "every 201 names its claim");
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    let live: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM reward_claims WHERE reward_id = $1 AND slot IS NOT NULL")
            .bind(&reward_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let live: std::collections::HashMap<String, String> = live.into_iter().collect();
    for id in &acknowledged {
        match live.get(*id) {
            Some(status) => assert_eq!(status, "PAID", "acknowledged claim {id}"),
            None => panic!("an acknowledged claim is not in the store: {id}"),
        }
    }
    let (stock, remaining): (i64, i64) = sqlx::query_as("SELECT stock, remaining FROM rewards WHERE id = $1")
        .bind(&reward_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stock - remaining, live.len() as i64, "stock taken equals the live claims");
    assert!(live.len() >= acknowledged.len());
    pool.close().await;

    let count = |set: &[&Sample], status: u16| set.iter().filter(|s| s.status == status).count();
    eprintln!(
        "outage test: {} claims; before the stop {} (201: {}); in flight at the stop {} (201: {}, 503: {}, \
         slowest {:?}); made while down {} (503: {}, 201 as it came back: {}, slowest {:?}); after it came back {} \
         (201: {}); pg_ctl stop {:?}, start {:?}; /ready down after {:?}; first grant {:?} after the store \
         accepted connections; acknowledged {}, live {}, granted without a 201 {}; test took {:?}",
        samples.len(),
        before.len(),
        count(&before, 201),
        in_flight.len(),
        count(&in_flight, 201),
        count(&in_flight, 503),
        slowest(&in_flight),
        while_down.len(),
        count(&while_down, 503),
        count(&while_down, 201),
        slowest(&while_down),
        after_up.len(),
        count(&after_up, 201),
        down - stop_began,
        up - restart_began,
        unready_after,
        recovered_after,
        acknowledged.len(),
        live.len(),
        live.len() - acknowledged.len(),
        test_started.elapsed(),
    );

    match Arc::try_unwrap(caller) {
        Ok(caller) => caller.server.stop().await,
        Err(_) => unreachable!("the load has stopped"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), state.store().close()).await;
    drop(cluster);
}

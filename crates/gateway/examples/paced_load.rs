//! A paced load for the gateway benchmark (`bench/gateway.sh`): the same GET
//! sent at a fixed total rate over a fixed number of keep-alive connections,
//! each request timed from the moment it is written to the moment its whole
//! answer has arrived. wrk runs flat out, so its percentiles measure time
//! queued behind a saturated CPU; this measures the latency a client sees
//! while the target has capacity to spare.
//!
//! Usage: `paced_load 127.0.0.1:18090 /bench/hello CONNECTIONS RATE SECONDS [TOKEN]`
//! Prints `requests_per_second p50_ms p99_ms errors`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 6, "usage: paced_load ADDR PATH CONNECTIONS RATE SECONDS [TOKEN]");
    let (addr, path) = (args[1].clone(), args[2].clone());
    let connections: u32 = args[3].parse()?;
    let rate: f64 = args[4].parse()?;
    let seconds: f64 = args[5].parse()?;
    let authorization = args.get(6).map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{authorization}\r\n").into_bytes();
    // Each connection sends one request per `every`, the connections
    // spread evenly over that interval.
    let every = Duration::from_secs_f64(f64::from(connections) / rate);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (addr, request) = (addr.clone(), request.clone());
        let first = started + every.mul_f64(f64::from(i) / f64::from(connections));
        tasks.push(tokio::spawn(async move { drive(&addr, &request, first, every, end).await }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    for task in tasks {
        let (mut times, failed) = task.await??;
        latencies.append(&mut times);
        errors += failed;
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let rps = latencies.len() as f64 / started.elapsed().as_secs_f64();
    println!("{rps:.0} {:.3} {:.3} {errors}", percentile(0.50), percentile(0.99));
    Ok(())
}

/// One connection's requests, on schedule until `end`: each one's latency,
/// and how many were not answered 200.
async fn drive(
    addr: &str,
    request: &[u8],
    first: Instant,
    every: Duration,
    end: Instant,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut stream = connect(addr).await?;
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut buffer = Vec::with_capacity(4096);
    let mut next = first;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let mut sent = Instant::now();
        let ok = match exchange(&mut stream, request, &mut buffer).await {
            Ok(ok) => ok,
            // A server may close a kept-alive connection after so many
            // requests (nginx's `keepalive_requests`): the request goes
            // again on a new one, timed from there, as a browser would.
            Err(_) => {
                stream = connect(addr).await?;
                buffer.clear();
                sent = Instant::now();
                exchange(&mut stream, request, &mut buffer).await?
            }
        };
        latencies.push(sent.elapsed());
        errors += u64::from(!ok);
        // A request that came back late does not make the next ones crowd in.
        next = (next + every).max(Instant::now());
    }
    Ok((latencies, errors))
}

async fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the request and reads its answer; whether it was a 200.
async fn exchange(stream: &mut TcpStream, request: &[u8], buffer: &mut Vec<u8>) -> anyhow::Result<bool> {
    stream.write_all(request).await?;
    read_answer(stream, buffer).await
}

/// Reads one answer with a `Content-Length`; whether it was a 200.
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("an answer without a content-length"))?;
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed in the middle of a body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let ok = head.starts_with("http/1.1 200");
    buffer.drain(..head_end + length);
    Ok(ok)
}

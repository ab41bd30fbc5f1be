//! Latency histograms and counters for every Tessera process, in the Prometheus text format.
//!
//! Owns: a process-wide registry of named histograms (microsecond buckets, powers of two
//! from 1 µs to ~67 s), counters and gauges, cheap enough for the write path (an observation is
//! three relaxed atomic adds), and a minimal HTTP endpoint that serves `GET /metrics`.
//! Must never: allocate or lock on an observation; block the caller.
//!
//! ```
//! static APPLY: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
//!     "tessera_raft_apply_seconds", "Applying one committed entry to the chunk store");
//! let t = std::time::Instant::now();
//! APPLY.observe_since(t);
//! ```

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bucket `i` counts observations below 2^i µs; the last one is +Inf.
const BUCKETS: usize = 27;

/// A latency histogram.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

fn bucket_of(us: u64) -> usize {
    // Smallest i with us < 2^i.
    ((64 - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

impl Histogram {
    fn new(name: &'static str, help: &'static str) -> Histogram {
        Histogram {
            name,
            help,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one latency of `d` (rounded down to whole microseconds).
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time elapsed since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Mean in microseconds (0 when empty).
    pub fn mean_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed) / self.count().max(1)
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1).
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= want {
                return 1u64 << i;
            }
        }
        1u64 << (BUCKETS - 1)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            if i + 1 < BUCKETS {
                let le = (1u64 << i) as f64 / 1e6;
                let _ = writeln!(out, "{}_bucket{{le=\"{le}\"}} {cum}", self.name);
            }
        }
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {cum}", self.name);
        let _ = writeln!(
            out,
            "{}_sum {}",
            self.name,
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{}_count {}", self.name, self.count());
    }
}

/// A monotonically increasing count.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    /// Adds `n` to the count.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (how many of something there are now).
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    /// Adds `n` (negative: takes away).
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

enum Metric {
    Histogram(&'static Histogram),
    Counter(&'static Counter),
    Gauge(&'static Gauge),
}

fn registry() -> &'static Mutex<Vec<Metric>> {
    static REG: OnceLock<Mutex<Vec<Metric>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

/// A histogram registered on first use; declare it as a `static`.
pub struct Lazy {
    name: &'static str,
    help: &'static str,
    cell: OnceLock<&'static Histogram>,
}

impl Lazy {
    /// A histogram exported as `name` (Prometheus naming: `tessera_..._seconds`) with the
    /// `help` line; nothing is registered until the first use.
    pub const fn new(name: &'static str, help: &'static str) -> Lazy {
        Lazy {
            name,
            help,
            cell: OnceLock::new(),
        }
    }

    /// The histogram, registered now if this is its first use.
    pub fn get(&self) -> &'static Histogram {
        self.cell.get_or_init(|| {
            let h: &'static Histogram = Box::leak(Box::new(Histogram::new(self.name, self.help)));
            if let Ok(mut r) = registry().lock() {
                r.push(Metric::Histogram(h));
            }
            h
        })
    }

    /// [`Histogram::observe`].
    pub fn observe(&self, d: Duration) {
        self.get().observe(d)
    }

    /// [`Histogram::observe_since`].
    pub fn observe_since(&self, start: Instant) {
        self.get().observe_since(start)
    }
}

/// A counter registered on first use; declare it as a `static`.
pub struct LazyCounter {
    name: &'static str,
    help: &'static str,
    cell: OnceLock<&'static Counter>,
}

impl LazyCounter {
    /// A counter exported as `name` with the `help` line; nothing is registered until
    /// the first `add`.
    pub const fn new(name: &'static str, help: &'static str) -> LazyCounter {
        LazyCounter {
            name,
            help,
            cell: OnceLock::new(),
        }
    }

    /// The count so far (0 before the first `add`).
    pub fn get(&self) -> u64 {
        self.cell.get().map_or(0, |c| c.get())
    }

    /// Adds `n`, registering the counter on its first use.
    pub fn add(&self, n: u64) {
        self.cell
            .get_or_init(|| {
                let c: &'static Counter = Box::leak(Box::new(Counter {
                    name: self.name,
                    help: self.help,
                    value: AtomicU64::new(0),
                }));
                if let Ok(mut r) = registry().lock() {
                    r.push(Metric::Counter(c));
                }
                c
            })
            .add(n)
    }
}

/// A gauge registered on first use; declare it as a `static`. Several owners (say, the
/// storage nodes of a dev cluster, in one process) each add and take away their own share.
pub struct LazyGauge {
    name: &'static str,
    help: &'static str,
    cell: OnceLock<&'static Gauge>,
}

impl LazyGauge {
    /// A gauge exported as `name` with the `help` line; nothing is registered until the
    /// first `add`.
    pub const fn new(name: &'static str, help: &'static str) -> LazyGauge {
        LazyGauge {
            name,
            help,
            cell: OnceLock::new(),
        }
    }

    /// The value now (0 before the first `add`).
    pub fn get(&self) -> i64 {
        self.cell.get().map_or(0, |g| g.get())
    }

    /// Adds `n` (negative: takes away), registering the gauge on its first use.
    pub fn add(&self, n: i64) {
        self.cell
            .get_or_init(|| {
                let g: &'static Gauge = Box::leak(Box::new(Gauge {
                    name: self.name,
                    help: self.help,
                    value: AtomicI64::new(0),
                }));
                if let Ok(mut r) = registry().lock() {
                    r.push(Metric::Gauge(g));
                }
                g
            })
            .add(n)
    }
}

/// Every registered metric in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    if let Ok(r) = registry().lock() {
        for m in r.iter() {
            match m {
                Metric::Histogram(h) => h.render(&mut out),
                Metric::Counter(c) => {
                    let _ = writeln!(out, "# HELP {} {}", c.name, c.help);
                    let _ = writeln!(out, "# TYPE {} counter", c.name);
                    let _ = writeln!(out, "{} {}", c.name, c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
                    let _ = writeln!(out, "# TYPE {} gauge", g.name);
                    let _ = writeln!(out, "{} {}", g.name, g.get());
                }
            }
        }
    }
    out
}

/// Serves `GET /metrics` (anything else: 404) on `listen` until the task is dropped.
/// Returns the bound address.
pub async fn serve(listen: &str) -> std::io::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded); only the request line matters.
                while n < buf.len() {
                    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..])).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_in_microseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(1000), 10);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_and_rendering() {
        static H: Lazy = Lazy::new("test_latency_seconds", "test");
        for us in [100u64, 200, 300, 5000] {
            H.observe(Duration::from_micros(us));
        }
        assert_eq!(H.get().count(), 4);
        assert_eq!(H.get().quantile_us(0.5), 256);
        assert_eq!(H.get().quantile_us(1.0), 8192);
        let text = render();
        assert!(text.contains("# TYPE test_latency_seconds histogram"));
        assert!(text.contains("test_latency_seconds_count 4"));
        assert!(text.contains("test_latency_seconds_bucket{le=\"+Inf\"} 4"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_404_otherwise() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        static H: Lazy = Lazy::new("test_http_seconds", "test");
        H.observe(Duration::from_micros(3));
        let addr = serve("127.0.0.1:0").await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("test_http_seconds_count 1"));
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    }
}

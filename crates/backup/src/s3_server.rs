//! An S3-compatible server for tests and benchmarks: `s3s-fs` (a real S3 protocol
//! implementation over a directory, with SigV4 authentication) in process, with fault
//! injection in front of it (delays, 503s, dropped connections).
//!
//! In process rather than a separate binary, so a test controls faults with a method call
//! and needs no port or process management; `tessera-s3-server` wraps the same server for
//! benchmarks and manual runs. The bucket is the directory `ROOT/<bucket>`, each object a
//! file under it by key. For tests only: it holds one set of credentials and never fsyncs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3Service;
use tessera_proto::control::{Secret, StoreKind, StoreSpec};

/// A running server; stops when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// The only credentials it accepts.
    pub access_key: String,
    /// The secret of `access_key`.
    pub secret_key: String,
    faults: Arc<Faults>,
    accept: tokio::task::AbortHandle,
    // Serves it; shut down (in the background) when the server is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How to start a server ([`S3Server::start`] takes the defaults).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (default `127.0.0.1:0`: a free loopback port).
    pub addr: SocketAddr,
    /// The credentials to accept (default: random ones, in [`S3Server::access_key`] and
    /// [`S3Server::secret_key`]).
    pub access_key: Option<String>,
    /// The secret of `access_key`.
    pub secret_key: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: None,
            secret_key: None,
        }
    }
}

/// What the next requests suffer, shared with every connection.
#[derive(Default)]
struct Faults {
    delay_ms: AtomicU64,
    fail: AtomicU32,
    drop: AtomicU32,
    requests: Mutex<HashMap<String, u64>>,
}

impl Faults {
    /// Takes one from `n` if it is not zero.
    fn take(n: &AtomicU32) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }
}

impl S3Server {
    /// Serves `root` on a free loopback port, with `bucket` created, on a tokio runtime of
    /// its own (two threads), so it serves whatever the caller's runtime does (blocked,
    /// current-thread, paused time, or none). Panics if it cannot (a test helper: see
    /// [`S3Server::start_with`]).
    pub async fn start(root: &Path, bucket: &str) -> S3Server {
        S3Server::start_with(root, bucket, Options::default())
            .await
            .unwrap_or_else(|e| panic!("cannot start the S3 server on {}: {e}", root.display()))
    }

    /// [`S3Server::start`] with `options`.
    pub async fn start_with(
        root: &Path,
        bucket: &str,
        options: Options,
    ) -> std::io::Result<S3Server> {
        if !crate::store::valid_bucket(bucket) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{bucket:?} is not an S3 bucket name"),
            ));
        }
        std::fs::create_dir_all(root.join(bucket))?;
        let fs =
            s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let access_key = options
            .access_key
            .unwrap_or_else(|| format!("TSK{:016X}", random_u64()));
        let secret_key = options
            .secret_key
            .unwrap_or_else(|| format!("{:016x}{:016x}", random_u64(), random_u64()));
        let mut service = s3s::service::S3ServiceBuilder::new(fs);
        service.set_auth(s3s::auth::SimpleAuth::from_single(
            access_key.clone(),
            secret_key.clone(),
        ));
        let service = service.build();

        let listener = std::net::TcpListener::bind(options.addr)?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let faults = Arc::new(Faults::default());
        let serve = accept_loop(listener, service, bucket.to_string(), Arc::clone(&faults));
        // A runtime of its own: a test blocking its runtime (a current-thread one, or a
        // wait on a child process) must not stall the server its children talk to.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-test-server")
            .enable_all()
            .build()?;
        let accept = runtime.spawn(serve).abort_handle();
        Ok(S3Server {
            endpoint,
            bucket: bucket.to_string(),
            access_key,
            secret_key,
            faults,
            accept,
            runtime: Some(runtime),
        })
    }

    /// A store spec named `name` in `zone` for this server and bucket.
    pub fn spec(&self, name: &str, zone: &str) -> StoreSpec {
        StoreSpec {
            name: name.to_string(),
            zone: zone.to_string(),
            kind: StoreKind::S3 {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                region: "us-east-1".to_string(),
                access_key_id: self.access_key.clone(),
                secret_access_key: Secret(self.secret_key.clone()),
                prefix: String::new(),
            },
        }
    }

    /// Every request waits `d` before it is served (zero: none).
    pub fn set_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.faults.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The next `n` requests are answered `503 Slow Down` without being served.
    pub fn fail_next(&self, n: u32) {
        self.faults.fail.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests are not answered: their connection is closed (after the
    /// request was read, so a put may or may not be wanted again: it was not served).
    pub fn drop_next(&self, n: u32) {
        self.faults.drop.store(n, Ordering::SeqCst);
    }

    /// Requests received so far, by method (`GET`, `PUT`, `HEAD`, `DELETE`, `POST`),
    /// those answered by a fault included.
    pub fn requests(&self, method: &str) -> u64 {
        let requests = self.faults.requests.lock().expect("not poisoned");
        requests
            .get(&method.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The accept task owns every connection's task: aborting it ends them all.
        self.accept.abort();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    s3: S3Service,
    bucket: String,
    faults: Arc<Faults>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("S3 test server cannot listen: {e}");
            return;
        }
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!("S3 test server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (s3, faults, http) = (s3.clone(), Arc::clone(&faults), http.clone());
        let bucket = bucket.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                serve(s3.clone(), bucket.clone(), Arc::clone(&faults), req)
            });
            // A connection ending in an error is the client's business (or a drop fault).
            let _ = http.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

async fn serve(
    s3: S3Service,
    bucket: String,
    faults: Arc<Faults>,
    req: Request<Incoming>,
) -> Result<Response<s3s::Body>, s3s::HttpError> {
    {
        let mut requests = faults.requests.lock().expect("not poisoned");
        *requests
            .entry(req.method().as_str().to_string())
            .or_default() += 1;
    }
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if Faults::take(&faults.drop) {
        return Err(s3s::HttpError::new(
            "fault injected: connection dropped".into(),
        ));
    }
    if Faults::take(&faults.fail) {
        return Ok(s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ));
    }
    // s3s-fs creates a bucket a put names; S3 answers 404 (path-style: `/bucket/key`).
    let named = req.uri().path().trim_start_matches('/');
    let named = named.split('/').next().unwrap_or_default();
    if !named.is_empty() && named != bucket {
        return Ok(s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        ));
    }
    s3.call(req.map(s3s::Body::from)).await
}

/// An S3 error answer (as S3 writes them: an XML `Error` with its code).
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>tessera-test</RequestId></Error>"
    );
    let mut resp = Response::new(s3s::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// Unpredictable enough for test credentials (no `rand` dependency).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

//! Processes of the tier-2 harness: picking ports, spawning the `tessera` binary with its
//! output appended to a log file, SIGKILL / SIGSTOP / SIGCONT, open-file limits, log tails.
//!
//! Owns one running process at a time per handle ([`NodeProc`], [`ManagerProc`]); knows
//! nothing of what the processes say to each other (that is `cluster.rs`) and must never
//! leave a child behind: every handle's owner kills it on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The `tessera` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A port that is free now, from below the kernel's ephemeral range (32768 and up), so the
/// many outgoing connections of a running test cannot take it before our process binds it.
/// Never one this test process handed out before: a port given to a process that has not
/// bound it yet is free too (two nodes of one cluster were once given the same).
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut rng = rand::thread_rng();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000")
}

/// The first of `n` consecutive free loopback ports (`tessera dev --base-port` takes one per
/// storage node).
pub fn free_port_run(n: u16) -> u16 {
    loop {
        let b = free_port();
        if (1..n).all(|i| TcpListener::bind(("127.0.0.1", b + i)).is_ok()) {
            return b;
        }
    }
}

/// How to start one process: `wrapper` (e.g. `ip netns exec NS`, empty: none), then
/// `tessera args`, with extra environment variables and an optional open-file limit.
pub struct Launch<'a> {
    pub wrapper: &'a [String],
    pub args: &'a [&'a str],
    pub env: &'a [(String, String)],
    /// The open-file limit, soft and hard (unchanged if `None`).
    pub nofile: Option<u64>,
}

impl<'a> Launch<'a> {
    /// Plain `tessera args`.
    pub fn new(args: &'a [&'a str]) -> Launch<'a> {
        Launch {
            wrapper: &[],
            args,
            env: &[],
            nofile: None,
        }
    }

    /// Starts the process, appending its output to `log` (a restart keeps the earlier lines).
    pub fn spawn(&self, log: &Path) -> Child {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(n) = self.nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: runs in the child between fork and exec, calling only setrlimit (async-
            // signal-safe) on a struct copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("spawn tessera")
    }
}

/// SIGKILL and reap: no shutdown code runs, exactly like a power cut of the process.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The exit status of a child that has exited on its own (then forgotten), if it has.
pub fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    let status = child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
    *child = None;
    Some(status)
}

/// Sends `signal` (a name for kill(1): `STOP`, `CONT`) to a child process. SIGSTOP freezes
/// it exactly where it is: sockets stay open, nothing answers, as in a long GC pause or a
/// hung disk.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{signal} {} failed", child.id());
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// One `tessera storage` process and the files it keeps across restarts.
pub struct NodeProc {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The process's open-file limit (soft and hard), if lowered.
    pub nofile: Option<u64>,
    /// The command the process runs under (`ip netns exec NS`), empty for none.
    pub wrapper: Vec<String>,
    /// Extra environment variables (e.g. `FAILPOINTS`) for the next starts.
    pub env: Vec<(String, String)>,
}

impl NodeProc {
    /// Starts the process (again), keeping its data directory and log.
    pub fn start(&mut self) {
        let config = self.config.to_str().expect("utf8");
        let launch = Launch {
            wrapper: &self.wrapper,
            args: &["storage", "--config", config],
            env: &self.env,
            nofile: self.nofile,
        };
        self.child = Some(launch.spawn(&self.log));
    }

    /// SIGKILL (see [`kill`]).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

/// One `tessera manager` process; `id` is its Raft id (1 for a manager founded alone).
pub struct ManagerProc {
    pub id: u64,
    pub addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Started with `--insecure` (its config names no certificates).
    pub insecure: bool,
}

impl ManagerProc {
    /// Starts the process (again), keeping its data directory and log.
    pub fn start(&mut self) {
        let config = self.config.to_str().expect("utf8");
        let mut args = vec!["manager", "--config", config];
        if self.insecure {
            args.push("--insecure");
        }
        self.child = Some(Launch::new(&args).spawn(&self.log));
    }

    /// SIGKILL (see [`kill`]).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

/// Runs a client tool (qemu-img, nbdinfo, ...) to completion, stdin closed.
pub fn tool(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

/// What a tool said: its status, stdout and stderr, for messages and `contains` checks.
pub fn said(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

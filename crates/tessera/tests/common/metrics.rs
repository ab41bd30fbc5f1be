//! Prometheus counters of the processes under test, read over `GET /metrics`.

use std::io::{Read, Write};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

/// `GET /metrics` of `addr`: the value of counter `name` (0 if not exported yet).
pub fn counter(addr: &str, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 10 s) until counter `name` of `addr` reaches `at_least`: the refusing
/// process counts right after it answers, which may be after the caller saw the answer.
pub fn counted(addr: &str, name: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = counter(addr, name);
        if n >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} at {addr} is {n}, expected at least {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

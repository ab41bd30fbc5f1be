//! Control-plane calls: one request on its own connection, answered within a deadline
//! ([`call`]); the same to whichever of several managers leads, following hints and
//! remembering the leader process-wide ([`call_managers`]); and the reply frame a server
//! sends back ([`rpc_reply`]). Must not know what any request means beyond the managers'
//! not-leader answer.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use tessera_proto::control::{self, ControlError};
use tessera_proto::frame::{self, Frame, Kind};

use crate::{Expect, FrameReader, NetError, Security, write_frame};

/// One control-plane request on its own connection to `expect` at `addr` (dialled as
/// `security` says), answered within `timeout`.
///
/// The reply body is `Result<Rep, ControlError>`; a `ControlError` comes back as
/// [`NetError::Control`].
pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
    security: &Security,
    addr: &str,
    expect: Expect,
    req: &Req,
    timeout: Duration,
) -> Result<Rep, NetError> {
    let work = async {
        let stream = security.connect(addr, expect, timeout).await?;
        let (r, mut w) = stream.into_split();
        write_frame(&mut w, &Frame::new(Kind::Rpc, 1, control::encode(req))).await?;
        let mut reader = FrameReader::new(r);
        let f = reader.next().await?.ok_or(NetError::Closed)?;
        if f.kind != Kind::RpcReply {
            return Err(NetError::UnexpectedKind(f.kind));
        }
        let res: Result<Rep, ControlError> = control::decode(&f.body)?;
        Ok(res?)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NetError::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
}

/// How long [`call_managers`] keeps looking for the manager leader before giving up: long
/// enough for the managers to elect a new leader after one died (about two seconds).
pub const MANAGER_RETRY_FOR: Duration = Duration::from_secs(10);

/// The address that last answered as leader, per list of manager addresses. Process-wide, so
/// every caller of the same cluster (a storage node's heartbeats, a client's route lookups)
/// learns a leader change once.
static LEADERS: LazyLock<Mutex<HashMap<Vec<String>, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One control-plane request to the leader among `managers`, each attempt answered within
/// `timeout`.
///
/// Tries the last known leader first, follows [`ControlError::NotLeader`] hints, moves on to
/// the next address when one cannot be reached or is not a manager ([`Expect::AnyManager`]:
/// [`NetError::WrongPeer`]), and after every address failed in a row
/// backs off (50 ms doubling up to 1 s) until [`MANAGER_RETRY_FOR`] has passed, then fails
/// with [`NetError::NoLeader`]. Any other answer, error or not, is final: it is returned at
/// once, as is a TLS handshake refused by every manager (certificates do not change by
/// waiting; one manager refusing is passed over like one that is down).
pub async fn call_managers<Req: Serialize, Rep: DeserializeOwned>(
    security: &Security,
    managers: &[String],
    req: &Req,
    timeout: Duration,
) -> Result<Rep, NetError> {
    if managers.is_empty() {
        return Err(NetError::Control(ControlError::Invalid(
            "no manager address given".into(),
        )));
    }
    let deadline = Instant::now() + MANAGER_RETRY_FOR;
    let known = LEADERS.lock().ok().and_then(|m| m.get(managers).cloned());
    let mut rotation = managers.iter().cycle();
    let mut next = known.or_else(|| rotation.next().cloned());
    let mut failed_in_a_row = 0usize;
    // Addresses whose TLS handshake was refused: when every one was, that is the answer.
    let mut refused = std::collections::HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let addr = match next.take() {
            Some(a) => a,
            None => rotation.next().cloned().unwrap_or_default(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match call::<Req, Rep>(
            security,
            &addr,
            Expect::AnyManager,
            req,
            timeout.min(left.max(Duration::from_millis(100))),
        )
        .await
        {
            Ok(rep) => {
                if let Ok(mut m) = LEADERS.lock() {
                    m.insert(managers.to_vec(), addr);
                }
                return Ok(rep);
            }
            Err(NetError::Control(ControlError::NotLeader(hint))) => {
                // A hint to an address just tried would loop: rotate instead.
                next = hint.filter(|h| *h != addr);
                NetError::Control(ControlError::NotLeader(None))
            }
            Err(e @ NetError::Control(_)) => return Err(e),
            Err(e @ (NetError::Handshake { .. } | NetError::SpeaksTls)) => {
                // Certificates do not change by waiting, but one manager's may be wrong
                // (expired, another service on its port) while the others serve.
                refused.insert(addr);
                if refused.len() >= managers.len() {
                    return Err(e);
                }
                e
            }
            Err(e) => e,
        };
        failed_in_a_row += 1;
        if Instant::now() >= deadline {
            return Err(NetError::NoLeader {
                managers: managers.join(","),
                last: Box::new(err),
            });
        }
        if next.is_none() && failed_in_a_row >= managers.len() {
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            failed_in_a_row = 0;
        }
    }
}

/// Encodes a control-plane answer as the reply frame to request `request_id`. An answer
/// too large for one frame (a bug: answers are bounded by design) is replaced by an
/// `Internal` error naming its size, never sent to panic the frame writer.
pub fn rpc_reply<Rep: Serialize>(request_id: u64, res: &Result<Rep, ControlError>) -> Frame {
    let body = control::encode(res);
    if body.len() > frame::MAX_BODY as usize {
        let refused: Result<(), ControlError> = Err(ControlError::Internal(format!(
            "the answer is {} bytes, over the frame limit of {} bytes",
            body.len(),
            frame::MAX_BODY
        )));
        return Frame::new(Kind::RpcReply, request_id, control::encode(&refused));
    }
    Frame::new(Kind::RpcReply, request_id, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer over the frame limit is an error the caller reads, not a panic of the
    /// connection that would leave the caller waiting.
    #[test]
    fn an_answer_too_large_for_a_frame_becomes_an_error() {
        let huge: Result<String, ControlError> = Ok("x".repeat(frame::MAX_BODY as usize));
        let f = rpc_reply(9, &huge);
        assert!(f.body_len() <= frame::MAX_BODY as usize);
        let _ = f.header();
        match control::decode::<Result<String, ControlError>>(&f.body) {
            Ok(Err(ControlError::Internal(m))) => assert!(m.contains("frame limit"), "{m}"),
            other => panic!("{other:?}"),
        }
        let small: Result<String, ControlError> = Ok("ok".into());
        let f = rpc_reply(9, &small);
        assert_eq!(
            control::decode::<Result<String, ControlError>>(&f.body).unwrap(),
            small
        );
    }

    /// A fake manager answering every request with `answer`.
    async fn fake_manager(answer: Result<String, ControlError>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = FrameReader::new(r);
                    while let Ok(Some(f)) = r.next().await {
                        let _ = write_frame(&mut w, &rpc_reply(f.request_id, &answer)).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn call_managers_follows_hints_and_skips_dead_addresses() {
        let leader = fake_manager(Ok("from the leader".into())).await;
        let follower = fake_manager(Err(ControlError::NotLeader(Some(leader.clone())))).await;
        // Bound then dropped: nothing listens there any more.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let managers = vec![dead, follower, leader.clone()];
        let t = Duration::from_secs(2);
        let rep: String = call_managers(&Security::insecure(), &managers, &"req", t)
            .await
            .unwrap();
        assert_eq!(rep, "from the leader");
        assert_eq!(LEADERS.lock().unwrap().get(&managers), Some(&leader));

        // Managers that never lead: given up on after MANAGER_RETRY_FOR, as a transient
        // failure rather than a definite answer.
        let no_leader = fake_manager(Err(ControlError::NotLeader(None))).await;
        let started = Instant::now();
        let err = call_managers::<_, String>(&Security::insecure(), &[no_leader], &"req", t)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NoLeader { .. }), "{err}");
        assert!(started.elapsed() >= MANAGER_RETRY_FOR);

        // A definite answer is final, not retried.
        let refusing =
            fake_manager(Err(ControlError::NotFound("volume \"x\" not found".into()))).await;
        let err = call_managers::<_, String>(&Security::insecure(), &[refusing], &"req", t)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::Control(ControlError::NotFound(_))));
    }
}

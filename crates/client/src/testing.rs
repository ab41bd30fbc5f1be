//! Test support: a manager played by the test, for the typed calls' unit tests.

use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};

/// A manager's answer to one request, as the test decides it.
pub(crate) type Answer = std::result::Result<ManagerReply, ControlError>;

/// A manager played by the test: answers every request with `answer`. Its address.
pub(crate) async fn fake_manager(answer: fn(ManagerRequest) -> Answer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut frames = tessera_net::FrameReader::new(r);
                while let Ok(Some(f)) = frames.next().await {
                    let req = tessera_proto::control::decode(&f.body).unwrap();
                    let reply = tessera_net::rpc_reply(f.request_id, &answer(req));
                    tessera_net::write_frame(&mut w, &reply).await.unwrap();
                }
            });
        }
    });
    addr
}

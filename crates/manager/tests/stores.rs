//! A manager checks its backup stores at start: refused credentials stop it, naming the
//! store; an unreachable store does not.
use tessera_backup::s3_server::S3Server;
use tessera_manager::{Error, Manager, ManagerConfig, S3Config, StoreConfig};
use tessera_proto::control::{Secret, StoreKind};

fn s3_entry(server: &S3Server, name: &str, secret: &str) -> StoreConfig {
    let StoreKind::S3 {
        endpoint,
        bucket,
        region,
        access_key_id,
        ..
    } = server.spec(name, "z2").kind
    else {
        panic!("an S3 spec");
    };
    StoreConfig {
        name: name.into(),
        zone: "z2".into(),
        path: None,
        s3: Some(S3Config {
            endpoint,
            bucket,
            region,
            access_key_id,
            secret_access_key: Secret(secret.into()),
            prefix: String::new(),
        }),
    }
}

/// Refused credentials stop a manager from starting, naming the store; an unreachable
/// store does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_its_credentials_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("s3"), "tessera").await;
    let good = server.spec("s3a", "z2");
    let StoreKind::S3 {
        secret_access_key, ..
    } = &good.kind
    else {
        panic!()
    };
    let ok = s3_entry(&server, "s3a", &secret_access_key.0);
    let config = ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("m"),
        stores: vec![
            StoreConfig::dir("local", "z1", &dir.path().join("b").display().to_string()),
            s3_entry(&server, "s3bad", "wrong"),
        ],
        ..ManagerConfig::default()
    };
    let err = Manager::start(config).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Store { name, .. } if name == "s3bad"),
        "{msg}"
    );
    assert!(
        msg.contains("s3bad") && msg.contains("credentials"),
        "{msg}"
    );
    // Good credentials, and a store that is unreachable: a warning only.
    let mut down = ok.clone();
    if let Some(s3) = &mut down.s3 {
        s3.endpoint = "http://127.0.0.1:9".into();
    }
    down.name = "down".into();
    let config = ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("m2"),
        stores: vec![ok, down],
        ..ManagerConfig::default()
    };
    let m = Manager::start(config).await.expect("started");
    m.shutdown().await;
}

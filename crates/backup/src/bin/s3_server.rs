//! `tessera-s3-server --root DIR [--addr 127.0.0.1:0] [--bucket B] [--access-key K
//! --secret-key S]`: the test server as a process (benchmarks, manual tests). Prints
//! `endpoint=... bucket=... access_key=... secret_key=...` once serving, then serves until
//! killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tessera_backup::s3_server::{Options, S3Server};

const USAGE: &str = "usage: tessera-s3-server --root DIR [--addr 127.0.0.1:0] [--bucket B] \
                     [--access-key K --secret-key S]";

struct Args {
    root: PathBuf,
    bucket: String,
    options: Options,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut root = None;
    let mut bucket = "tessera".to_string();
    let mut options = Options::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value)),
            "--bucket" => bucket = value,
            "--addr" => {
                options.addr = value
                    .parse()
                    .map_err(|e| format!("--addr {value:?}: {e}"))?;
            }
            "--access-key" => options.access_key = Some(value),
            "--secret-key" => options.secret_key = Some(value),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if options.access_key.is_some() != options.secret_key.is_some() {
        return Err(format!(
            "--access-key and --secret-key go together\n{USAGE}"
        ));
    }
    let root = root.ok_or_else(|| format!("--root is required\n{USAGE}"))?;
    Ok(Args {
        root,
        bucket,
        options,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-s3-server: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let server = match S3Server::start_with(&args.root, &args.bucket, args.options).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tessera-s3-server: {}: {e}", args.root.display());
                return ExitCode::FAILURE;
            }
        };
        println!(
            "endpoint={} bucket={} access_key={} secret_key={}",
            server.endpoint, server.bucket, server.access_key, server.secret_key
        );
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
        ExitCode::SUCCESS
    })
}

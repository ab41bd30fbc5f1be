//! The handshake phase: fixed newstyle negotiation up to the choice of an export.
//!
//! Everything read here is untrusted: every length is checked before anything is
//! allocated, and protocol violations end the connection with [`HandshakeError::Protocol`]
//! (never a panic). Extended headers are not offered (`NBD_REP_ERR_UNSUP` like any
//! unknown option); TLS is started before haggling, in `starttls.rs`, or not offered.
//! Only the exports the connection's [`Grant`] allows are listed or opened. The one metadata context offered is
//! `base:allocation`, selected for the export named in the last `NBD_OPT_SET_META_CONTEXT`
//! if transmission then starts on that same name (as the spec asks).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backend::{Access, Backend, BackendError, Export};
use crate::consts::*;
use crate::grant::Grant;

static DENIED: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_nbd_refused_exports_total",
    "NBD_OPT_GO / INFO / EXPORT_NAME refused because the client's certificate does not \
     grant the export",
);

/// Why negotiation ended without entering transmission.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; the connection is dropped (a hard disconnect).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The client is not let in: TLS required and not started, a TLS handshake that
    /// failed, a certificate naming no one. Counted; the connection is dropped.
    #[error("refused: {0}")]
    Refused(String),
}

/// The outcome of a successful negotiation: the export and how to talk about it.
pub(crate) struct Negotiated<E> {
    pub export: Arc<E>,
    pub name: String,
    /// Structured replies were negotiated (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: bool,
    /// `base:allocation` was selected for this export: `NBD_CMD_BLOCK_STATUS` is allowed.
    pub block_status: bool,
}

/// What the options may do on this connection: which exports its identity may use, and
/// whether TLS was negotiated (`NBD_OPT_STARTTLS` is then refused as a repeat).
pub(crate) struct Terms<'a> {
    pub grant: &'a Grant,
    pub tls: bool,
}

/// Sends the server's greeting and reads the client's flags: whether the client asked
/// for no zeroes after `NBD_OPT_EXPORT_NAME`'s reply.
pub(crate) async fn greet<R, W>(r: &mut R, w: &mut W) -> Result<bool, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    greeting[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    let unknown = client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    if unknown != 0 {
        return Err(HandshakeError::Protocol(format!(
            "unknown client flags {unknown:#x} (sent {client_flags:#x})"
        )));
    }
    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is still answered with fixed-newstyle
    // replies (the spec allows it); such clients only ever send NBD_OPT_EXPORT_NAME.
    Ok(client_flags & FLAG_C_NO_ZEROES != 0)
}

/// Reads one option: its number and data (length checked against `max`, at most
/// [`MAX_OPTION_LEN`], before anything is allocated).
pub(crate) async fn read_option<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<(u32, Vec<u8>), HandshakeError> {
    let magic = r.read_u64().await?;
    if magic != IHAVEOPT {
        return Err(HandshakeError::Protocol(format!(
            "bad option magic {magic:#018x}"
        )));
    }
    let opt = r.read_u32().await?;
    let len = r.read_u32().await?;
    let max = max.min(MAX_OPTION_LEN);
    if len > max {
        return Err(HandshakeError::Protocol(format!(
            "option {opt} carries {len} bytes, more than the limit of {max}"
        )));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    Ok((opt, data))
}

/// Option haggling after the greeting (and after TLS, if any), up to the export chosen.
/// `Ok(None)` means the client ended it politely (`NBD_OPT_ABORT`). The caller owns
/// buffering: `r` and `w` should be buffered; `w` is flushed after every reply the client
/// waits for.
pub(crate) async fn haggle<B, R, W>(
    backend: &B,
    r: &mut R,
    w: &mut W,
    no_zeroes: bool,
    terms: Terms<'_>,
) -> Result<Option<Negotiated<B::Export>>, HandshakeError>
where
    B: Backend,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let grant = terms.grant;
    let mut structured = false;
    // The export the last NBD_OPT_SET_META_CONTEXT selected `base:allocation` for.
    let mut meta_export: Option<String> = None;

    loop {
        let (opt, data) = read_option(r, MAX_OPTION_LEN).await?;
        let len = data.len() as u32;
        match opt {
            OPT_EXPORT_NAME => {
                if len > MAX_NAME_LEN {
                    return Err(HandshakeError::Protocol(format!(
                        "export name of {len} bytes exceeds {MAX_NAME_LEN}"
                    )));
                }
                let requested = String::from_utf8(data)
                    .map_err(|_| HandshakeError::Protocol("export name is not UTF-8".to_owned()))?;
                let requested = requested.as_str();
                // This option cannot be answered with an error: refusing means hanging up.
                let (name, export) = resolve(backend, grant, requested, Access::ReadWrite)
                    .await
                    .map_err(|e| match e {
                        BackendError::Denied(_) => {
                            HandshakeError::Refused(format!("NBD_OPT_EXPORT_NAME: {e}"))
                        }
                        _ => HandshakeError::Protocol(format!("NBD_OPT_EXPORT_NAME: {e}")),
                    })?;
                let mut reply = [0u8; 10 + 124];
                reply[..8].copy_from_slice(&export.size().to_be_bytes());
                let flags = transmission_flags(structured, export.read_only());
                reply[8..10].copy_from_slice(&flags.to_be_bytes());
                let n = if no_zeroes { 10 } else { reply.len() };
                w.write_all(&reply[..n]).await?;
                w.flush().await?;
                let block_status = structured && meta_export.as_deref() == Some(requested);
                return Ok(Some(Negotiated {
                    export: Arc::new(export),
                    name,
                    structured,
                    block_status,
                }));
            }
            OPT_ABORT => {
                // The client may already have hung up; the reply is best effort.
                let _ = reply(w, opt, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(None);
            }
            OPT_LIST => {
                if len != 0 {
                    reply(w, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                } else {
                    match backend.list().await {
                        Ok(mut names) => {
                            names.retain(|n| grant.sees(n));
                            names.sort();
                            for name in names.iter().filter(|n| n.len() <= MAX_NAME_LEN as usize) {
                                let mut body = Vec::with_capacity(4 + name.len());
                                body.extend_from_slice(&(name.len() as u32).to_be_bytes());
                                body.extend_from_slice(name.as_bytes());
                                reply(w, opt, REP_SERVER, &body).await?;
                            }
                            reply(w, opt, REP_ACK, &[]).await?;
                        }
                        Err(e) => {
                            // No reply type means "the store failed"; ERR_INVALID with the
                            // reason is the least misleading one the spec offers.
                            let msg = format!("cannot list volumes: {e}");
                            reply(w, opt, REP_ERR_INVALID, msg.as_bytes()).await?;
                        }
                    }
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                Err((kind, msg)) => reply(w, opt, kind, msg.as_bytes()).await?,
                Ok(req) => match resolve(backend, grant, &req.name, access_of(opt)).await {
                    Err(e) => {
                        // Another gateway writes the volume, or this identity may not use
                        // it: the server's policy forbids it. NBD_REP_ERR_UNKNOWN also
                        // covers a store that cannot open the volume right now; the message
                        // tells the user which.
                        let kind = match e {
                            BackendError::Busy(_) | BackendError::Denied(_) => REP_ERR_POLICY,
                            _ => REP_ERR_UNKNOWN,
                        };
                        reply(w, opt, kind, e.to_string().as_bytes()).await?;
                    }
                    Ok((name, export)) => {
                        send_info(w, opt, &req.infos, &name, &export, structured).await?;
                        reply(w, opt, REP_ACK, &[]).await?;
                        if opt == OPT_GO {
                            w.flush().await?;
                            let block_status =
                                structured && meta_export.as_deref() == Some(req.name.as_str());
                            return Ok(Some(Negotiated {
                                export: Arc::new(export),
                                name,
                                structured,
                                block_status,
                            }));
                        }
                    }
                },
            },
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    reply(
                        w,
                        opt,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                } else {
                    structured = true;
                    reply(w, opt, REP_ACK, &[]).await?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => match parse_meta_request(&data) {
                Err((kind, msg)) => reply(w, opt, kind, msg.as_bytes()).await?,
                Ok(_) if opt == OPT_SET_META_CONTEXT && !structured => {
                    let msg = b"NBD_OPT_SET_META_CONTEXT needs structured replies first";
                    reply(w, opt, REP_ERR_INVALID, msg).await?
                }
                Ok(req) => {
                    let set = opt == OPT_SET_META_CONTEXT;
                    let selected = base_allocation_matches(&req.queries, set);
                    if set {
                        // Each SET replaces what an earlier one selected.
                        meta_export = selected.then(|| req.name.clone());
                    }
                    if selected {
                        let mut body = META_BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        body.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
                        reply(w, opt, REP_META_CONTEXT, &body).await?;
                    }
                    reply(w, opt, REP_ACK, &[]).await?;
                }
            },
            OPT_STARTTLS if terms.tls => {
                reply(w, opt, REP_ERR_INVALID, b"TLS is already negotiated").await?;
            }
            OPT_STARTTLS => {
                let msg = b"TLS is not offered by this server (started without --tls)";
                reply(w, opt, REP_ERR_UNSUP, msg).await?;
            }
            OPT_EXTENDED_HEADERS => {
                reply(w, opt, REP_ERR_UNSUP, b"not supported by this server").await?
            }
            _ => reply(w, opt, REP_ERR_UNSUP, b"unknown option").await?,
        }
        w.flush().await?;
    }
}

/// The transmission flags of every export: all writes are durable when acknowledged
/// and every connection sees the same data, so FUA and multi-connection are free.
pub(crate) fn transmission_flags(structured: bool, read_only: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN;
    if structured {
        flags |= FLAG_SEND_DF;
    }
    if read_only {
        flags |= FLAG_READ_ONLY;
    }
    flags
}

/// Opens `name`, or the default export when `name` is empty: the export whose name
/// sorts first, so the choice does not depend on the order the store lists them in
/// (a cluster with `vol0` exports `vol0`).
/// Only exports `grant` allows are opened (checked before the name is looked up, so a
/// refusal tells nothing about what exists), the default among them; a read-only grant
/// opens them read-only.
async fn resolve<B: Backend>(
    backend: &B,
    grant: &Grant,
    name: &str,
    access: Access,
) -> Result<(String, B::Export), BackendError> {
    let name = if name.is_empty() {
        backend
            .list()
            .await?
            .into_iter()
            .filter(|n| grant.sees(n))
            .min()
            .ok_or_else(|| BackendError::NotFound("<default>".to_owned()))?
    } else {
        name.to_owned()
    };
    if !grant.sees(&name) {
        DENIED.add(1);
        return Err(BackendError::Denied(format!(
            "export \"{name}\" is not among this certificate's volumes"
        )));
    }
    let access = grant.access(access);
    let export = backend.open(&name, access).await?;
    if access == Access::Read && !export.read_only() {
        // A backend that ignored the read-only open: refused, never served writable.
        return Err(BackendError::Denied(format!(
            "export \"{name}\" could not be opened read-only"
        )));
    }
    Ok((name, export))
}

/// `NBD_OPT_INFO` only looks; `NBD_OPT_GO` goes on to transmission.
fn access_of(opt: u32) -> Access {
    if opt == OPT_INFO {
        Access::Info
    } else {
        Access::ReadWrite
    }
}

struct InfoRequest {
    name: String,
    infos: Vec<u16>,
}

/// Parses the data of `NBD_OPT_INFO` / `NBD_OPT_GO`: a 32-bit name length, the name, a
/// 16-bit count and that many 16-bit information types. The lengths must add up exactly.
/// Errors carry the option reply type to send: `NBD_REP_ERR_TOO_BIG` for an over-long
/// name, `NBD_REP_ERR_INVALID` for anything malformed.
fn parse_info_request(data: &[u8]) -> Result<InfoRequest, (u32, String)> {
    let invalid = |msg: String| (REP_ERR_INVALID, msg);
    let total = data.len();
    let (name_len, rest) = split_be_u32(data)
        .ok_or_else(|| invalid(format!("option data of {total} bytes is too short")))?;
    if name_len > MAX_NAME_LEN {
        let msg = format!("export name of {name_len} bytes exceeds {MAX_NAME_LEN}");
        return Err((REP_ERR_TOO_BIG, msg));
    }
    let name_len = name_len as usize;
    if rest.len() < name_len + 2 {
        return Err(invalid(format!(
            "export name of {name_len} bytes overruns option of {total}"
        )));
    }
    let (name, rest) = rest.split_at(name_len);
    let name =
        std::str::from_utf8(name).map_err(|_| invalid("export name is not UTF-8".to_owned()))?;
    let (count, rest) = rest.split_at(2);
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    if rest.len() != count * 2 {
        return Err(invalid(format!(
            "{count} information requests do not match the {} bytes left",
            rest.len()
        )));
    }
    let infos = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest {
        name: name.to_owned(),
        infos,
    })
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
struct MetaRequest {
    name: String,
    queries: Vec<String>,
}

/// Parses a metadata context request: a 32-bit export name length, the name, a 32-bit
/// query count, and that many (32-bit length, query) pairs; the lengths must add up
/// exactly. Errors carry the option reply type to send, as for [`parse_info_request`].
fn parse_meta_request(data: &[u8]) -> Result<MetaRequest, (u32, String)> {
    let invalid = |msg: String| (REP_ERR_INVALID, msg);
    let mut rest = data;
    let mut take = |n: usize, what: &str| -> Result<&[u8], (u32, String)> {
        if rest.len() < n {
            return Err(invalid(format!("{what} overruns the option")));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let name_len = be(take(4, "the export name length")?);
    if name_len > MAX_NAME_LEN {
        let msg = format!("export name of {name_len} bytes exceeds {MAX_NAME_LEN}");
        return Err((REP_ERR_TOO_BIG, msg));
    }
    let name = std::str::from_utf8(take(name_len as usize, "the export name")?)
        .map_err(|_| invalid("export name is not UTF-8".to_owned()))?
        .to_owned();
    let count = be(take(4, "the query count")?);
    let mut queries = Vec::new();
    for _ in 0..count {
        let len = be(take(4, "a query length")?);
        if len > MAX_NAME_LEN {
            let msg = format!("metadata context query of {len} bytes exceeds {MAX_NAME_LEN}");
            return Err((REP_ERR_TOO_BIG, msg));
        }
        let q = std::str::from_utf8(take(len as usize, "a query")?)
            .map_err(|_| invalid("metadata context query is not UTF-8".to_owned()))?;
        queries.push(q.to_owned());
    }
    if !rest.is_empty() {
        return Err(invalid(format!("{} trailing bytes", rest.len())));
    }
    Ok(MetaRequest { name, queries })
}

/// Whether the queries select (`set`) or list `base:allocation`: by its exact name; when
/// listing, also by its namespace alone (`base:`) or with no query at all (list them all).
fn base_allocation_matches(queries: &[String], set: bool) -> bool {
    if !set && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == META_BASE_ALLOCATION || (!set && q == "base:"))
}

fn split_be_u32(data: &[u8]) -> Option<(u32, &[u8])> {
    if data.len() < 6 {
        return None;
    }
    let (head, rest) = data.split_at(4);
    Some((
        u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
        rest,
    ))
}

/// Sends `NBD_INFO_EXPORT` (always) and each other requested type this server knows,
/// once each; unknown types are ignored as the spec asks.
async fn send_info<W: AsyncWrite + Unpin, E: Export>(
    w: &mut W,
    opt: u32,
    requested: &[u16],
    name: &str,
    export: &E,
    structured: bool,
) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(14);
    body.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    body.extend_from_slice(&export.size().to_be_bytes());
    body.extend_from_slice(&transmission_flags(structured, export.read_only()).to_be_bytes());
    reply(w, opt, REP_INFO, &body).await?;

    let mut sent = Vec::new();
    for &info in requested {
        if sent.contains(&info) {
            continue;
        }
        sent.push(info);
        body.clear();
        body.extend_from_slice(&info.to_be_bytes());
        match info {
            INFO_NAME => body.extend_from_slice(name.as_bytes()),
            INFO_BLOCK_SIZE => {
                for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
                    body.extend_from_slice(&v.to_be_bytes());
                }
            }
            // INFO_EXPORT went first; INFO_DESCRIPTION is optional and we have none;
            // unknown types are skipped.
            _ => continue,
        }
        reply(w, opt, REP_INFO, &body).await?;
    }
    Ok(())
}

/// Writes one option reply (not flushed).
pub(crate) async fn reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 20];
    head[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    head[8..12].copy_from_slice(&opt.to_be_bytes());
    head[12..16].copy_from_slice(&kind.to_be_bytes());
    // Every reply body is bounded by MAX_OPTION_LEN-sized inputs or short messages.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    head[16..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(data).await
}

#[cfg(test)]
mod tests;

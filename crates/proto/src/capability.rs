//! Capabilities: what the manager allows one client to do to one volume, signed, so that a
//! storage node can check a client's I/O without asking the manager.
//!
//! A client opens a volume through the manager, which decides whether the client's
//! certificate may use it; the manager then signs a [`Capability`] naming the volume, the
//! client, the writer epoch it holds (0: read only) and when the capability ends. The
//! client presents it on each storage connection ([`crate::frame::Kind::Capability`])
//! before its I/O for that volume; the node verifies the signature (a manager's certificate
//! of the cluster CA) and from then on serves that connection's requests for the volume
//! within what the capability says, until it expires.
//!
//! This module holds the layout only: what is signed ([`Capability::encode`]) and the
//! signed envelope ([`Signed`]). Signing and verifying are `tessera_net`'s; the rules are
//! the storage node's. Must never: decode a body it did not check the length of, or let
//! bytes outside the signed body change what a capability says.

use crate::{DecodeError, Reader};

/// Prefix of every signed capability body: a signature over one can never be taken for a
/// signature over anything else the manager signs.
const DOMAIN: &[u8; 8] = b"TSCAP\x001\x00";

/// Longest holder name carried (a client certificate's name).
pub const MAX_HOLDER: usize = 256;

/// Longest signed envelope accepted: a body, a signature and a certificate of the cluster.
pub const MAX_SIGNED: usize = 16 * 1024;

/// What one client may do to one volume, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The volume's id ([`crate::control::VolumeInfo::id`]).
    pub volume: u64,
    /// The writer epoch of the client's attachment: its writes, zeroes, discards and fences
    /// must carry exactly this epoch. 0: reads only.
    pub epoch: u64,
    /// The client's name, from its certificate: a capability presented on another
    /// client's connection is refused.
    pub holder: String,
    /// Unix time in milliseconds after which the capability is refused.
    pub expires_ms: u64,
    /// The manager that signed it (for logs; the signature's certificate says who).
    pub issuer: u64,
    /// Only fences at `epoch`, nothing else: what the manager gives for a volume's newest
    /// epoch when no client holds it (an operator's forced detach fences its groups).
    pub fence_only: bool,
}

impl Capability {
    /// Whether it allows writes (an attachment's epoch).
    pub fn writes(&self) -> bool {
        self.epoch != 0 && !self.fence_only
    }

    /// The bytes signed: a fixed layout behind [`DOMAIN`].
    pub fn encode(&self) -> Vec<u8> {
        let holder = self.holder.as_bytes();
        let mut out = Vec::with_capacity(DOMAIN.len() + 35 + holder.len());
        out.extend_from_slice(DOMAIN);
        for v in [self.volume, self.epoch, self.expires_ms, self.issuer] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(self.fence_only));
        out.extend_from_slice(&(holder.len() as u16).to_le_bytes());
        out.extend_from_slice(holder);
        out
    }

    /// Reads back [`Capability::encode`]'s bytes, all of them.
    pub fn decode(b: &[u8]) -> Result<Capability, DecodeError> {
        let mut r = Reader::new(b);
        if r.take(DOMAIN.len())? != DOMAIN {
            return Err(DecodeError::Invalid("not a capability".into()));
        }
        let (volume, epoch, expires_ms, issuer) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let fence_only = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(DecodeError::Invalid(format!("capability flags {other}"))),
        };
        let len = r.u16()? as usize;
        if len > MAX_HOLDER {
            return Err(DecodeError::Invalid(format!("holder of {len} bytes")));
        }
        let holder = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Invalid("holder is not UTF-8".into()))?
            .to_string();
        r.end()?;
        Ok(Capability {
            volume,
            epoch,
            holder,
            expires_ms,
            issuer,
            fence_only,
        })
    }
}

/// A capability as the manager signed it: the body ([`Capability::encode`]), the signature
/// scheme (a TLS `SignatureScheme` code), the signature, and the signer's certificate (DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signed bytes.
    pub body: Vec<u8>,
    /// TLS `SignatureScheme` code of `signature`.
    pub scheme: u16,
    /// The signature over `body`.
    pub signature: Vec<u8>,
    /// The signer's certificate, DER.
    pub signer: Vec<u8>,
}

impl Signed {
    /// The envelope's bytes: each part with a `u16` length (the scheme as a `u16`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.body.len() + self.signature.len() + 1024);
        out.extend_from_slice(&self.scheme.to_le_bytes());
        for part in [&self.body, &self.signature, &self.signer] {
            out.extend_from_slice(&(part.len().min(u16::MAX as usize) as u16).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Reads back [`Signed::encode`]'s bytes, all of them, at most [`MAX_SIGNED`].
    pub fn decode(b: &[u8]) -> Result<Signed, DecodeError> {
        if b.len() > MAX_SIGNED {
            return Err(DecodeError::TooLarge {
                len: b.len() as u64,
                max: MAX_SIGNED as u64,
            });
        }
        let mut r = Reader::new(b);
        let scheme = r.u16()?;
        let mut part = || -> Result<Vec<u8>, DecodeError> {
            let len = r.u16()? as usize;
            Ok(r.take(len)?.to_vec())
        };
        let (body, signature, signer) = (part()?, part()?, part()?);
        r.end()?;
        Ok(Signed {
            body,
            scheme,
            signature,
            signer,
        })
    }

    /// As text for a JSON field (lowercase hex).
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.encode())
    }

    /// Reads back [`Signed::to_hex`].
    pub fn from_hex(s: &str) -> Result<Signed, DecodeError> {
        if s.len() > 2 * MAX_SIGNED {
            return Err(DecodeError::Invalid(
                "capability hex of a bad length".into(),
            ));
        }
        let bytes = crate::hex::decode(s)
            .ok_or_else(|| DecodeError::Invalid("capability hex is not hex".into()))?;
        Signed::decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capability {
        Capability {
            volume: 7,
            epoch: 3,
            holder: "alice".into(),
            expires_ms: 1_800_000_000_000,
            issuer: 1,
            fence_only: false,
        }
    }

    #[test]
    fn a_capability_and_its_envelope_round_trip_through_bytes_and_hex() {
        let c = cap();
        assert_eq!(Capability::decode(&c.encode()).unwrap(), c);
        let s = Signed {
            body: c.encode(),
            scheme: 0x0403,
            signature: vec![1, 2, 3],
            signer: vec![9; 600],
        };
        assert_eq!(Signed::decode(&s.encode()).unwrap(), s);
        assert_eq!(Signed::from_hex(&s.to_hex()).unwrap(), s);
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        let body = cap().encode();
        for n in 0..body.len() {
            assert!(Capability::decode(&body[..n]).is_err(), "truncated at {n}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(Capability::decode(&long).is_err());
        let mut other = body;
        other[0] ^= 1;
        assert!(Capability::decode(&other).is_err(), "another domain");
        assert!(Signed::from_hex("0g").is_err());
        // Found by the `request` fuzz target (`fuzz/`): a sign is not a hex digit.
        assert!(Signed::from_hex("+a").is_err());
        assert!(Signed::from_hex("abc").is_err());
    }
}

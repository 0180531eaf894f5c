//! The optional seal that proves a node of this cluster wrote an envelope.
//!
//! Anyone who can publish on the broker can otherwise forge envelopes
//! (the broker has no password by default). With `cluster_secret` set,
//! every envelope is prefixed with HMAC-SHA256(secret, channel, 0, envelope)
//! (32 bytes); the channel is covered so an envelope cannot be replayed
//! into another room. Envelopes without a valid tag are dropped before
//! they are queued, and counted. (A captured envelope can still be
//! replayed on its own channel: the seal authenticates, it does not
//! number messages.)

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length of the seal's tag.
const TAG: usize = 32;

/// Seals outgoing envelopes and checks incoming ones.
#[derive(Clone)]
pub struct Seal {
    /// Keyed once; cloned per message (cheaper than re-keying).
    mac: Option<Hmac<Sha256>>,
}

/// Why an incoming envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("envelope without a valid cluster_secret tag")]
    BadTag,
}

impl Seal {
    /// `None`: envelopes travel unsealed and are accepted as they come.
    pub fn new(secret: Option<&str>) -> Seal {
        Seal {
            mac: secret.map(|s| {
                <Hmac<Sha256> as KeyInit>::new_from_slice(s.as_bytes())
                    .expect("HMAC takes keys of any length")
            }),
        }
    }

    fn tag(mac: &Hmac<Sha256>, channel: &str, envelope: &[u8]) -> Hmac<Sha256> {
        let mut mac = mac.clone();
        mac.update(channel.as_bytes());
        mac.update(&[0]);
        mac.update(envelope);
        mac
    }

    /// The payload to publish on `channel`.
    pub fn seal(&self, channel: &str, envelope: Bytes) -> Bytes {
        let Some(mac) = &self.mac else {
            return envelope;
        };
        let tag = Self::tag(mac, channel, &envelope).finalize().into_bytes();
        let mut out = BytesMut::with_capacity(TAG + envelope.len());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&envelope);
        out.freeze()
    }

    /// The envelope inside a payload received on `channel`, if its tag is
    /// valid (checked in constant time).
    pub fn open(&self, channel: &str, payload: Bytes) -> Result<Bytes, SealError> {
        let Some(mac) = &self.mac else {
            return Ok(payload);
        };
        if payload.len() < TAG {
            return Err(SealError::BadTag);
        }
        Self::tag(mac, channel, &payload[TAG..])
            .verify_slice(&payload[..TAG])
            .map_err(|_| SealError::BadTag)?;
        Ok(payload.slice(TAG..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_envelopes_open_only_with_the_same_secret_and_channel() {
        let env = Bytes::from_static(b"{\"k\":\"hb\",\"o\":\"n1\"}\nbody");
        let seal = Seal::new(Some("0123456789abcdef"));
        let sealed = seal.seal("limpet:room:a", env.clone());
        assert_eq!(seal.open("limpet:room:a", sealed.clone()), Ok(env.clone()));
        assert_eq!(
            seal.open("limpet:room:b", sealed.clone()),
            Err(SealError::BadTag)
        );
        let other = Seal::new(Some("another secret!!"));
        assert_eq!(
            other.open("limpet:room:a", sealed.clone()),
            Err(SealError::BadTag)
        );
        assert_eq!(
            seal.open("limpet:room:a", env.clone()),
            Err(SealError::BadTag)
        );
        assert_eq!(
            seal.open("c", Bytes::from_static(b"short")),
            Err(SealError::BadTag)
        );
        let open = Seal::new(None);
        assert_eq!(open.seal("c", env.clone()), env);
    }
}

//! [`PeerIdentity`]: each share server's own Ed25519 key pair, and the signatures
//! that tell which server sent a peer message.
//!
//! A shared secret only says "one of the servers": any follower holding it could
//! call another follower as if it were the coordinator. So every server has its own
//! key pair (`server.key_file`, created at first start), the public keys of all
//! servers are configured by index (`server.peer_keys`, exchanged like the peer
//! URLs), and every peer request carries its sender's index and a signature over
//! what it is about: sender, receiver, endpoint, step, the query (batch id, seal
//! number, config hash) and the SHA-256 of the body. A follower takes seal steps
//! only when they verify under the coordinator's key and name it as receiver, so a
//! message can neither come from another follower nor be replayed to one.
//!
//! What is signed is the message, not the transport: a step for the wrong seal is
//! refused by the seal protocol itself (seal numbers, batch ids).

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::ServerConfig;

/// The header naming the sender's index.
pub const SENDER_HEADER: &str = "guardian-peer-index";
/// The header carrying the signature (base64 of 64 bytes).
pub const SIGNATURE_HEADER: &str = "guardian-peer-signature";

/// Why a peer message was refused, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRefusal {
    /// Stable machine code: `no_peer_keys`, `missing_peer_signature`,
    /// `unknown_peer`, `bad_peer_signature`.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

fn refusal(code: &'static str, message: impl Into<String>) -> PeerRefusal {
    PeerRefusal {
        code,
        message: message.into(),
    }
}

/// What a peer request is about; the signature covers all of it.
#[derive(Debug, Clone, Copy)]
pub struct PeerMessage<'a> {
    /// The sender's index.
    pub sender: u32,
    /// The receiver's index.
    pub receiver: u32,
    /// The endpoint's name.
    pub endpoint: &'a str,
    /// The seal step (`prepare`, `commit`, `abort`).
    pub step: &'a str,
    /// The request's query string as sent (empty if none).
    pub query: &'a str,
    /// SHA-256 of the request body.
    pub body_sha256: &'a [u8; 32],
}

impl PeerMessage<'_> {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128 + self.endpoint.len() + self.query.len());
        bytes.extend_from_slice(b"guardian-peer-request-v1\n");
        for field in [
            &self.sender.to_string(),
            &self.receiver.to_string(),
            self.endpoint,
            self.step,
            self.query,
        ] {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(self.body_sha256);
        bytes
    }
}

/// This server's key pair and every server's public key.
pub struct PeerIdentity {
    /// This server's index.
    index: u32,
    /// This server's key pair.
    key: Ed25519KeyPair,
    /// Public key of each server, by index; empty when `server.peer_keys` is not
    /// configured (every peer message is then refused).
    peers: Vec<[u8; 32]>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("index", &self.index)
            .field("public_key", &self.public_key())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl PeerIdentity {
    /// Loads (or, at first start, creates) this server's key pair from
    /// `server.key_file` and reads the servers' public keys.
    ///
    /// # Errors
    /// The key file cannot be read or created, a public key is malformed, or
    /// `server.peer_keys` lists another key than this server's at its own index.
    pub fn from_config(server: &ServerConfig) -> anyhow::Result<PeerIdentity> {
        let key = load_or_create_key(&server.key_file())?;
        let peers = server
            .peer_keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                parse_public_key(text)
                    .map_err(|why| anyhow::anyhow!("server.peer_keys entry {i}: {why}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let identity = PeerIdentity {
            index: server.index,
            key,
            peers,
        };
        if let Some(own) = identity.peers.get(server.index as usize)
            && own[..] != *identity.key.public_key().as_ref()
        {
            anyhow::bail!(
                "server.peer_keys entry {} is {} but this server's key ({}) is {}: list each server's own public key at its index",
                server.index,
                BASE64.encode(own),
                server.key_file().display(),
                identity.public_key()
            );
        }
        Ok(identity)
    }

    /// This server's public key, base64: what the other operators put in their
    /// `server.peer_keys` at this server's index.
    pub fn public_key(&self) -> String {
        BASE64.encode(self.key.public_key().as_ref())
    }

    /// This server's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The signature of `message` (sent by this server), base64.
    pub fn sign(&self, message: &PeerMessage<'_>) -> String {
        BASE64.encode(self.key.sign(&message.signed_bytes()).as_ref())
    }

    /// Checks that `signature` is `message.sender`'s over `message`, and that the
    /// message is addressed to this server.
    ///
    /// # Errors
    /// A [`PeerRefusal`] saying why.
    pub fn verify(&self, message: &PeerMessage<'_>, signature: &str) -> Result<(), PeerRefusal> {
        if self.peers.is_empty() {
            return Err(refusal(
                "no_peer_keys",
                "this server has no public keys of its peers (server.peer_keys), so it refuses peer calls",
            ));
        }
        let Some(key) = self.peers.get(message.sender as usize) else {
            return Err(refusal(
                "unknown_peer",
                format!(
                    "there is no server {} in this deployment (server.peer_keys lists {})",
                    message.sender,
                    self.peers.len()
                ),
            ));
        };
        if message.receiver != self.index {
            return Err(refusal(
                "bad_peer_signature",
                format!(
                    "the message is addressed to server {}, this is server {}",
                    message.receiver, self.index
                ),
            ));
        }
        let signature = BASE64
            .decode(signature)
            .map_err(|_| refusal("bad_peer_signature", "the signature is not base64"))?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&message.signed_bytes(), &signature)
            .map_err(|_| {
                refusal(
                    "bad_peer_signature",
                    format!(
                        "the signature does not verify under server {}'s key (server.peer_keys) for this message",
                        message.sender
                    ),
                )
            })
    }
}

/// Parses a base64 Ed25519 public key (32 bytes).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|_| format!("{text:?} is not base64"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{text:?} is {} bytes; an Ed25519 public key is 32 (the line `guardian peer-key` prints)",
            bytes.len()
        )
    })
}

/// The public key (base64) of the key pair at `path`, created if missing: what
/// `guardian peer-key` prints for the other operators.
///
/// # Errors
/// As [`load_or_create_key`].
pub fn public_key_of(path: &Path) -> anyhow::Result<String> {
    Ok(BASE64.encode(load_or_create_key(path)?.public_key().as_ref()))
}

/// Reads the key pair at `path` (base64 of its PKCS#8 document), creating it,
/// readable by its owner only, if the file does not exist.
///
/// # Errors
/// The file cannot be read, created or parsed.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pair = Ed25519KeyPair::generate()
            .map_err(|_| anyhow::anyhow!("generating a peer key pair failed"))?;
        let pkcs8 = pair
            .to_pkcs8()
            .map_err(|_| anyhow::anyhow!("encoding the peer key pair failed"))?;
        let temp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(BASE64.encode(pkcs8.as_ref()).as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::hard_link(&temp, path))
            .or_else(|e| match e.kind() {
                // Created meanwhile by another process: use that one.
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            });
        let _ = fs::remove_file(&temp);
        written.with_context(|| format!("creating the peer key {}", path.display()))?;
        tracing::info!(path = %path.display(), public_key = %BASE64.encode(pair.public_key().as_ref()), "created this server's peer key pair");
    }
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the peer key {}", path.display()))?;
    let der = BASE64
        .decode(text.trim())
        .with_context(|| format!("the peer key {} is not base64", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|e| anyhow::anyhow!("the peer key {} is not an Ed25519 key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path, index: u32, peers: &[String]) -> PeerIdentity {
        let server = ServerConfig {
            index,
            data_dir: Some(dir.join(format!("s{index}"))),
            peer_keys: peers.to_vec(),
            ..ServerConfig::default()
        };
        PeerIdentity::from_config(&server).unwrap()
    }

    #[test]
    fn only_the_sender_signs_and_only_the_receiver_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..3)
            .map(|i| identity(dir.path(), i, &[]).public_key())
            .collect();
        let servers: Vec<PeerIdentity> = (0..3).map(|i| identity(dir.path(), i, &keys)).collect();
        // Loading again gives the same key.
        assert_eq!(identity(dir.path(), 1, &[]).public_key(), keys[1]);
        let digest = [7; 32];
        let message = PeerMessage {
            sender: 0,
            receiver: 2,
            endpoint: "demo",
            step: "prepare",
            query: "batch_id=00&seal=5",
            body_sha256: &digest,
        };
        let signature = servers[0].sign(&message);
        assert_eq!(servers[2].verify(&message, &signature), Ok(()));
        // Server 1 signs as itself, claims to be server 0: refused.
        let forged = servers[1].sign(&message);
        assert_eq!(
            servers[2].verify(&message, &forged).unwrap_err().code,
            "bad_peer_signature"
        );
        // Replayed to another receiver: refused.
        assert_eq!(
            servers[1].verify(&message, &signature).unwrap_err().code,
            "bad_peer_signature"
        );
        // Any field changed: refused.
        let other = [8; 32];
        for changed in [
            PeerMessage {
                query: "batch_id=00&seal=4",
                ..message
            },
            PeerMessage {
                step: "commit",
                ..message
            },
            PeerMessage {
                endpoint: "other",
                ..message
            },
            PeerMessage {
                body_sha256: &other,
                ..message
            },
        ] {
            assert!(servers[2].verify(&changed, &signature).is_err());
        }
        // Unconfigured: refused with its own code.
        let alone = identity(dir.path(), 2, &[]);
        assert_eq!(
            alone.verify(&message, &signature).unwrap_err().code,
            "no_peer_keys"
        );
    }

    #[test]
    fn a_wrong_own_key_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let other = identity(dir.path(), 1, &[]).public_key();
        let server = ServerConfig {
            index: 0,
            data_dir: Some(dir.path().join("s0")),
            peer_keys: vec![other.clone(), other],
            ..ServerConfig::default()
        };
        let error = PeerIdentity::from_config(&server).unwrap_err().to_string();
        assert!(error.contains("server.peer_keys entry 0"), "{error}");
    }
}

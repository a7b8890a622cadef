//! Whom this program's HTTPS clients trust, decided in one place.
//!
//! Every outgoing HTTP client (the token issuer's keys in [`crate::auth::keys`], the
//! peer client of a seal, the command line's [`crate::client::Cluster`]) starts from
//! [`client_builder`], so they all trust the same certificate authorities:
//!
//! - the web PKI roots compiled in (Mozilla's list, through `webpki-roots`), so that a
//!   public provider works even in a container without a CA bundle;
//! - the operating system's store (`rustls-native-certs`: on Linux the distribution's
//!   bundle), which `SSL_CERT_FILE` and `SSL_CERT_DIR` replace, as they do for OpenSSL;
//! - the extra certificates of `auth.ca_file` ([`ExtraRoots`]), for an identity
//!   provider or peers behind a private CA without touching the system store.
//!
//! The files are read when a client is built, that is at start: a bad `auth.ca_file`
//! stops the server with a message naming it, never a request.

use std::path::{Path, PathBuf};

/// What a certificate file (PEM, `-----BEGIN CERTIFICATE-----` blocks) is called in
/// messages.
const CA_FILE_KEY: &str = "auth.ca_file";

/// Why extra root certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{CA_FILE_KEY} {}: cannot read it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not PEM, or a certificate in it does not parse.
    #[error("{CA_FILE_KEY} {}: not a PEM certificate bundle: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The file holds no certificate (e.g. only a private key, or nothing).
    #[error(
        "{CA_FILE_KEY} {}: holds no certificate; give the CA certificate(s) in PEM, \
         each between -----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

/// Certificate authorities trusted on top of the built-in and system ones
/// (`auth.ca_file`). Cheap to clone; empty by default.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    /// The certificates, in file order.
    certificates: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl ExtraRoots {
    /// The certificates of `ca_file`, or none without one.
    ///
    /// # Errors
    /// See [`ExtraRoots::from_file`].
    pub fn from_config(ca_file: Option<&Path>) -> Result<ExtraRoots, TlsError> {
        ca_file.map_or_else(|| Ok(ExtraRoots::default()), ExtraRoots::from_file)
    }

    /// Every certificate of the PEM bundle at `path` (blocking: a small file, read
    /// at start).
    ///
    /// # Errors
    /// The file cannot be read, is not PEM, or holds no certificate.
    pub fn from_file(path: &Path) -> Result<ExtraRoots, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        // The PEM reader only splits blocks; rustls parses each certificate when a
        // client is built, so build one now to name this file if one is broken.
        certificates
            .iter()
            .fold(
                reqwest::Client::builder().tls_built_in_root_certs(false),
                |builder, certificate| builder.add_root_certificate(certificate.clone()),
            )
            .build()
            .map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                message: error_chain(&e),
            })?;
        Ok(ExtraRoots { certificates })
    }

    /// How many certificates are added.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

/// A client builder trusting the built-in roots, the system's store (or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`) and `extra`. Callers add their timeouts.
pub fn client_builder(extra: &ExtraRoots) -> reqwest::ClientBuilder {
    extra.certificates.iter().fold(
        reqwest::Client::builder()
            .tls_built_in_webpki_certs(true)
            .tls_built_in_native_certs(true),
        |builder, certificate| builder.add_root_certificate(certificate.clone()),
    )
}

/// An error and its causes, `: `-separated (reqwest's own text is only "builder
/// error").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

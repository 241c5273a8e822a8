//! `tls_server_config` → a rustls server config (ring provider), with Go's
//! names mapped to rustls's and what rustls lacks refused by name.
//!
//! Client authentication follows Go's `tls.ClientAuthType`: Request/
//! RequireAny accept any certificate (the handshake signature is still
//! checked), VerifyIfGiven/RequireAndVerify check it against the client CA.
//! `client_allowed_sans` then requires one SAN equal to a listed entry.
//!
//! The certificate and key files are re-read when their size, mtime or inode
//! change (checked on each handshake: two stats), so a renewed certificate is
//! served without restart; if the new files do not load, the old certificate
//! stays in use and a warning says why.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::web_config::{ClientAuthType, Problem, TlsServerConfig, TlsVersion};

const TLS: &str = "tls_server_config";

/// Go cipher suite names (TLS 1.2) that rustls implements.
const CIPHER_SUITES: [(&str, rustls::SupportedCipherSuite); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites: Go accepts their names and ignores them (1.3 suites are
/// not configurable there); so do we.
const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go names rustls does not implement (CBC, RC4, 3DES, RSA key exchange).
const UNSUPPORTED_SUITES: [&str; 14] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// Builds the rustls config; a [`Problem`] names the field at fault.
pub fn server_config(t: &TlsServerConfig, dir: &Path) -> Result<rustls::ServerConfig, Problem> {
    let mut provider = ring::default_provider();
    if !t.cipher_suites.is_empty() {
        provider.cipher_suites = cipher_suites(&t.cipher_suites)?;
    }
    if !t.curve_preferences.is_empty() {
        provider.kx_groups = curves(&t.curve_preferences)?;
    }
    let provider = Arc::new(provider);
    let versions = versions(t.min_version, t.max_version)?;
    let cert = CertSource::new(t, dir)?;
    let certified = cert
        .load(&provider)
        .map_err(|(field, message)| Problem::at(&[TLS, field], message))?;
    let verifier = client_verifier(t, dir, &provider)?;
    let resolver = Arc::new(ReloadingCert::new(cert, certified, provider.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| Problem::at(&[TLS], format!("no usable TLS settings: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.ignore_client_order = t.prefer_server_cipher_suites;
    // HTTP/2 is not served: say so in ALPN so clients pick HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn cipher_suites(names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, Problem> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some((_, suite)) = CIPHER_SUITES.iter().find(|(n, _)| n == name) {
            out.push(*suite);
        } else if UNSUPPORTED_SUITES.contains(&name.as_str()) {
            let names: Vec<&str> = CIPHER_SUITES.iter().map(|(n, _)| *n).collect();
            return Err(Problem::at(
                &[TLS, "cipher_suites"],
                format!("{name} is not supported (rustls implements only {})", names.join(", ")),
            )
            .index(i));
        } else if !TLS13_SUITES.contains(&name.as_str()) {
            return Err(Problem::at(&[TLS, "cipher_suites"], format!("unknown cipher suite {name:?}")).index(i));
        }
    }
    if out.is_empty() {
        return Err(Problem::at(
            &[TLS, "cipher_suites"],
            "lists no TLS 1.2 suite (TLS 1.3 suites are not configurable, as in Go)",
        ));
    }
    // TLS 1.3 suites are always on, as in Go.
    out.extend(
        ring::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| s.version() == &rustls::version::TLS13),
    );
    Ok(out)
}

fn curves(names: &[String]) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, Problem> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| match name.as_str() {
            "X25519" => Ok(ring::kx_group::X25519),
            "CurveP256" => Ok(ring::kx_group::SECP256R1),
            "CurveP384" => Ok(ring::kx_group::SECP384R1),
            "CurveP521" => Err(Problem::at(
                &[TLS, "curve_preferences"],
                "CurveP521 is not supported (rustls implements X25519, CurveP256, CurveP384)",
            )
            .index(i)),
            _ => Err(Problem::at(
                &[TLS, "curve_preferences"],
                format!("unknown curve {name:?} (expected X25519, CurveP256 or CurveP384)"),
            )
            .index(i)),
        })
        .collect()
}

fn versions(min: TlsVersion, max: TlsVersion) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Problem> {
    for (field, v) in [("min_version", min), ("max_version", max)] {
        if v < TlsVersion::TLS12 {
            return Err(Problem::at(
                &[TLS, field],
                format!("{v:?} is not supported (rustls implements TLS12 and TLS13)"),
            ));
        }
    }
    if min > max {
        return Err(Problem::at(
            &[TLS, "min_version"],
            format!("{min:?} is above max_version {max:?}"),
        ));
    }
    Ok([
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect())
}

/// Where the certificate and key come from: files (re-read on change) or
/// inline PEM.
enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    Inline { cert: String, key: String },
}

impl CertSource {
    fn new(t: &TlsServerConfig, dir: &Path) -> Result<CertSource, Problem> {
        let both =
            |field: &str, other: &str| Problem::at(&[TLS, field], format!("set either {field} or {other}, not both"));
        if t.cert.is_some() && t.cert_file.is_some() {
            return Err(both("cert_file", "cert"));
        }
        if t.key.is_some() && t.key_file.is_some() {
            return Err(both("key_file", "key"));
        }
        match (&t.cert_file, &t.key_file, &t.cert, &t.key) {
            (Some(c), Some(k), None, None) => Ok(CertSource::Files {
                cert: dir.join(c),
                key: dir.join(k),
            }),
            (None, None, Some(c), Some(k)) => Ok(CertSource::Inline {
                cert: c.clone(),
                key: k.expose().to_string(),
            }),
            (None, _, None, _) => Err(Problem::at(&[TLS], "missing one of cert or cert_file")),
            (_, None, _, None) => Err(Problem::at(&[TLS], "missing one of key or key_file")),
            _ => Err(Problem::at(
                &[TLS],
                "give the certificate and key the same way: cert_file and key_file, or cert and key",
            )),
        }
    }

    /// The certificate chain and key; on error the field at fault and why.
    fn load(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
        let (chain, key) = match self {
            CertSource::Files { cert, key } => {
                let read = |field, p: &Path| {
                    std::fs::read(p).map_err(|e| (field, format!("cannot read {}: {e}", p.display())))
                };
                let cert_pem = read("cert_file", cert)?;
                let key_pem = read("key_file", key)?;
                let what = |p: &Path| p.display().to_string();
                (
                    parse_chain(&cert_pem, &what(cert)).map_err(|m| ("cert_file", m))?,
                    parse_key(&key_pem, &what(key)).map_err(|m| ("key_file", m))?,
                )
            }
            CertSource::Inline { cert, key } => (
                parse_chain(cert.as_bytes(), "cert").map_err(|m| ("cert", m))?,
                parse_key(key.as_bytes(), "key").map_err(|m| ("key", m))?,
            ),
        };
        let key_field = match self {
            CertSource::Files { .. } => "key_file",
            CertSource::Inline { .. } => "key",
        };
        CertifiedKey::from_der(chain, key, provider)
            .map(Arc::new)
            .map_err(|e| (key_field, format!("the key does not fit the certificate: {e}")))
    }

    /// Size, mtime and inode of the files: a change means "re-read".
    fn stamp(&self) -> Option<Vec<(u64, u64, Option<SystemTime>)>> {
        use std::os::unix::fs::MetadataExt as _;
        match self {
            CertSource::Files { cert, key } => [cert, key]
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| (m.ino(), m.len(), m.modified().ok())).ok())
                .collect(),
            CertSource::Inline { .. } => None,
        }
    }
}

fn parse_chain(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{what}: no CERTIFICATE block"));
    }
    Ok(chain)
}

/// Never quotes the key's text in an error.
fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{what}: no PRIVATE KEY block"),
        _ => format!("{what}: not a PEM private key"),
    })
}

fn client_verifier(
    t: &TlsServerConfig,
    dir: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    if t.client_ca.is_some() && t.client_ca_file.is_some() {
        return Err(Problem::at(
            &[TLS, "client_ca_file"],
            "set either client_ca_file or client_ca, not both",
        ));
    }
    let roots = client_roots(t, dir)?;
    let sans = allowed_sans(&t.client_allowed_sans)?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ClientCertVerifier> = match t.client_auth_type {
        ClientAuthType::NoClientCert => {
            if roots.is_some() {
                return Err(Problem::at(
                    &[TLS, "client_auth_type"],
                    "a client CA is configured without a client_auth_type that uses it",
                ));
            }
            if !sans.is_empty() {
                return Err(Problem::at(
                    &[TLS, "client_allowed_sans"],
                    "needs a client_auth_type that asks for client certificates",
                ));
            }
            return Ok(WebPkiClientVerifier::no_client_auth());
        }
        ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert => Arc::new(AnyClientCert {
            mandatory: t.client_auth_type == ClientAuthType::RequireAnyClientCert,
            algorithms,
        }),
        ClientAuthType::VerifyClientCertIfGiven | ClientAuthType::RequireAndVerifyClientCert => {
            let Some(roots) = roots else {
                return Err(Problem::at(
                    &[TLS, "client_auth_type"],
                    format!("{:?} needs client_ca_file (or client_ca)", t.client_auth_type),
                ));
            };
            let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if t.client_auth_type == ClientAuthType::VerifyClientCertIfGiven {
                builder = builder.allow_unauthenticated();
            }
            builder
                .build()
                .map_err(|e| Problem::at(&[TLS, "client_ca_file"], format!("unusable client CA: {e}")))?
        }
    };
    Ok(match sans.is_empty() {
        true => verifier,
        false => Arc::new(AllowedSans { inner: verifier, sans }),
    })
}

fn client_roots(t: &TlsServerConfig, dir: &Path) -> Result<Option<RootCertStore>, Problem> {
    let (field, pem, what) = match (&t.client_ca_file, &t.client_ca) {
        (Some(file), _) => {
            let path = dir.join(file);
            let pem = std::fs::read(&path)
                .map_err(|e| Problem::at(&[TLS, "client_ca_file"], format!("cannot read {}: {e}", path.display())))?;
            ("client_ca_file", pem, path.display().to_string())
        }
        (None, Some(text)) => ("client_ca", text.clone().into_bytes(), "client_ca".to_string()),
        (None, None) => return Ok(None),
    };
    let mut roots = RootCertStore::empty();
    for cert in parse_chain(&pem, &what).map_err(|m| Problem::at(&[TLS, field], m))? {
        roots
            .add(cert)
            .map_err(|e| Problem::at(&[TLS, field], format!("{what}: unusable CA certificate: {e}")))?;
    }
    Ok(Some(roots))
}

/// An entry of `client_allowed_sans`.
#[derive(Debug)]
enum AllowedSan {
    Dns(String),
    Ip(std::net::IpAddr),
}

fn allowed_sans(entries: &[String]) -> Result<Vec<AllowedSan>, Problem> {
    entries
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if let Ok(ip) = s.parse() {
                Ok(AllowedSan::Ip(ip))
            } else if s.contains('@') || s.contains(':') {
                Err(Problem::at(
                    &[TLS, "client_allowed_sans"],
                    format!("{s:?}: only DNS names and IP addresses are supported (not e-mail or URI SANs)"),
                )
                .index(i))
            } else {
                Ok(AllowedSan::Dns(s.clone()))
            }
        })
        .collect()
}

/// Go's RequestClientCert / RequireAnyClientCert: any certificate, but the
/// client must prove it holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: the inner verifier's checks, then one SAN of the
/// client certificate must equal a listed entry (exact match, as in Go).
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<AllowedSan>,
}

impl AllowedSans {
    fn allowed(&self, end_entity: &CertificateDer<'_>) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        self.sans.iter().any(|san| match san {
            AllowedSan::Dns(name) => cert.valid_dns_names().any(|n| n == name),
            AllowedSan::Ip(ip) => {
                let ip = rustls::pki_types::ServerName::IpAddress((*ip).into());
                cert.verify_is_valid_for_subject_name(&ip).is_ok()
            }
        })
    }
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match self.allowed(end_entity) {
            true => Ok(verified),
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// At most one warning per this long about certificate files that do not load.
const RELOAD_WARN_EVERY: Duration = Duration::from_secs(60);

/// The server certificate, re-read when its files change.
struct ReloadingCert {
    source: CertSource,
    provider: Arc<CryptoProvider>,
    state: Mutex<CertState>,
}

struct CertState {
    stamp: Option<Vec<(u64, u64, Option<SystemTime>)>>,
    current: Arc<CertifiedKey>,
    warned: Option<Instant>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingCert")
    }
}

impl ReloadingCert {
    fn new(source: CertSource, current: Arc<CertifiedKey>, provider: Arc<CryptoProvider>) -> ReloadingCert {
        let stamp = source.stamp();
        ReloadingCert {
            source,
            provider,
            state: Mutex::new(CertState {
                stamp,
                current,
                warned: None,
            }),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = self.source.stamp();
        if stamp.is_some() && stamp != state.stamp {
            match self.source.load(&self.provider) {
                Ok(fresh) => {
                    tracing::info!("TLS certificate files changed: serving the new certificate");
                    state.current = fresh;
                    state.stamp = stamp;
                }
                Err((field, message)) => {
                    if state.warned.is_none_or(|t| t.elapsed() >= RELOAD_WARN_EVERY) {
                        state.warned = Some(Instant::now());
                        tracing::warn!(
                            field = %format!("{TLS}.{field}"),
                            "TLS certificate files changed but do not load ({message}); still serving the previous certificate"
                        );
                    }
                }
            }
        }
        Some(state.current.clone())
    }
}

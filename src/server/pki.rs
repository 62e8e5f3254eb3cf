//! The cluster's certificates: one CA, the API server's serving certificate, the admin client
//! certificate and the admin kubeconfig, kept as PEM files under `<data-dir>/server/tls`.
//!
//! This is k3s's `pkg/daemons/control/deps` reduced to what a single-binary server needs. k3s
//! keeps separate server, client and request-header CAs (and etcd CAs); `cluster` uses one CA
//! (`server-ca.crt`) that both signs the serving certificate and verifies client certificates.
//!
//! Files (keys are written with mode 0600, certificates 0644, the directory 0700):
//!
//! | file                                                | what                                    |
//! |-----------------------------------------------------|-----------------------------------------|
//! | `server-ca.crt`, `server-ca.key`                    | ECDSA P-256 CA, 10 years                |
//! | `serving-kube-apiserver.crt`, `…key`                | API serving certificate, 1 year         |
//! | `client-admin.crt`, `client-admin.key`              | `system:admin` / `system:masters`       |
//! | `client-kube-apiserver-kubelet.crt`, `…key`         | API server → kubelet client certificate |
//! | `serving-kubelet-<node>.crt`, `…key`                | a node's kubelet serving certificate    |
//!
//! # Guarantees
//! - The CA is created once and never replaced: a restart reuses it byte for byte, so issued
//!   kubeconfigs and node certificates stay valid.
//! - The serving certificate is re-issued from the same CA when its SAN set differs from the
//!   wanted one (new `--tls-san`, new node IP, new hostname), when its key does not match, when it
//!   was not issued by the CA, or when it expires within 90 days (as k3s renews). The admin
//!   certificate is re-issued on the same key/issuer/expiry conditions.
//! - Every file write is atomic (temporary file in the same directory, fsync, rename).
//!
//! # Caveats
//! - A CA certificate without its key (or the other way round), or a CA key that does not match
//!   its certificate, is an error: the server refuses to silently mint a new CA, which would
//!   invalidate every credential already handed out.
//! - Certificates are not revoked; a leaked admin key is valid until it expires.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// CA certificate file name inside the TLS directory.
pub const CA_CERT_FILE: &str = "server-ca.crt";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "server-ca.key";
/// API server serving certificate file name.
pub const SERVING_CERT_FILE: &str = "serving-kube-apiserver.crt";
/// API server serving key file name.
pub const SERVING_KEY_FILE: &str = "serving-kube-apiserver.key";
/// Admin client certificate file name.
pub const ADMIN_CERT_FILE: &str = "client-admin.crt";
/// Admin client key file name.
pub const ADMIN_KEY_FILE: &str = "client-admin.key";

/// API server → kubelet client certificate file name.
pub const KUBELET_CLIENT_CERT_FILE: &str = "client-kube-apiserver-kubelet.crt";
/// API server → kubelet client key file name.
pub const KUBELET_CLIENT_KEY_FILE: &str = "client-kube-apiserver-kubelet.key";
/// User name of the API server's client certificate towards kubelets (as kubeadm).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Common name of the API serving certificate (as k3s).
pub const SERVING_COMMON_NAME: &str = "kube-apiserver";
/// User name of the admin client certificate.
pub const ADMIN_USER: &str = "system:admin";
/// Group of the admin client certificate: bound to cluster-admin by bootstrap RBAC.
pub const ADMIN_GROUP: &str = "system:masters";

const CA_VALIDITY_DAYS: u64 = 3650;
const LEAF_VALIDITY_DAYS: u32 = 365;
/// Leaf certificates expiring within this window are re-issued at start-up (k3s: 90 days).
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Back-date `notBefore` so that nodes with a slightly slow clock accept fresh certificates.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const DAY: u64 = 24 * 3600;
/// X.509 `organizationName` (2.5.4.10): Kubernetes' group attribute.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];
/// Groups (`O=` attributes) a client certificate may carry; a limit of rcgen 0.14's
/// `DistinguishedName`, which keeps one value per attribute type.
pub const MAX_ORGANIZATIONS: usize = 2;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Errors of loading, creating and using the cluster's certificates. None is retryable: they
/// mean a broken TLS directory or invalid options and need an operator.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory could not be read, written or renamed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should (bad PEM, bad DER, wrong key).
    #[error("invalid {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// One half of the CA is on disk without the other.
    #[error("{present} exists but {missing} is missing; refusing to create a new ca")]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    /// A `--tls-san` (or hostname) is not a valid DNS name or IP address.
    #[error("invalid subject alternative name {san:?}: {source}")]
    InvalidSan {
        san: String,
        #[source]
        source: rcgen::Error,
    },
    /// A client certificate request is invalid (empty common name, zero validity).
    #[error("invalid client certificate request: {0}")]
    InvalidRequest(String),
    /// Key generation or signing failed.
    #[error("generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// rustls rejected the configuration.
    #[error("build tls config: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls rejected the client certificate verifier.
    #[error("build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What the serving certificate must cover, and where the files live.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// `<data-dir>/server/tls`.
    pub tls_dir: PathBuf,
    /// Extra `--tls-san` values: IP addresses or DNS names.
    pub sans: Vec<String>,
    /// Cluster DNS domain, `cluster.local` by default.
    pub cluster_domain: String,
    /// First address of the service CIDR (`10.43.0.1`): the `kubernetes` Service's ClusterIP.
    pub service_ip: IpAddr,
    /// This node's addresses.
    pub node_ips: Vec<IpAddr>,
    /// This node's host name.
    pub hostname: String,
}

/// Paths of the PEM files of a [`Pki`].
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl PkiFiles {
    fn new(dir: &Path) -> Self {
        PkiFiles {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            serving_cert: dir.join(SERVING_CERT_FILE),
            serving_key: dir.join(SERVING_KEY_FILE),
            admin_cert: dir.join(ADMIN_CERT_FILE),
            admin_key: dir.join(ADMIN_KEY_FILE),
        }
    }
}

/// The cluster's loaded certificates, with the CA key to issue more.
pub struct Pki {
    /// The CA certificate, to hand to clients (kubeconfigs, agents, in-cluster `ca.crt`).
    pub ca_cert_pem: String,
    /// The API server's serving certificate.
    pub serving_cert_pem: String,
    /// The admin client certificate (`system:admin`, `system:masters`).
    pub admin_cert_pem: String,
    /// Where the files are.
    pub files: PkiFiles,
    serving_key_pem: String,
    admin_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are deliberately left out.
        f.debug_struct("Pki")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the certificates under `opts.tls_dir`, creating whatever is missing.
    ///
    /// On first start this creates the CA, the serving certificate and the admin certificate. On
    /// later starts it reuses them, re-issuing the serving certificate from the same CA when the
    /// wanted SAN set changed (and either leaf when it is close to expiry or does not match).
    pub fn load_or_create(opts: &PkiOptions) -> Result<Pki, PkiError> {
        ensure_dir(&opts.tls_dir)?;
        let files = PkiFiles::new(&opts.tls_dir);
        let now = unix_now();

        let (ca_cert_pem, ca_key) = load_or_create_ca(&files, now)?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| PkiError::Corrupt {
                path: files.ca_cert.clone(),
                reason: e.to_string(),
            })?;
        let ca_subject = {
            let der = cert_der_from_pem(&ca_cert_pem, &files.ca_cert)?;
            let cert = parse_cert(&der, &files.ca_cert)?;
            cert.subject().as_raw().to_vec()
        };

        let wanted_sans = serving_sans(opts)?;
        let serving = load_or_issue_leaf(
            &files.serving_cert,
            &files.serving_key,
            &ca_subject,
            now,
            |cert| {
                let have = cert_sans(cert);
                if have != wanted_sans {
                    tracing::info!(
                        path = %files.serving_cert.display(),
                        "serving certificate names changed, re-issuing"
                    );
                    return false;
                }
                true
            },
            || {
                let mut params = leaf_params(SERVING_COMMON_NAME, &[], LEAF_VALIDITY_DAYS, now);
                params.subject_alt_names = wanted_sans
                    .iter()
                    .map(SanEntry::to_rcgen)
                    .collect::<Result<_, _>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                sign_leaf(&params, &issuer, "serving certificate")
            },
        )?;
        let admin = load_or_issue_leaf(
            &files.admin_cert,
            &files.admin_key,
            &ca_subject,
            now,
            |_| true,
            || {
                let mut params = leaf_params(ADMIN_USER, &[ADMIN_GROUP], LEAF_VALIDITY_DAYS, now);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                sign_leaf(&params, &issuer, "admin client certificate")
            },
        )?;

        Ok(Pki {
            ca_cert_pem,
            serving_cert_pem: serving.0,
            serving_key_pem: serving.1,
            admin_cert_pem: admin.0,
            admin_key_pem: admin.1,
            files,
            issuer,
        })
    }

    /// TLS configuration of the API server: the serving certificate; client certificates are
    /// optional but, when presented, must chain to the CA (anonymous and bearer-token clients
    /// connect without one). ALPN offers `h2` and `http/1.1`.
    pub fn server_tls_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der_from_pem(&self.ca_cert_pem, &self.files.ca_cert)?)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let chain = vec![cert_der_from_pem(
            &self.serving_cert_pem,
            &self.files.serving_cert,
        )?];
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes()).map_err(|e| {
            PkiError::Corrupt {
                path: self.files.serving_key.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Issues a client certificate from the CA: `CN=common_name`, one `O=` per organization
    /// (Kubernetes reads them as user name and groups). Returns the certificate and a fresh
    /// ECDSA P-256 key, both PEM. Nothing is written to disk. At most [`MAX_ORGANIZATIONS`]
    /// organizations.
    pub fn issue_client_cert(
        &self,
        common_name: &str,
        organizations: &[&str],
        validity_days: u32,
    ) -> Result<(String, String), PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidRequest("empty common name".into()));
        }
        if organizations.len() > MAX_ORGANIZATIONS {
            return Err(PkiError::InvalidRequest(format!(
                "{} organizations for {common_name:?}, at most {MAX_ORGANIZATIONS} are supported",
                organizations.len()
            )));
        }
        if organizations.iter().any(|o| o.is_empty()) {
            return Err(PkiError::InvalidRequest(format!(
                "empty organization for {common_name:?}"
            )));
        }
        if validity_days == 0 {
            return Err(PkiError::InvalidRequest(format!(
                "zero validity for {common_name:?}"
            )));
        }
        let mut params = leaf_params(common_name, organizations, validity_days, unix_now());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        sign_leaf(&params, &self.issuer, "client certificate")
    }

    /// The kubelet serving certificate of `node_name` (PEM certificate and key), loaded from
    /// `serving-kubelet-<node>.crt`/`.key` or issued from the CA: SANs are the node name,
    /// `localhost`, the loopback addresses and `node_ips`. Re-issued when the names change, on
    /// the same key/issuer/expiry conditions as the API serving certificate.
    pub fn kubelet_serving_cert(
        &self,
        node_name: &str,
        node_ips: &[IpAddr],
    ) -> Result<(String, String), PkiError> {
        let mut wanted = BTreeSet::new();
        wanted.insert(SanEntry::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        wanted.insert(SanEntry::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        wanted.insert(SanEntry::Dns("localhost".into()));
        wanted.extend(node_ips.iter().copied().map(SanEntry::Ip));
        match node_name.parse::<IpAddr>() {
            Ok(ip) => {
                wanted.insert(SanEntry::Ip(ip));
            }
            Err(_) => {
                let lower = node_name.to_ascii_lowercase();
                rcgen::string::Ia5String::try_from(lower.clone()).map_err(|source| {
                    PkiError::InvalidSan {
                        san: node_name.to_owned(),
                        source,
                    }
                })?;
                wanted.insert(SanEntry::Dns(lower));
            }
        }
        // The node name becomes part of a file name: keep it to what a DNS name allows.
        if node_name.is_empty()
            || !node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(PkiError::InvalidRequest(format!(
                "node name {node_name:?} cannot name a certificate file"
            )));
        }
        let dir = self.files.ca_cert.parent().unwrap_or(Path::new("."));
        let cert_path = dir.join(format!("serving-kubelet-{node_name}.crt"));
        let key_path = dir.join(format!("serving-kubelet-{node_name}.key"));
        let now = unix_now();
        load_or_issue_leaf(
            &cert_path,
            &key_path,
            &self.ca_subject()?,
            now,
            |cert| cert_sans(cert) == wanted,
            || {
                let mut params = leaf_params(node_name, &[], LEAF_VALIDITY_DAYS, now);
                params.subject_alt_names = wanted
                    .iter()
                    .map(SanEntry::to_rcgen)
                    .collect::<Result<_, _>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                sign_leaf(&params, &self.issuer, "kubelet serving certificate")
            },
        )
    }

    /// The API server's client certificate towards kubelets (`CN=kube-apiserver-kubelet-client`,
    /// `O=system:masters`, as kubeadm issues it), loaded or issued and persisted.
    pub fn kubelet_client_cert(&self) -> Result<(String, String), PkiError> {
        let dir = self.files.ca_cert.parent().unwrap_or(Path::new("."));
        let now = unix_now();
        load_or_issue_leaf(
            &dir.join(KUBELET_CLIENT_CERT_FILE),
            &dir.join(KUBELET_CLIENT_KEY_FILE),
            &self.ca_subject()?,
            now,
            |_| true,
            || {
                let mut params =
                    leaf_params(KUBELET_CLIENT_USER, &[ADMIN_GROUP], LEAF_VALIDITY_DAYS, now);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                sign_leaf(&params, &self.issuer, "kubelet client certificate")
            },
        )
    }

    /// TLS configuration of a node's kubelet API: its serving certificate
    /// ([`kubelet_serving_cert`](Pki::kubelet_serving_cert)); client certificates must chain
    /// to the cluster CA when presented. A client without one still completes the handshake, so
    /// that the kubelet can answer 401 (the kubelet server decides who may call it). ALPN offers
    /// `http/1.1` only: WebSocket upgrades need HTTP/1.1.
    pub fn kubelet_server_tls_config(
        &self,
        node_name: &str,
        node_ips: &[IpAddr],
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let (cert_pem, key_pem) = self.kubelet_serving_cert(node_name, node_ips)?;
        kubelet_server_tls_config(&self.ca_cert_pem, &cert_pem, &key_pem)
    }

    /// TLS configuration with which the API server dials kubelets: the cluster CA as the only
    /// root and [`kubelet_client_cert`](Pki::kubelet_client_cert) as the client certificate.
    pub fn kubelet_client_tls_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let (cert_pem, key_pem) = self.kubelet_client_cert()?;
        let dir = self.files.ca_cert.parent().unwrap_or(Path::new("."));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der_from_pem(&self.ca_cert_pem, &self.files.ca_cert)?)?;
        let key_path = dir.join(KUBELET_CLIENT_KEY_FILE);
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::Corrupt {
                path: key_path,
                reason: e.to_string(),
            })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert_der_from_pem(
                    &cert_pem,
                    &dir.join(KUBELET_CLIENT_CERT_FILE),
                )?],
                key,
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn ca_subject(&self) -> Result<Vec<u8>, PkiError> {
        let der = cert_der_from_pem(&self.ca_cert_pem, &self.files.ca_cert)?;
        let cert = parse_cert(&der, &self.files.ca_cert)?;
        Ok(cert.subject().as_raw().to_vec())
    }

    /// The admin kubeconfig: CA, admin certificate and key embedded (base64); the cluster,
    /// context and user are all named `default`, as k3s's `k3s.yaml`.
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        kubeconfig(
            server_url,
            &self.ca_cert_pem,
            &self.admin_cert_pem,
            &self.admin_key_pem,
        )
    }
}

/// A kubelet's rustls server configuration from PEM: the serving certificate and key, client
/// certificates verified against `ca_pem` when presented (optional at the TLS level, so that
/// the kubelet can answer 401 to a caller without one).
pub fn kubelet_server_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let pem_path = PathBuf::from("<kubelet tls>");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der_from_pem(ca_pem, &pem_path)?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::Corrupt {
        path: pem_path.clone(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert_der_from_pem(cert_pem, &pem_path)?], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Renders a kubeconfig with one cluster, context and user, all named `default`.
pub fn kubeconfig(server_url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar: safe for any URL.
    let server = serde_json::Value::String(server_url.to_owned());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = BASE64.encode(ca_pem),
        cert = BASE64.encode(cert_pem),
        key = BASE64.encode(key_pem),
    )
}

/// Writes a kubeconfig atomically (temporary file in the same directory, then rename), creating
/// parent directories and setting `mode` (0600 unless `--write-kubeconfig-mode` says otherwise).
pub fn write_kubeconfig(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| PkiError::Io {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_atomic(path, contents.as_bytes(), mode)
}

// ── CA ───────────────────────────────────────────────────────────────────────────────────────

fn load_or_create_ca(files: &PkiFiles, now: u64) -> Result<(String, KeyPair), PkiError> {
    match (files.ca_cert.exists(), files.ca_key.exists()) {
        (true, true) => {
            let cert_pem = read_string(&files.ca_cert)?;
            let key = read_key(&files.ca_key)?;
            let der = cert_der_from_pem(&cert_pem, &files.ca_cert)?;
            let cert = parse_cert(&der, &files.ca_cert)?;
            if !cert.is_ca() {
                return Err(PkiError::Corrupt {
                    path: files.ca_cert.clone(),
                    reason: "not a ca certificate".into(),
                });
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::Corrupt {
                    path: files.ca_key.clone(),
                    reason: format!("key does not match {}", files.ca_cert.display()),
                });
            }
            if cert.validity().not_after.timestamp() < now as i64 {
                tracing::warn!(path = %files.ca_cert.display(), "cluster ca has expired");
            }
            Ok((cert_pem, key))
        }
        (true, false) => Err(PkiError::IncompleteCa {
            present: files.ca_cert.clone(),
            missing: files.ca_key.clone(),
        }),
        (false, true) => Err(PkiError::IncompleteCa {
            present: files.ca_key.clone(),
            missing: files.ca_cert.clone(),
        }),
        (false, false) => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
                PkiError::Generate {
                    what: "ca key",
                    source,
                }
            })?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("cluster-server-ca@{now}"));
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            set_validity(&mut params, now, now + CA_VALIDITY_DAYS * DAY);
            let cert = params
                .self_signed(&key)
                .map_err(|source| PkiError::Generate {
                    what: "ca certificate",
                    source,
                })?;
            let cert_pem = cert.pem();
            // Key first: a crash in between leaves "key without cert", which is reported, rather
            // than a certificate whose key is lost.
            write_atomic(&files.ca_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
            write_atomic(&files.ca_cert, cert_pem.as_bytes(), CERT_MODE)?;
            tracing::info!(path = %files.ca_cert.display(), "created cluster ca");
            Ok((cert_pem, key))
        }
    }
}

// ── leaf certificates ────────────────────────────────────────────────────────────────────────

/// Loads a leaf certificate and key if both exist, are issued by the CA, match each other, are
/// not close to expiry and pass `still_good`; otherwise issues a new pair and writes it.
fn load_or_issue_leaf(
    cert_path: &Path,
    key_path: &Path,
    ca_subject: &[u8],
    now: u64,
    still_good: impl FnOnce(&X509Certificate<'_>) -> bool,
    issue: impl FnOnce() -> Result<(String, String), PkiError>,
) -> Result<(String, String), PkiError> {
    if cert_path.exists() && key_path.exists() {
        let cert_pem = read_string(cert_path)?;
        let key_pem = read_string(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Corrupt {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let der = cert_der_from_pem(&cert_pem, cert_path)?;
        let cert = parse_cert(&der, cert_path)?;
        let reuse = if cert.issuer().as_raw() != ca_subject {
            tracing::info!(path = %cert_path.display(), "certificate not issued by the cluster ca, re-issuing");
            false
        } else if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            tracing::info!(path = %cert_path.display(), "certificate does not match its key, re-issuing");
            false
        } else if cert.validity().not_after.timestamp() < (now + RENEW_BEFORE.as_secs()) as i64 {
            tracing::info!(path = %cert_path.display(), "certificate expires within 90 days, re-issuing");
            false
        } else {
            still_good(&cert)
        };
        if reuse {
            fix_key_mode(key_path)?;
            return Ok((cert_pem, key_pem));
        }
    }
    let (cert_pem, key_pem) = issue()?;
    write_atomic(key_path, key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(cert_path, cert_pem.as_bytes(), CERT_MODE)?;
    tracing::info!(path = %cert_path.display(), "issued certificate");
    Ok((cert_pem, key_pem))
}

fn leaf_params(cn: &str, orgs: &[&str], validity_days: u32, now: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // rcgen keeps one value per attribute type, so the second `O` goes in under the same OID
    // spelled as a custom type; `issue_client_cert` refuses a third.
    let org_types = [
        DnType::OrganizationName,
        DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
    ];
    for (ty, org) in org_types.into_iter().zip(orgs) {
        dn.push(ty, *org);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, now + u64::from(validity_days) * DAY);
    params
}

fn sign_leaf(
    params: &CertificateParams,
    issuer: &Issuer<'static, KeyPair>,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate { what, source })?;
    Ok((cert.pem(), key.serialize_pem()))
}

// ── subject alternative names ────────────────────────────────────────────────────────────────

/// One subject alternative name, normalised for comparison (DNS names lower case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SanEntry {
    Dns(String),
    Ip(IpAddr),
}

impl SanEntry {
    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        match self {
            SanEntry::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            SanEntry::Dns(name) => {
                name.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| PkiError::InvalidSan {
                        san: name.clone(),
                        source,
                    })
            }
        }
    }
}

/// The serving certificate's wanted names, as k3s: loopback, `localhost`, the host name, the
/// node IPs, the `kubernetes` Service names and ClusterIP, and every `--tls-san`.
fn serving_sans(opts: &PkiOptions) -> Result<BTreeSet<SanEntry>, PkiError> {
    let mut sans = BTreeSet::new();
    sans.insert(SanEntry::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sans.insert(SanEntry::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    sans.insert(SanEntry::Ip(opts.service_ip));
    sans.extend(opts.node_ips.iter().copied().map(SanEntry::Ip));
    let domain = opts.cluster_domain.trim_matches('.');
    let mut names = vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ];
    if !domain.is_empty() {
        names.push(format!("kubernetes.default.svc.{domain}"));
    }
    names.push(opts.hostname.clone());
    names.extend(opts.sans.iter().cloned());
    for name in names {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            sans.insert(SanEntry::Ip(ip));
            continue;
        }
        let lower = name.to_ascii_lowercase();
        rcgen::string::Ia5String::try_from(lower.clone()).map_err(|source| {
            PkiError::InvalidSan {
                san: name.to_owned(),
                source,
            }
        })?;
        sans.insert(SanEntry::Dns(lower));
    }
    Ok(sans)
}

fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<SanEntry> {
    let mut out = BTreeSet::new();
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return out;
    };
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                out.insert(SanEntry::Dns(dns.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                    out.insert(SanEntry::Ip(IpAddr::from(b)));
                } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                    out.insert(SanEntry::Ip(IpAddr::from(b)));
                }
            }
            _ => {}
        }
    }
    out
}

// ── files ────────────────────────────────────────────────────────────────────────────────────

fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| PkiError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn read_key(path: &Path) -> Result<KeyPair, PkiError> {
    let pem = read_string(path)?;
    let key = KeyPair::from_pem(&pem).map_err(|e| PkiError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    fix_key_mode(path)?;
    Ok(key)
}

/// Tightens a private key file that someone made group- or world-readable.
fn fix_key_mode(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(|source| PkiError::Io {
        action: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "private key was readable by others, setting mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(KEY_MODE)).map_err(|source| {
            PkiError::Io {
                action: "chmod",
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

fn cert_der_from_pem(pem: &str, path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("no pem certificate: {e}"),
    })
}

fn parse_cert<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("bad x509 certificate: {e}"),
        })
}

/// Writes `data` to `path` through a temporary file in the same directory, fsyncs it, and
/// renames it over `path`; the file gets exactly `mode` whatever the umask.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io {
            action,
            path: p,
            source,
        }
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        file.write_all(data).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ── time ─────────────────────────────────────────────────────────────────────────────────────

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sets the validity window from Unix times (rcgen's `OffsetDateTime`, without naming the `time`
/// crate), back-dating `notBefore` by [`CLOCK_SKEW`].
fn set_validity(params: &mut CertificateParams, now: u64, until: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now.saturating_sub(CLOCK_SKEW.as_secs()));
    params.not_after = epoch + Duration::from_secs(until);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::apiserver::authn::{peer_user, user_from_client_cert, UserInfo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn options(dir: &Path) -> PkiOptions {
        PkiOptions {
            tls_dir: dir.join("server/tls"),
            sans: vec!["cluster.example.com".into(), "192.0.2.10".into()],
            cluster_domain: "cluster.local".into(),
            service_ip: IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
            node_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5))],
            hostname: "edge-1".into(),
        }
    }

    fn sans_of(pem: &str) -> Result<BTreeSet<SanEntry>, Box<dyn std::error::Error>> {
        let der = cert_der_from_pem(pem, Path::new("test"))?;
        let cert = parse_cert(&der, Path::new("test"))?;
        Ok(cert_sans(&cert))
    }

    fn dns(s: &str) -> SanEntry {
        SanEntry::Dns(s.into())
    }

    fn ip(s: &str) -> Result<SanEntry, std::net::AddrParseError> {
        Ok(SanEntry::Ip(s.parse()?))
    }

    fn mode(path: &Path) -> Result<u32, std::io::Error> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    #[test]
    fn pki_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pki>();
        assert_send_sync::<crate::server::apiserver::authn::TokenAuthenticator>();
    }

    #[test]
    fn first_start_creates_ca_serving_and_admin() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        for (path, want) in [
            (&pki.files.ca_cert, CERT_MODE),
            (&pki.files.ca_key, KEY_MODE),
            (&pki.files.serving_cert, CERT_MODE),
            (&pki.files.serving_key, KEY_MODE),
            (&pki.files.admin_cert, CERT_MODE),
            (&pki.files.admin_key, KEY_MODE),
        ] {
            assert_eq!(mode(path)?, want, "{}", path.display());
        }
        assert_eq!(mode(&tmp.path().join("server/tls"))?, DIR_MODE);

        let ca_der = cert_der_from_pem(&pki.ca_cert_pem, Path::new("ca"))?;
        let ca = parse_cert(&ca_der, Path::new("ca"))?;
        assert!(ca.is_ca());
        let cn = ca
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(cn.starts_with("cluster-server-ca@"), "{cn}");
        let lifetime = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert!(lifetime >= (CA_VALIDITY_DAYS * DAY) as i64, "{lifetime}");
        // ECDSA P-256 with SHA-256.
        assert_eq!(
            ca.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );

        let serving_der = cert_der_from_pem(&pki.serving_cert_pem, Path::new("serving"))?;
        let serving = parse_cert(&serving_der, Path::new("serving"))?;
        assert_eq!(serving.issuer().as_raw(), ca.subject().as_raw());
        assert!(!serving.is_ca());
        Ok(())
    }

    #[test]
    fn serving_cert_has_every_expected_name() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let want: BTreeSet<SanEntry> = [
            ip("127.0.0.1")?,
            ip("::1")?,
            ip("10.43.0.1")?,
            ip("192.168.1.5")?,
            ip("192.0.2.10")?,
            dns("localhost"),
            dns("edge-1"),
            dns("kubernetes"),
            dns("kubernetes.default"),
            dns("kubernetes.default.svc"),
            dns("kubernetes.default.svc.cluster.local"),
            dns("cluster.example.com"),
        ]
        .into_iter()
        .collect();
        assert_eq!(sans_of(&pki.serving_cert_pem)?, want);
        Ok(())
    }

    #[test]
    fn restart_reuses_ca_and_certs() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let first = Pki::load_or_create(&opts)?;
        let second = Pki::load_or_create(&opts)?;
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.serving_cert_pem, second.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, second.admin_cert_pem);
        assert_eq!(
            first.admin_kubeconfig("https://127.0.0.1:6443"),
            second.admin_kubeconfig("https://127.0.0.1:6443")
        );
        Ok(())
    }

    #[test]
    fn san_change_reissues_serving_cert_from_same_ca() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let mut opts = options(tmp.path());
        let first = Pki::load_or_create(&opts)?;
        opts.sans.push("new.example.com".into());
        opts.node_ips.push("fd00::5".parse()?);
        let second = Pki::load_or_create(&opts)?;
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.admin_cert_pem, second.admin_cert_pem);
        assert_ne!(first.serving_cert_pem, second.serving_cert_pem);
        let sans = sans_of(&second.serving_cert_pem)?;
        assert!(sans.contains(&dns("new.example.com")));
        assert!(sans.contains(&ip("fd00::5")?));
        // Removing a name re-issues too.
        opts.sans.clear();
        let third = Pki::load_or_create(&opts)?;
        assert!(!sans_of(&third.serving_cert_pem)?.contains(&dns("cluster.example.com")));
        // Same names (different case/order) → same certificate.
        opts.sans = vec!["EDGE-1".into()];
        let fourth = Pki::load_or_create(&opts)?;
        assert_eq!(third.serving_cert_pem, fourth.serving_cert_pem);
        Ok(())
    }

    #[test]
    fn missing_leaf_is_reissued_and_mismatched_key_replaced() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let first = Pki::load_or_create(&opts)?;
        fs::remove_file(&first.files.admin_cert)?;
        // A valid key that does not belong to the serving certificate.
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        fs::write(&first.files.serving_key, other.serialize_pem())?;
        let second = Pki::load_or_create(&opts)?;
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_ne!(first.admin_cert_pem, second.admin_cert_pem);
        assert_ne!(first.serving_cert_pem, second.serving_cert_pem);
        second.server_tls_config()?;
        Ok(())
    }

    #[test]
    fn leaf_close_to_expiry_is_renewed() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let pki = Pki::load_or_create(&opts)?;
        let (cert, key) = pki.issue_client_cert(ADMIN_USER, &[ADMIN_GROUP], 30)?;
        fs::write(&pki.files.admin_cert, &cert)?;
        fs::write(&pki.files.admin_key, &key)?;
        let again = Pki::load_or_create(&opts)?;
        assert_eq!(again.ca_cert_pem, pki.ca_cert_pem);
        assert_ne!(again.admin_cert_pem, cert);
        let der = cert_der_from_pem(&again.admin_cert_pem, Path::new("admin"))?;
        let renewed = parse_cert(&der, Path::new("admin"))?;
        let left = renewed.validity().not_after.timestamp() - unix_now() as i64;
        assert!(left > RENEW_BEFORE.as_secs() as i64, "{left}");
        Ok(())
    }

    #[test]
    fn corrupt_files_name_the_file() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let pki = Pki::load_or_create(&opts)?;

        fs::write(&pki.files.ca_key, "-----BEGIN PRIVATE KEY-----\ngarbage\n")?;
        let err = Pki::load_or_create(&opts).expect_err("corrupt ca key");
        assert!(
            matches!(err, PkiError::Corrupt { ref path, .. } if *path == pki.files.ca_key),
            "{err}"
        );
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");

        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let pki = Pki::load_or_create(&opts)?;
        fs::write(&pki.files.serving_key, "not a key")?;
        let err = Pki::load_or_create(&opts).expect_err("corrupt serving key");
        assert!(err.to_string().contains(SERVING_KEY_FILE), "{err}");

        fs::write(&pki.files.serving_key, "")?;
        fs::write(&pki.files.ca_cert, "nothing here")?;
        let err = Pki::load_or_create(&opts).expect_err("corrupt ca cert");
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
        assert!(err.to_string().starts_with("invalid "), "{err}");

        fs::remove_file(&pki.files.ca_cert)?;
        let err = Pki::load_or_create(&opts).expect_err("ca key without cert");
        assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err}");
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
        Ok(())
    }

    #[test]
    fn ca_key_must_match_ca_cert() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let pki = Pki::load_or_create(&opts)?;
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        fs::write(&pki.files.ca_key, other.serialize_pem())?;
        let err = Pki::load_or_create(&opts).expect_err("mismatched ca key");
        assert!(err.to_string().contains("does not match"), "{err}");
        Ok(())
    }

    #[test]
    fn loose_key_permissions_are_tightened() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let opts = options(tmp.path());
        let pki = Pki::load_or_create(&opts)?;
        fs::set_permissions(&pki.files.ca_key, fs::Permissions::from_mode(0o644))?;
        fs::set_permissions(&pki.files.admin_key, fs::Permissions::from_mode(0o640))?;
        Pki::load_or_create(&opts)?;
        assert_eq!(mode(&pki.files.ca_key)?, KEY_MODE);
        assert_eq!(mode(&pki.files.admin_key)?, KEY_MODE);
        Ok(())
    }

    #[test]
    fn invalid_tls_san_is_rejected() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let mut opts = options(tmp.path());
        opts.sans.push("bücher.example".into());
        let err = Pki::load_or_create(&opts).expect_err("non-ascii san");
        assert!(err.to_string().contains("bücher.example"), "{err}");
        Ok(())
    }

    #[test]
    fn client_cert_round_trips_through_authn() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let (cert_pem, key_pem) =
            pki.issue_client_cert("system:node:edge-1", &["system:nodes", "extra"], 30)?;
        KeyPair::from_pem(&key_pem)?;
        let der = cert_der_from_pem(&cert_pem, Path::new("node"))?;
        let user = user_from_client_cert(&der).expect("user from node cert");
        assert_eq!(
            user,
            UserInfo {
                name: "system:node:edge-1".into(),
                groups: vec![
                    "system:nodes".into(),
                    "extra".into(),
                    "system:authenticated".into()
                ],
                uid: None,
            }
        );
        let cert = parse_cert(&der, Path::new("node"))?;
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / DAY as i64;
        assert_eq!(days, 30);

        let admin_der = cert_der_from_pem(&pki.admin_cert_pem, Path::new("admin"))?;
        let admin = user_from_client_cert(&admin_der).expect("admin user");
        assert_eq!(admin.name, ADMIN_USER);
        assert!(admin.in_group(ADMIN_GROUP));

        assert!(matches!(
            pki.issue_client_cert("", &[], 30),
            Err(PkiError::InvalidRequest(_))
        ));
        assert!(matches!(
            pki.issue_client_cert("x", &["a", "b", "c"], 30),
            Err(PkiError::InvalidRequest(_))
        ));
        assert!(matches!(
            pki.issue_client_cert("x", &[""], 30),
            Err(PkiError::InvalidRequest(_))
        ));
        assert!(matches!(
            pki.issue_client_cert("x", &[], 0),
            Err(PkiError::InvalidRequest(_))
        ));
        Ok(())
    }

    #[test]
    fn kubeconfig_embeds_credentials_and_is_written_atomically() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let text = pki.admin_kubeconfig("https://127.0.0.1:6443");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        assert_eq!(doc["current-context"].as_str(), Some("default"));
        assert_eq!(doc["clusters"][0]["name"].as_str(), Some("default"));
        assert_eq!(doc["users"][0]["name"].as_str(), Some("default"));
        assert_eq!(
            doc["contexts"][0]["context"]["user"].as_str(),
            Some("default")
        );
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        let decode = |v: &serde_yaml::Value| -> Result<String, Box<dyn std::error::Error>> {
            let b64 = v.as_str().ok_or("missing field")?;
            Ok(String::from_utf8(BASE64.decode(b64)?)?)
        };
        assert_eq!(
            decode(&doc["clusters"][0]["cluster"]["certificate-authority-data"])?,
            pki.ca_cert_pem
        );
        assert_eq!(
            decode(&doc["users"][0]["user"]["client-certificate-data"])?,
            pki.admin_cert_pem
        );
        KeyPair::from_pem(&decode(&doc["users"][0]["user"]["client-key-data"])?)?;

        let path = tmp.path().join("etc/cluster/cluster.yaml");
        write_kubeconfig(&path, &text, 0o600)?;
        assert_eq!(fs::read_to_string(&path)?, text);
        assert_eq!(mode(&path)?, 0o600);
        write_kubeconfig(&path, "second", 0o644)?;
        assert_eq!(fs::read_to_string(&path)?, "second");
        assert_eq!(mode(&path)?, 0o644);
        let leftovers: Vec<_> = fs::read_dir(path.parent().ok_or("no parent")?)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());

        let err = write_kubeconfig(Path::new("/proc/cluster-test/kubeconfig.yaml"), "x", 0o600)
            .expect_err("unwritable path");
        assert!(err.to_string().contains("/proc/cluster-test"), "{err}");
        Ok(())
    }

    // ── end to end: TLS handshake on loopback ────────────────────────────────────────────────

    fn client_config(
        ca_pem: &str,
        client: Option<(&str, &str)>,
    ) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder.with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
                PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            )?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// Accepts one connection; on success reports the peer's user (or `None`) and the ALPN
    /// protocol, after echoing one byte; on failure reports the handshake error.
    async fn serve_one(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> Result<(Option<UserInfo>, Option<Vec<u8>>), String> {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (user, alpn) = {
            let (_, conn) = tls.get_ref();
            (peer_user(conn), conn.alpn_protocol().map(<[u8]>::to_vec))
        };
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok((user, alpn))
    }

    /// Connects with `config`, sends a byte and reads it back.
    async fn ping(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(())
    }

    async fn handshake(
        pki: &Pki,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<
        (
            Result<(Option<UserInfo>, Option<Vec<u8>>), String>,
            Result<(), Box<dyn std::error::Error>>,
        ),
        Box<dyn std::error::Error>,
    > {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls_config()?);
        let server = tokio::spawn(serve_one(listener, acceptor));
        let client_result = ping(addr, client).await;
        let server_result = tokio::time::timeout(Duration::from_secs(10), server).await??;
        Ok((server_result, client_result))
    }

    #[test]
    fn kubelet_certs_are_persisted_and_name_the_node() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let node_ip: IpAddr = "10.0.0.7".parse()?;
        let (cert, key) = pki.kubelet_serving_cert("edge-1", &[node_ip])?;
        let sans = sans_of(&cert)?;
        for want in [
            dns("edge-1"),
            dns("localhost"),
            ip("127.0.0.1")?,
            ip("10.0.0.7")?,
        ] {
            assert!(sans.contains(&want), "{want:?} missing from {sans:?}");
        }
        // Same request: same files, nothing re-issued.
        assert_eq!(
            pki.kubelet_serving_cert("edge-1", &[node_ip])?,
            (cert.clone(), key)
        );
        assert!(tmp
            .path()
            .join("server/tls/serving-kubelet-edge-1.crt")
            .exists());
        // New node IP: re-issued.
        let (moved, _) = pki.kubelet_serving_cert("edge-1", &["10.0.0.8".parse()?])?;
        assert_ne!(moved, cert);
        assert!(sans_of(&moved)?.contains(&ip("10.0.0.8")?));
        assert!(pki.kubelet_serving_cert("../x", &[]).is_err());

        let (client, client_key) = pki.kubelet_client_cert()?;
        assert_eq!(pki.kubelet_client_cert()?, (client.clone(), client_key));
        let der = CertificateDer::from_pem_slice(client.as_bytes())?;
        let user = user_from_client_cert(&der).ok_or("no user in the kubelet client cert")?;
        assert_eq!(user.name, KUBELET_CLIENT_USER);
        assert!(user.in_group("system:masters"));
        assert_eq!(
            mode(&tmp.path().join("server/tls").join(KUBELET_CLIENT_KEY_FILE))?,
            0o600
        );
        pki.kubelet_client_tls_config()?;
        pki.kubelet_server_tls_config("edge-1", &[node_ip])?;
        Ok(())
    }

    #[tokio::test]
    async fn tls_admin_client_cert_is_system_masters() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let mut config = client_config(
            &pki.ca_cert_pem,
            Some((&pki.admin_cert_pem, &pki.admin_key_pem)),
        )?;
        Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec()];
        let (server, client) = handshake(&pki, config).await?;
        client?;
        let (user, alpn) = server?;
        let user = user.ok_or("server saw no client certificate")?;
        assert_eq!(user.name, "system:admin");
        assert!(user.in_group("system:masters"));
        assert!(user.in_group("system:authenticated"));
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn tls_issued_node_cert_is_accepted() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let (cert, key) = pki.issue_client_cert("system:node:edge-2", &["system:nodes"], 365)?;
        let config = client_config(&pki.ca_cert_pem, Some((&cert, &key)))?;
        let (server, client) = handshake(&pki, config).await?;
        client?;
        let user = server?.0.ok_or("no user")?;
        assert_eq!(user.name, "system:node:edge-2");
        assert!(user.in_group("system:nodes"));
        Ok(())
    }

    #[tokio::test]
    async fn tls_client_without_cert_is_anonymous() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let mut config = client_config(&pki.ca_cert_pem, None)?;
        Arc::make_mut(&mut config).alpn_protocols = vec![b"http/1.1".to_vec()];
        let (server, client) = handshake(&pki, config).await?;
        client?;
        let (user, alpn) = server?;
        assert_eq!(user, None);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn tls_client_cert_from_other_ca_is_rejected() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let other_tmp = tempfile::tempdir()?;
        let other = Pki::load_or_create(&options(other_tmp.path()))?;
        assert_ne!(pki.ca_cert_pem, other.ca_cert_pem);
        // Trusts the right server, but presents a certificate signed by another CA.
        let config = client_config(
            &pki.ca_cert_pem,
            Some((&other.admin_cert_pem, &other.admin_key_pem)),
        )?;
        let (server, client) = handshake(&pki, config).await?;
        let err = server.expect_err("server must reject a foreign client certificate");
        // Both test CAs may share a subject (same second): webpki then reports a bad signature
        // rather than an unknown issuer. Either way it is a certificate error.
        assert!(err.contains("certificate"), "{err}");
        assert!(client.is_err(), "client must not complete an exchange");
        Ok(())
    }

    #[tokio::test]
    async fn tls_server_cert_verifies_for_service_names() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::load_or_create(&options(tmp.path()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls_config()?);
        let server = tokio::spawn(serve_one(listener, acceptor));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("kubernetes.default.svc.cluster.local")?;
        let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki.ca_cert_pem, None)?)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        server.await??;
        Ok(())
    }
}

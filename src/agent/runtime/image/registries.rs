//! `registries.yaml`: mirrors, endpoint rewrites, credentials and TLS settings per registry, in
//! the shape k3s reads from `/etc/rancher/k3s/registries.yaml` (ours is
//! `/etc/cluster/registries.yaml`, or `--registries-config`).
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.example.com:5000", "http://10.0.0.5:5000"]
//!     rewrite:
//!       "^rancher/(.*)": "mirrorproject/rancher-images/$1"
//! configs:
//!   "mirror.example.com:5000":
//!     auth: {username: user, password: secret}
//!     tls: {ca_file: /etc/ssl/ca.pem, cert_file: c.pem, key_file: k.pem, insecure_skip_verify: false}
//! ```
//!
//! # Guarantees (as containerd configured by k3s)
//! - The endpoints of a registry are its mirror endpoints in order, then its default endpoint
//!   (`https://<registry>/v2`; `https://registry-1.docker.io/v2` for `docker.io`; plain HTTP for
//!   `localhost` and loopback addresses), which is always tried last.
//! - A mirror named `*` applies to every registry that has no mirror entry of its own.
//! - Rewrites apply to mirror endpoints only, never to the default endpoint; the first pattern
//!   (in file order) that matches the repository is used.
//! - An endpoint URL's scheme decides HTTP or HTTPS. Its path is the API root: empty or `/`
//!   means `/v2`; a path not ending in `/v2` gets `/v2` appended.
//! - `configs` are looked up by the endpoint's `host[:port]`, then by `*`.
//!
//! Owns parsing and endpoint planning only: it builds no HTTP client (see [`super::pull`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::reference::{Reference, DEFAULT_DOMAIN};

/// Default location of the file.
pub const DEFAULT_REGISTRIES_CONFIG: &str = "/etc/cluster/registries.yaml";

/// Why the registries file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("registries config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registries config {path}: {message}")]
    Syntax { path: String, message: String },
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// `mirrors.<registry>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Regular expression → replacement (`$1` refers to groups), applied to the repository.
    /// Kept as a list in file order: the first match wins.
    #[serde(default, deserialize_with = "ordered_map")]
    pub rewrite: Vec<(String, String)>,
}

/// `configs.<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

/// `configs.<host>.auth`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    /// base64 of `username:password`, as in Docker's config.json.
    pub auth: Option<String>,
    /// A refresh token for the registry's token service.
    pub identitytoken: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field(
                "identitytoken",
                &self.identitytoken.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AuthConfig {
    /// Username and password, from the fields or from `auth`.
    pub fn credentials(&self) -> Option<(String, String)> {
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            return Some((user.clone(), password.clone()));
        }
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }
}

/// `configs.<host>.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to try, with what to send there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// The API root, `/v2` or `/prefix/v2`, without a trailing slash.
    pub api_root: String,
    /// The repository to ask this endpoint for (rewritten for mirrors).
    pub repository: String,
    /// Whether this is a mirror (else the registry's own default endpoint).
    pub mirror: bool,
    /// `configs` entry that applies.
    pub config: RegistryConfig,
}

impl Endpoint {
    /// `scheme://host/api_root`.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.api_root)
    }
}

impl Registries {
    /// Reads `path`. A missing file means no mirrors and no configs unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Registries, RegistriesError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Registries::default())
            }
            Err(source) => {
                return Err(RegistriesError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Registries::parse(&text).map_err(|message| RegistriesError::Syntax {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the YAML text; rewrite patterns are checked here so that a bad one is reported
    /// at start-up rather than at the first pull.
    pub fn parse(text: &str) -> Result<Registries, String> {
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let registries: Registries = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
        for (registry, mirror) in &registries.mirrors {
            for (pattern, _) in &mirror.rewrite {
                regex::Regex::new(pattern)
                    .map_err(|err| format!("mirrors.{registry}.rewrite {pattern:?}: {err}"))?;
            }
            for endpoint in &mirror.endpoint {
                parse_endpoint_url(endpoint)
                    .map_err(|why| format!("mirrors.{registry}.endpoint {endpoint:?}: {why}"))?;
            }
        }
        Ok(registries)
    }

    /// The endpoints to try for `reference`, in order.
    pub fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let registry = reference.domain();
        let mut endpoints = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        if let Some(mirror) = mirror {
            let repository = rewrite(&mirror.rewrite, reference.path());
            for url in &mirror.endpoint {
                // Checked by parse(); an entry that still fails is skipped.
                let Ok((scheme, host, api_root)) = parse_endpoint_url(url) else {
                    continue;
                };
                endpoints.push(Endpoint {
                    config: self.config_for(&host),
                    scheme,
                    host,
                    api_root,
                    repository: repository.clone(),
                    mirror: true,
                });
            }
        }
        let default_host = if registry == DEFAULT_DOMAIN {
            "registry-1.docker.io".to_string()
        } else {
            registry.to_string()
        };
        let default = Endpoint {
            config: self.config_for(registry),
            scheme: if is_local(registry) { "http" } else { "https" }.to_string(),
            host: default_host,
            api_root: "/v2".to_string(),
            repository: reference.path().to_string(),
            mirror: false,
        };
        // A mirror listing the registry's own default endpoint must not make us try it twice.
        if !endpoints.iter().any(|e| {
            e.host == default.host
                && e.api_root == default.api_root
                && e.repository == default.repository
        }) {
            endpoints.push(default);
        }
        endpoints
    }

    fn config_for(&self, host: &str) -> RegistryConfig {
        self.configs
            .get(host)
            .or_else(|| self.configs.get("*"))
            .cloned()
            .unwrap_or_default()
    }
}

/// Applies the first matching rewrite rule.
fn rewrite(rules: &[(String, String)], repository: &str) -> String {
    for (pattern, replacement) in rules {
        let Ok(regex) = regex::Regex::new(pattern) else {
            continue;
        };
        if regex.is_match(repository) {
            return regex.replace(repository, replacement.as_str()).into_owned();
        }
    }
    repository.to_string()
}

/// `localhost`, `127.x.x.x` and `::1`, with or without a port: containerd talks plain HTTP to
/// these by default.
fn is_local(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port][/path]` → (scheme, host, api root).
fn parse_endpoint_url(url: &str) -> Result<(String, String, String), &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected http://host[:port] or https://host[:port]")?;
    if scheme != "http" && scheme != "https" {
        return Err("the scheme must be http or https");
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("no host");
    }
    let path = path.trim_end_matches('/');
    let api_root = if path.ends_with("/v2") {
        path.to_string()
    } else {
        format!("{path}/v2")
    };
    Ok((scheme.to_string(), host.to_string(), api_root))
}

/// Deserialises a YAML mapping into a list of pairs, keeping the file's order.
fn ordered_map<'de, D>(deserializer: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mapping = serde_yaml::Mapping::deserialize(deserializer)?;
    let mut pairs = Vec::new();
    for (key, value) in mapping {
        match (key, value) {
            (serde_yaml::Value::String(k), serde_yaml::Value::String(v)) => pairs.push((k, v)),
            _ => {
                return Err(serde::de::Error::custom(
                    "rewrite rules map a pattern string to a replacement string",
                ))
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Reference {
        Reference::parse(text).expect("reference")
    }

    const EXAMPLE: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example.com:5000"
      - "http://10.0.0.5:5000/prefix"
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
      "^(.*)$": "all/$1"
  "*":
    endpoint: ["https://catch-all.example.com"]
configs:
  "mirror.example.com:5000":
    auth:
      username: user
      password: secret
    tls:
      ca_file: /etc/ssl/ca.pem
      cert_file: /etc/ssl/client.pem
      key_file: /etc/ssl/client-key.pem
      insecure_skip_verify: true
  "registry.example.com":
    auth:
      auth: dXNlcjI6cGFzczI=
"#;

    #[test]
    fn mirrors_come_first_then_the_default_endpoint_without_rewrite() {
        let registries = Registries::parse(EXAMPLE).expect("parse");
        let endpoints = registries.endpoints(&reference("rancher/pause:3.6"));
        let urls: Vec<_> = endpoints
            .iter()
            .map(|e| (e.base_url(), e.repository.clone(), e.mirror))
            .collect();
        assert_eq!(
            urls,
            vec![
                (
                    "https://mirror.example.com:5000/v2".to_string(),
                    "mirrorproject/rancher-images/pause".to_string(),
                    true
                ),
                (
                    "http://10.0.0.5:5000/prefix/v2".to_string(),
                    "mirrorproject/rancher-images/pause".to_string(),
                    true
                ),
                (
                    "https://registry-1.docker.io/v2".to_string(),
                    "rancher/pause".to_string(),
                    false
                ),
            ]
        );
        let first = &endpoints[0];
        let tls = first.config.tls.as_ref().expect("tls");
        assert!(tls.insecure_skip_verify);
        assert_eq!(
            first.config.auth.as_ref().and_then(AuthConfig::credentials),
            Some(("user".to_string(), "secret".to_string()))
        );
        // Rules are tried in file order: the second one applies when the first does not match.
        let endpoints = registries.endpoints(&reference("busybox"));
        assert_eq!(endpoints[0].repository, "all/library/busybox");
    }

    #[test]
    fn wildcard_mirror_and_auth_field() {
        let registries = Registries::parse(EXAMPLE).expect("parse");
        let endpoints = registries.endpoints(&reference("registry.example.com/team/app:1"));
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].base_url(), "https://catch-all.example.com/v2");
        assert_eq!(endpoints[1].base_url(), "https://registry.example.com/v2");
        assert_eq!(
            endpoints[1]
                .config
                .auth
                .as_ref()
                .and_then(AuthConfig::credentials),
            Some(("user2".to_string(), "pass2".to_string()))
        );
    }

    #[test]
    fn loopback_registries_default_to_plain_http() {
        let registries = Registries::default();
        for (image, url) in [
            ("localhost:5000/app", "http://localhost:5000/v2"),
            ("127.0.0.1:5000/app", "http://127.0.0.1:5000/v2"),
            ("[::1]:5000/app", "http://[::1]:5000/v2"),
            ("example.com:5000/app", "https://example.com:5000/v2"),
        ] {
            let endpoints = registries.endpoints(&reference(image));
            assert_eq!(endpoints.len(), 1);
            assert_eq!(endpoints[0].base_url(), url, "{image}");
        }
    }

    #[test]
    fn endpoint_paths() {
        for (url, root) in [
            ("https://h", "/v2"),
            ("https://h/", "/v2"),
            ("https://h/v2", "/v2"),
            ("https://h/v2/", "/v2"),
            ("https://h/prefix", "/prefix/v2"),
            ("https://h/prefix/v2", "/prefix/v2"),
        ] {
            assert_eq!(
                parse_endpoint_url(url).map(|p| p.2),
                Ok(root.to_string()),
                "{url}"
            );
        }
        assert!(parse_endpoint_url("ftp://h").is_err());
        assert!(parse_endpoint_url("h:5000").is_err());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(Registries::parse("mirrors: [1]").is_err());
        assert!(Registries::parse("unknown: {}").is_err());
        let err = Registries::parse("mirrors: {docker.io: {rewrite: {\"(\": x}}}")
            .expect_err("bad regex");
        assert!(err.contains("rewrite"), "{err}");
        assert_eq!(Registries::parse("").expect("empty"), Registries::default());
    }

    #[test]
    fn missing_file_is_fine_unless_required() {
        let path = Path::new("/nonexistent/registries.yaml");
        assert_eq!(
            Registries::load(path, false).expect("optional"),
            Registries::default()
        );
        assert!(Registries::load(path, true).is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let registries = Registries::parse(EXAMPLE).expect("parse");
        let text = format!("{registries:?}");
        assert!(
            !text.contains("secret") && !text.contains("dXNlcjI6cGFzczI="),
            "{text}"
        );
    }
}

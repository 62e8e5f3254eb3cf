//! Authentication: who is calling. Turns a verified TLS client certificate or a bearer token
//! into a [`UserInfo`]; deciding what that user may do is authz's job.
//!
//! Sources, in the order the API server should try them (as kube-apiserver):
//! 1. the client certificate rustls verified against the cluster CA ([`peer_user`]):
//!    `CN` is the user name, each `O` a group;
//! 2. a bearer token from the static token file ([`TokenAuthenticator`], kube-apiserver's
//!    `--token-auth-file` CSV format);
//! 3. otherwise the request is anonymous ([`UserInfo::anonymous`]).
//!
//! Every authenticated user also gets the group `system:authenticated`.
//!
//! # Caveats
//! - [`user_from_client_cert`] does not verify anything: it must only see certificates the TLS
//!   layer already verified (that is what [`peer_user`] reads).
//! - Token comparison is constant-time in the token's contents; the time taken depends only on
//!   the presented token's length and the number of tokens in the file.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Group every authenticated user belongs to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// User name of requests without credentials.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Group of requests without credentials.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// Errors of loading authenticator configuration. Not retryable: the file needs fixing.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The token file could not be read.
    #[error("read token file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of the token file is malformed.
    #[error("token file {path} line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// An authenticated (or anonymous) caller, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl UserInfo {
    /// The caller without credentials: `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS_USER.to_owned(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
            uid: None,
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    fn with_authenticated_group(mut self) -> Self {
        if !self.in_group(AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        self
    }
}

/// The user named by a (TLS-verified) client certificate: `CN` is the name, every `O` a group,
/// plus `system:authenticated`. `None` if the DER does not parse or has no usable `CN`.
pub fn user_from_client_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    Some(
        UserInfo {
            name: name.to_owned(),
            groups,
            uid: None,
        }
        .with_authenticated_group(),
    )
}

/// The user of an accepted TLS connection's client certificate, if the client sent one (rustls
/// has verified it against the CA by the time the handshake completes).
pub fn peer_user(conn: &rustls::ServerConnection) -> Option<UserInfo> {
    let cert = conn.peer_certificates()?.first()?;
    user_from_client_cert(cert.as_ref())
}

/// The token of an `Authorization: Bearer <token>` header value; the scheme is
/// case-insensitive, as kube-apiserver's.
pub fn bearer_token(authorization_header: &str) -> Option<&str> {
    let value = authorization_header.trim();
    let (scheme, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.split_ascii_whitespace().next()?;
    Some(token)
}

/// Static bearer tokens from kube-apiserver's `--token-auth-file` CSV format:
/// `token,user,uid[,"group1,group2"]`.
///
/// Blank lines and lines starting with `#` are skipped. A line with an empty token is skipped
/// with a warning (as kube-apiserver); a duplicate token replaces the earlier one.
#[derive(Default)]
pub struct TokenAuthenticator {
    entries: Vec<(Vec<u8>, UserInfo)>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: show only how many there are.
        f.debug_struct("TokenAuthenticator")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

impl TokenAuthenticator {
    /// An authenticator that knows no token.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, AuthnError> {
        let text = fs::read_to_string(path).map_err(|source| AuthnError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses token file contents; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthnError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<(Vec<u8>, UserInfo)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let err = |reason: String| AuthnError::Parse {
                path: path.to_path_buf(),
                line: line_no,
                reason,
            };
            let fields = split_csv_line(line).map_err(err)?;
            if fields.len() < 3 {
                return Err(err(format!(
                    "want at least 3 columns (token, user name, user uid), found {}",
                    fields.len()
                )));
            }
            let token = fields[0].trim();
            if token.is_empty() {
                tracing::warn!(path = %path.display(), line = line_no, "empty token in token file, skipping");
                continue;
            }
            let name = fields[1].trim();
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            let uid = Some(fields[2].trim())
                .filter(|u| !u.is_empty())
                .map(str::to_owned);
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let user = UserInfo {
                name: name.to_owned(),
                groups,
                uid,
            }
            .with_authenticated_group();
            if !seen.insert(token.to_owned()) {
                tracing::warn!(path = %path.display(), line = line_no, "duplicate token in token file, the later line wins");
                entries.retain(|(t, _)| t.as_slice() != token.as_bytes());
            }
            entries.push((token.as_bytes().to_vec(), user));
        }
        Ok(TokenAuthenticator { entries })
    }

    /// Number of tokens known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The user a bearer token belongs to. Every known token is compared, in constant time.
    pub fn authenticate(&self, bearer: &str) -> Option<UserInfo> {
        if bearer.is_empty() {
            return None;
        }
        let mut found = None;
        for (token, user) in &self.entries {
            if constant_time_eq(bearer.as_bytes(), token) && found.is_none() {
                found = Some(user);
            }
        }
        found.cloned()
    }
}

/// Compares `presented` with `stored` without an early exit. The loop runs over the presented
/// bytes only, so the time taken does not reveal the stored token's contents or length.
fn constant_time_eq(presented: &[u8], stored: &[u8]) -> bool {
    if stored.is_empty() {
        return false;
    }
    let mut diff = u8::from(presented.len() != stored.len());
    for (i, byte) in presented.iter().enumerate() {
        diff |= byte ^ stored[i % stored.len()];
    }
    std::hint::black_box(diff) == 0
}

/// Splits one CSV record (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    match chars.peek() {
                        None | Some(',') => {}
                        Some(other) => {
                            return Err(format!(
                                "unexpected {other:?} after closing quote in column {}",
                                fields.len() + 1
                            ))
                        }
                    }
                }
                _ => field.push(c),
            }
        } else {
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '"' if field.is_empty() && !was_quoted => {
                    in_quotes = true;
                    was_quoted = true;
                }
                '"' => {
                    return Err(format!(
                        "bare quote in unquoted column {}",
                        fields.len() + 1
                    ))
                }
                _ => field.push(c),
            }
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in column {}", fields.len() + 1));
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenAuthenticator, AuthnError> {
        TokenAuthenticator::parse(text, Path::new("/etc/cluster/tokens.csv"))
    }

    #[test]
    fn token_file_parses_quotes_groups_and_uids() -> Result<(), AuthnError> {
        let auth = parse(
            "\u{feff}# static tokens\n\
             secret1,alice,uid-1,\"dev,ops\"\n\
             \n\
             secret2,bob,,\n\
             secret3,carol,uid-3\r\n\
             \"sec,\"\"ret4\",dave,uid-4,admins\n",
        )?;
        assert_eq!(auth.len(), 4);
        let alice = auth.authenticate("secret1").expect("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid.as_deref(), Some("uid-1"));
        assert_eq!(alice.groups, ["dev", "ops", AUTHENTICATED_GROUP]);
        let bob = auth.authenticate("secret2").expect("bob");
        assert_eq!(bob.uid, None);
        assert_eq!(bob.groups, [AUTHENTICATED_GROUP]);
        let carol = auth.authenticate("secret3").expect("carol");
        assert_eq!(carol.uid.as_deref(), Some("uid-3"));
        let dave = auth.authenticate("sec,\"ret4").expect("dave");
        assert_eq!(dave.groups, ["admins", AUTHENTICATED_GROUP]);
        assert_eq!(auth.authenticate("secret"), None);
        assert_eq!(auth.authenticate("secret11"), None);
        assert_eq!(auth.authenticate(""), None);
        Ok(())
    }

    #[test]
    fn token_file_bad_lines_name_file_and_line() {
        for (text, line, needle) in [
            ("a,b,c\nonly,two\n", 2, "at least 3 columns"),
            ("a,b,c\n\n\"open,user,uid\n", 3, "unterminated quote"),
            ("tok,,uid\n", 1, "empty user name"),
            ("tok,\"u\"x,uid\n", 1, "after closing quote"),
            ("tok,u\"x,uid\n", 1, "bare quote"),
        ] {
            let err = parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(
                matches!(err, AuthnError::Parse { line: l, .. } if l == line),
                "{text:?}: {msg}"
            );
            assert!(msg.contains("/etc/cluster/tokens.csv"), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn token_file_skips_empty_tokens_and_last_duplicate_wins() -> Result<(), AuthnError> {
        let auth = parse(",nobody,uid\ntok,first,1\ntok,second,2\n")?;
        assert_eq!(auth.len(), 1);
        assert_eq!(
            auth.authenticate("tok").map(|u| u.name).as_deref(),
            Some("second")
        );
        Ok(())
    }

    #[test]
    fn token_file_missing_names_path() {
        let err = TokenAuthenticator::load(Path::new("/nonexistent/tokens.csv"))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/tokens.csv"), "{err}");
    }

    #[test]
    fn empty_authenticator_knows_nobody() {
        assert!(TokenAuthenticator::empty().authenticate("x").is_none());
        assert!(TokenAuthenticator::empty().is_empty());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  bearer   abc  "), Some("abc"));
        assert_eq!(bearer_token("BEARER abc def"), Some("abc"));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn constant_time_eq_matches_only_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn garbage_der_is_no_user() {
        assert_eq!(user_from_client_cert(b"not a certificate"), None);
    }

    #[test]
    fn anonymous_user() {
        let anon = UserInfo::anonymous();
        assert_eq!(anon.name, ANONYMOUS_USER);
        assert!(anon.in_group(UNAUTHENTICATED_GROUP));
        assert!(!anon.in_group(AUTHENTICATED_GROUP));
    }
}

//! Registry auth as clients of Docker Hub, ghcr.io and distribution practise it:
//! `WWW-Authenticate` challenges, bearer tokens from the realm, cached per scope until expiry.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::public::Guard;
use super::upstream::{body_at_most, BodyError};
use crate::config::Secret;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String>, error: Option<String> },
    Basic,
}

/// Parses a `WWW-Authenticate` value such as
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a:pull"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
        error: get("error"),
    })
}

/// `k=v, k="quoted, with commas"` pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.push((key.trim().to_owned(), val));
    }
}

/// Token responses larger than this are refused (real ones are a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 64 * 1024;

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Tokens cached at once (the least recently used go first) and the longest a token is kept,
/// whatever its `expires_in` says: scopes come from client requests (one per repository).
const MAX_TOKENS: u64 = 4096;
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

/// Bearer tokens per scope, each until shortly before it expires; bounded in number and life.
pub(crate) struct TokenCache {
    tokens: moka::sync::Cache<String, (String, Instant)>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            tokens: moka::sync::Cache::builder()
                .max_capacity(MAX_TOKENS)
                .time_to_live(MAX_TOKEN_LIFE)
                .build(),
        }
    }
}

impl TokenCache {
    pub(crate) fn get(&self, scope: &str) -> Option<String> {
        self.tokens.get(scope).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t)
    }

    pub(crate) fn forget(&self, scope: &str) {
        self.tokens.invalidate(scope);
    }

    fn put(&self, scope: &str, token: String, expires_in: Duration) {
        // Renew a little early so a token does not expire between check and use.
        let life = expires_in.min(MAX_TOKEN_LIFE).saturating_sub(Duration::from_secs(10));
        self.tokens.insert(scope.to_owned(), (token, Instant::now() + life));
    }

    /// Asks the challenge's realm for a token for `scope` and caches it.
    pub(crate) async fn fetch(
        &self,
        client: &reqwest::Client,
        guard: Option<&Guard>,
        challenge: &Challenge,
        scope: &str,
        creds: Option<&(String, Secret)>,
    ) -> Result<String, Error> {
        let Challenge::Bearer { realm, service, scope: asked, .. } = challenge else {
            return Err(Error::Internal("not a bearer challenge".into()));
        };
        let mut url = url::Url::parse(realm)
            .map_err(|e| Error::Unavailable(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", asked.as_deref().unwrap_or(scope));
        }
        if let Some(guard) = guard {
            guard.check_url(&url).map_err(|e| Error::Denied(format!("token realm: {e}")))?;
        }
        let mut req = client.get(url);
        if let Some((user, pass)) = creds {
            req = req.basic_auth(user, Some(pass.expose()));
        }
        let resp = req.send().await.map_err(|e| Error::Unavailable(format!("token request: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::UpstreamDenied(format!("token service answered {status}")));
        }
        if !status.is_success() {
            return Err(Error::Unavailable(format!("token service answered {status}")));
        }
        let body = body_at_most(resp, MAX_TOKEN_RESPONSE, "token service").await.map_err(|e| match e {
            BodyError::TooLarge(n) => Error::Unavailable(format!("token response of over {n} bytes")),
            BodyError::Failed(e) => e,
        })?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::Unavailable(format!("token response: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| Error::Unavailable("token response has no token".into()))?;
        let expires_in =
            Duration::from_secs(body.expires_in.unwrap_or(60).clamp(60, MAX_TOKEN_LIFE.as_secs()));
        self.put(scope, token.clone(), expires_in);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push",error="invalid_token""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
                error: Some("invalid_token".into()),
            }
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }
}

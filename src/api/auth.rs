//! Client authentication on the registry API, when `[auth]` is configured: HTTP Basic
//! against an htpasswd file (bcrypt entries, as distribution takes) or a static bearer
//! token (`api::caller` asks it, after the peer token). Both files are read again on reload
//! (SIGHUP).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use http::{header, HeaderMap};

use crate::error::Error;
use crate::oci::digest::Digest;
use crate::secret::Secret;

#[derive(Default)]
struct Credentials {
    /// user → bcrypt hash
    users: HashMap<String, String>,
    tokens: Vec<Secret>,
}

pub(crate) struct ClientAuth {
    htpasswd: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    current: RwLock<Arc<Credentials>>,
    /// Basic credentials already checked against their bcrypt hash (bcrypt is slow on
    /// purpose; a pull sends the same header dozens of times), keyed by a hash of both.
    verified: moka::sync::Cache<Digest, ()>,
    /// Turns for bcrypt checks of credentials not verified yet, so that a flood of wrong
    /// passwords costs at most this many blocking threads.
    bcrypt_turns: tokio::sync::Semaphore,
}

/// bcrypt checks at once, and how long a check waits for a turn before it is refused.
const BCRYPT_TURNS: usize = 2;
const BCRYPT_WAIT: Duration = Duration::from_secs(2);

impl ClientAuth {
    pub(crate) fn load(
        htpasswd: Option<&Path>,
        tokens_file: Option<&Path>,
    ) -> Result<Arc<ClientAuth>, Error> {
        let auth = ClientAuth {
            htpasswd: htpasswd.map(Path::to_owned),
            tokens_file: tokens_file.map(Path::to_owned),
            current: RwLock::new(Arc::default()),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            bcrypt_turns: tokio::sync::Semaphore::new(BCRYPT_TURNS),
        };
        auth.reload()?;
        Ok(Arc::new(auth))
    }

    /// Reads both files again; on error the credentials in use stay.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let mut creds = Credentials::default();
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::fault(p.display().to_string(), e));
        if let Some(path) = &self.htpasswd {
            for (n, line) in read(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let (user, hash) = line
                    .trim()
                    .split_once(':')
                    .filter(|(u, h)| !u.is_empty() && h.starts_with("$2"))
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "{} line {}: expected user:<bcrypt hash>",
                            path.display(),
                            n + 1
                        ))
                    })?;
                creds.users.insert(user.to_owned(), hash.to_owned());
            }
        }
        if let Some(path) = &self.tokens_file {
            creds.tokens =
                read(path)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(Secret::new).collect();
        }
        if creds.users.is_empty() && creds.tokens.is_empty() {
            return Err(Error::Internal("[auth]: no users and no tokens: nobody could pull".into()));
        }
        *self.current.write().expect("auth lock") = Arc::new(creds);
        self.verified.invalidate_all();
        Ok(())
    }

    /// Whether the request's Authorization header names a known user or token.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<(), Error> {
        let creds = self.current.read().expect("auth lock").clone();
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let refused = || Error::Unauthorized("authentication required".into());
        if let Some(token) = presented.strip_prefix("Bearer ") {
            return match creds.tokens.iter().any(|t| t.matches(token.trim().as_bytes())) {
                true => Ok(()),
                false => Err(refused()),
            };
        }
        let Some(encoded) = presented.strip_prefix("Basic ") else { return Err(refused()) };
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| refused())?;
        let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
        let (user, password) = decoded.split_once(':').ok_or_else(refused)?;
        let hash = creds.users.get(user).ok_or_else(refused)?.clone();
        let key = Digest::of(format!("{user}\n{password}\n{hash}").as_bytes());
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        let _turn = tokio::time::timeout(BCRYPT_WAIT, self.bcrypt_turns.acquire())
            .await
            .map_err(|_| Error::TooManyRequests { retry_after: Some("1".into()) })?
            .map_err(Error::internal)?;
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(Error::internal)?;
        if !ok {
            return Err(refused());
        }
        self.verified.insert(key, ());
        Ok(())
    }
}

/// Why an htpasswd line could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("a user name is not empty and has no ':'")]
    User,
    #[error(transparent)]
    Hash(#[from] bcrypt::BcryptError),
}

/// An htpasswd line for `user` with `password` (bcrypt, the default cost).
pub fn htpasswd_line(user: &str, password: &str) -> Result<String, HtpasswdError> {
    if user.is_empty() || user.contains(':') {
        return Err(HtpasswdError::User);
    }
    let hash = bcrypt::hash(password, bcrypt::DEFAULT_COST)?;
    Ok(format!("{user}:{hash}"))
}

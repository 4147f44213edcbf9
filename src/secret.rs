//! Credentials and tokens: a type that never prints its value.

/// A credential: never printed, not even by `Debug`.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether `presented` is this secret, compared in constant time.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        mine.len() == presented.len()
            && mine.iter().zip(presented).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from. mirror.toml names a file (`<key>_file`) or an environment
/// variable (`<key>_env`); `check::load` reads it, once, and the configuration a server starts
/// with holds only `Value`s, none empty (the config pass reads no secret).
#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    /// The secret itself: what `check::load` leaves, or what code gives.
    Value(Secret),
    File(std::path::PathBuf),
    Env(String),
}

impl From<Secret> for SecretSource {
    fn from(s: Secret) -> Self {
        SecretSource::Value(s)
    }
}

impl SecretSource {
    /// Reads the secret: a file's contents or a variable's value, through `trim`, and not
    /// empty once trimmed. The error names the file or the variable, never the value.
    pub(crate) fn read(&self, trim: fn(&str) -> &str) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Value(s) => s.expose().to_owned(),
            SecretSource::File(f) => {
                std::fs::read_to_string(f).map_err(|e| format!("file {}: {e}", f.display()))?
            }
            SecretSource::Env(var) => std::env::var(var).map_err(|_| format!("variable {var} is not set"))?,
        };
        match trim(&value) {
            "" => Err(match self {
                SecretSource::File(f) => format!("file {} is empty", f.display()),
                SecretSource::Env(var) => format!("variable {var} is empty"),
                SecretSource::Value(_) => "the value given is empty".to_owned(),
            }),
            v => Ok(Secret::new(v)),
        }
    }

    /// The secret `check::load` read. A server starts only from a loaded configuration, so
    /// anything else is a bug, not a missing secret: it never starts without it.
    pub(crate) fn loaded(&self) -> &Secret {
        match self {
            SecretSource::Value(s) => s,
            _ => panic!("a secret used before check::load read it"),
        }
    }
}

//! Which tokens a service accepts: algorithm, key, issuer, audience, leeway.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use service_runtime::config::{self, ConfigError};

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output, and 32 bytes is that for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

const DEFAULT_LEEWAY_SECS: u64 = 5;

const ALGORITHM_NAMES: [(&str, Algorithm); 12] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("EdDSA", Algorithm::EdDSA),
];

/// The name of `algorithm` as it appears in a JWS header `alg`.
pub(crate) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    ALGORITHM_NAMES
        .iter()
        .find(|(_, known)| *known == algorithm)
        .map_or("unknown", |(name, _)| name)
}

/// What the services need to verify bearer tokens.
///
/// Built from the environment by [`AuthConfig::from_env`], or directly by
/// [`AuthConfig::hs256`], [`AuthConfig::hmac`] and
/// [`AuthConfig::public_key_pem`]. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct AuthConfig {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: VerificationKey,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway: Duration,
}

#[derive(Clone)]
pub(crate) enum VerificationKey {
    /// HS*: the same bytes sign and verify.
    Shared(Vec<u8>),
    /// Asymmetric: only the public half, parsed once at start-up.
    Public(DecodingKey),
}

/// A configuration that cannot verify tokens safely.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A variable is missing or does not parse (`JWT_ISSUER`,
    /// `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`, `JWT_ALGORITHM`, `JWT_PUBLIC_KEY_FILE`).
    #[error(transparent)]
    Env(#[from] ConfigError),
    /// An HMAC algorithm without `JWT_SECRET` or `JWT_SECRET_FILE`.
    #[error("{algorithm:?} needs a shared secret: set JWT_SECRET or JWT_SECRET_FILE")]
    MissingSecret {
        /// The configured algorithm.
        algorithm: Algorithm,
    },
    /// Both `JWT_SECRET` and `JWT_SECRET_FILE` are set.
    #[error("set only one of JWT_SECRET and JWT_SECRET_FILE")]
    ConflictingSecrets,
    /// The HMAC secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("the JWT secret is {len} bytes long; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort {
        /// Length of the rejected secret.
        len: usize,
    },
    /// A key variable that the algorithm does not use is set, which usually
    /// means the algorithm is not the one the operator meant.
    #[error("{name} is set but {algorithm:?} does not use it")]
    KeyNotForAlgorithm {
        /// The variable, or `"secret"`/`"public key"` for the constructors.
        name: &'static str,
        /// The configured algorithm.
        algorithm: Algorithm,
    },
    /// A key file cannot be read.
    #[error("cannot read {name}={path:?}: {source}")]
    ReadKeyFile {
        /// The variable that names the file.
        name: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The PEM holds a private key. Services only verify, so they must only
    /// ever be given the public half.
    #[error("the {algorithm:?} key is a private key; services take only the public key")]
    PrivateKey {
        /// The configured algorithm.
        algorithm: Algorithm,
    },
    /// The PEM is not a public key of the algorithm's family.
    #[error("the {algorithm:?} public key is not usable: {reason}")]
    InvalidPublicKey {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// The parser's complaint.
        reason: String,
    },
}

/// For a service's `Config::from_env`, whose one error is [`ConfigError`]:
/// each problem of [`AuthConfig::from_env`] names the variable to fix.
impl From<AuthConfigError> for ConfigError {
    fn from(error: AuthConfigError) -> Self {
        // Every message names variables, lengths and paths, never a secret.
        let reason = error.to_string();
        let name = match error {
            AuthConfigError::Env(error) => return error,
            AuthConfigError::MissingSecret { .. }
            | AuthConfigError::ConflictingSecrets
            | AuthConfigError::SecretTooShort { .. } => "JWT_SECRET",
            AuthConfigError::KeyNotForAlgorithm { name, .. }
            | AuthConfigError::ReadKeyFile { name, .. } => name,
            AuthConfigError::PrivateKey { .. } | AuthConfigError::InvalidPublicKey { .. } => {
                "JWT_PUBLIC_KEY_FILE"
            }
        };
        ConfigError::Unusable { name, reason }
    }
}

impl AuthConfig {
    /// Reads the configuration from the environment:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `JWT_ALGORITHM` | the one accepted `alg`; default `HS256`; one of HS256 HS384 HS512 RS256 RS384 RS512 ES256 ES384 PS256 PS384 PS512 EdDSA |
    /// | `JWT_SECRET` | HS* only: the shared secret, at least 32 bytes |
    /// | `JWT_SECRET_FILE` | HS* only: file holding the secret (one trailing newline is dropped); exactly one of the two |
    /// | `JWT_PUBLIC_KEY_FILE` | RS*/PS*/ES*/EdDSA only: PEM public key (SPKI, or PKCS#1 for RSA) |
    /// | `JWT_ISSUER` | required `iss` |
    /// | `JWT_AUDIENCE` | required member of `aud` |
    /// | `JWT_LEEWAY_SECS` | clock skew allowed on `exp`/`nbf`; default 5 |
    ///
    /// An empty `JWT_SECRET` or `JWT_SECRET_FILE` counts as unset, so compose
    /// files can pass `${JWT_SECRET:-}` through.
    pub fn from_env() -> Result<Self, AuthConfigError> {
        let algorithm_value: String = config::optional("JWT_ALGORITHM", "HS256".to_owned())?;
        let algorithm = parse_algorithm(&algorithm_value).ok_or(ConfigError::Invalid {
            name: "JWT_ALGORITHM",
            value: algorithm_value,
            reason: format!(
                "expected one of {}",
                ALGORITHM_NAMES.map(|(name, _)| name).join(", ")
            ),
        })?;
        let issuer = non_empty("JWT_ISSUER")?;
        let audience = non_empty("JWT_AUDIENCE")?;
        let leeway = Duration::from_secs(config::optional("JWT_LEEWAY_SECS", DEFAULT_LEEWAY_SECS)?);

        // Read raw bytes: the secret must not go through `ConfigError`,
        // whose message would include the value.
        let secret = env_non_empty("JWT_SECRET").map(|v| v.into_encoded_bytes());
        let secret_file = env_non_empty("JWT_SECRET_FILE").map(PathBuf::from);
        let public_key_file = env_non_empty("JWT_PUBLIC_KEY_FILE").map(PathBuf::from);

        let key = if is_hmac(algorithm) {
            if public_key_file.is_some() {
                return Err(AuthConfigError::KeyNotForAlgorithm {
                    name: "JWT_PUBLIC_KEY_FILE",
                    algorithm,
                });
            }
            let secret = match (secret, secret_file) {
                (Some(_), Some(_)) => return Err(AuthConfigError::ConflictingSecrets),
                (None, None) => return Err(AuthConfigError::MissingSecret { algorithm }),
                (Some(secret), None) => secret,
                (None, Some(path)) => {
                    let mut secret = read_key_file("JWT_SECRET_FILE", path)?;
                    // Editors and `echo` end files with a newline that is not part of the secret.
                    if secret.last() == Some(&b'\n') {
                        secret.pop();
                        if secret.last() == Some(&b'\r') {
                            secret.pop();
                        }
                    }
                    secret
                }
            };
            shared_key(secret)?
        } else {
            let name = if secret.is_some() {
                Some("JWT_SECRET")
            } else if secret_file.is_some() {
                Some("JWT_SECRET_FILE")
            } else {
                None
            };
            if let Some(name) = name {
                return Err(AuthConfigError::KeyNotForAlgorithm { name, algorithm });
            }
            let path = public_key_file.ok_or(ConfigError::Missing {
                name: "JWT_PUBLIC_KEY_FILE",
            })?;
            public_key(algorithm, &read_key_file("JWT_PUBLIC_KEY_FILE", path)?)?
        };

        Ok(Self {
            algorithm,
            key,
            issuer,
            audience,
            leeway,
        })
    }

    /// HS256 with `secret` (at least [`MIN_SECRET_BYTES`]), for tests and
    /// programs that do not read the environment. Leeway is 5 s.
    pub fn hs256(
        secret: impl Into<Vec<u8>>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AuthConfigError> {
        Self::hmac(Algorithm::HS256, secret, issuer, audience)
    }

    /// Like [`AuthConfig::hs256`] for any of HS256, HS384 and HS512.
    pub fn hmac(
        algorithm: Algorithm,
        secret: impl Into<Vec<u8>>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AuthConfigError> {
        if !is_hmac(algorithm) {
            return Err(AuthConfigError::KeyNotForAlgorithm {
                name: "secret",
                algorithm,
            });
        }
        Ok(Self {
            algorithm,
            key: shared_key(secret.into())?,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(DEFAULT_LEEWAY_SECS),
        })
    }

    /// An asymmetric algorithm verified with the PEM public key `pem`.
    pub fn public_key_pem(
        algorithm: Algorithm,
        pem: &[u8],
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AuthConfigError> {
        if is_hmac(algorithm) {
            return Err(AuthConfigError::KeyNotForAlgorithm {
                name: "public key",
                algorithm,
            });
        }
        Ok(Self {
            algorithm,
            key: public_key(algorithm, pem)?,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(DEFAULT_LEEWAY_SECS),
        })
    }

    /// Replaces the clock-skew allowance on `exp` and `nbf` (whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            VerificationKey::Shared(_) => "shared secret (redacted)",
            VerificationKey::Public(_) => "public key",
        };
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("key", &key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

pub(crate) fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

fn parse_algorithm(value: &str) -> Option<Algorithm> {
    ALGORITHM_NAMES
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, algorithm)| *algorithm)
}

fn non_empty(name: &'static str) -> Result<String, ConfigError> {
    let value: String = config::required(name)?;
    if value.is_empty() {
        return Err(ConfigError::Invalid {
            name,
            value,
            reason: "must not be empty".to_owned(),
        });
    }
    Ok(value)
}

fn env_non_empty(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn read_key_file(name: &'static str, path: PathBuf) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(&path).map_err(|source| AuthConfigError::ReadKeyFile { name, path, source })
}

fn shared_key(secret: Vec<u8>) -> Result<VerificationKey, AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::SecretTooShort { len: secret.len() });
    }
    Ok(VerificationKey::Shared(secret))
}

fn public_key(algorithm: Algorithm, pem: &[u8]) -> Result<VerificationKey, AuthConfigError> {
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|window| window == b"PRIVATE KEY")
    {
        return Err(AuthConfigError::PrivateKey { algorithm });
    }
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    };
    key.map(VerificationKey::Public)
        .map_err(|e| AuthConfigError::InvalidPublicKey {
            algorithm,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_to_config_errors_naming_the_variable() {
        let short = AuthConfig::hs256("a secret", "i", "a").expect_err("too short");
        let converted = ConfigError::from(short);
        assert!(
            matches!(
                converted,
                ConfigError::Unusable {
                    name: "JWT_SECRET",
                    ..
                }
            ),
            "{converted:?}"
        );
        assert_eq!(
            converted.to_string(),
            "environment variable JWT_SECRET: the JWT secret is 8 bytes long; at least 32 are \
             required"
        );
        let env = AuthConfigError::Env(ConfigError::Missing { name: "JWT_ISSUER" });
        assert!(matches!(
            ConfigError::from(env),
            ConfigError::Missing { name: "JWT_ISSUER" }
        ));
    }
}

//! Access tokens: HS256 JWTs with `sub`, `username`, `iat`, `exp` and `jti`.
//!
//! The algorithm is pinned: `Validation::new(HS256)` rejects a token whose header
//! names any other algorithm, including `none`, so a forged header cannot pick a
//! weaker check. Expiry is enforced with no leeway: pods share a clock source.

use crate::wire::errors::{ErrorCode, WireError};
use std::io;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::model::{Id, User};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Id,
    pub username: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, so a token can be told apart in logs and revoked by id later.
    pub jti: String,
}

impl Claims {
    pub fn author(&self) -> crate::model::Author {
        crate::model::Author {
            id: self.sub,
            username: self.username.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

impl From<TokenError> for WireError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Expired => Self::new(
                ErrorCode::TokenExpired,
                "the token has expired; refresh it or sign in again",
            ),
            TokenError::Invalid => Self::new(ErrorCode::InvalidToken, "the token is invalid"),
        }
    }
}

/// An access token and how long it lives, as returned to clients.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user: &User) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.id,
            username: user.username.clone(),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: Id::new().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken {
            token,
            expires_in: self.ttl.as_secs(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// The embedded mode's signing key: read from `dir/jwt_secret`, or generated on
/// first start and written there (owner-only), so tokens survive a restart.
pub fn load_or_create_secret(dir: &Path) -> io::Result<Vec<u8>> {
    let path = dir.join("jwt_secret");
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing.trim().len() >= crate::config::MIN_JWT_SECRET_LEN => {
            return Ok(existing.trim().as_bytes().to_vec());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is too short", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, secret.as_bytes())?;
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn user() -> User {
        User {
            id: Id::new(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            password_hash: String::new(),
            display_name: None,
            avatar_url: None,
            avatar_color: None,
            created_at: crate::model::now(),
            last_seen_at: None,
            blocked: Vec::new(),
        }
    }

    #[test]
    fn issues_tokens_it_then_accepts() {
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(900));
        let user = user();
        let issued = issuer.issue(&user).unwrap();
        assert_eq!(issued.expires_in, 900);
        let claims = issuer.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, user.id);
        assert_eq!(claims.username, "alice");
        assert_eq!(claims.exp - claims.iat, 900);
        assert_ne!(
            claims.jti,
            issuer
                .verify(&issuer.issue(&user).unwrap().token)
                .unwrap()
                .jti
        );
    }

    #[test]
    fn rejects_a_token_signed_with_another_key() {
        let token = TokenIssuer::new(SECRET, Duration::from_secs(60))
            .issue(&user())
            .unwrap()
            .token;
        let other = TokenIssuer::new(
            b"another-key-another-key-another-key",
            Duration::from_secs(60),
        );
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn rejects_an_expired_token() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: Id::new(),
            username: "a".into(),
            iat: now - 120,
            exp: now - 1,
            jti: "j".into(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(60));
        assert_eq!(issuer.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn rejects_other_algorithms_and_alg_none() {
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(60));
        let good = issuer.issue(&user()).unwrap().token;
        let payload = good.split('.').nth(1).unwrap();
        // alg none with an empty signature: the classic forgery.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            issuer.verify(&format!("{none_header}.{payload}.")),
            Err(TokenError::Invalid)
        );
        // HS512 signed with the right key is still refused: the algorithm is pinned.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &issuer.verify(&good).unwrap(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(issuer.verify(&hs512), Err(TokenError::Invalid));
        for garbage in ["", "abc", "a.b.c", "{\"$gt\":\"\"}"] {
            assert_eq!(issuer.verify(garbage), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn embedded_secret_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path()).unwrap();
        assert!(first.len() >= crate::config::MIN_JWT_SECRET_LEN);
        assert_eq!(load_or_create_secret(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the key file must not be readable by others"
            );
        }
    }
}

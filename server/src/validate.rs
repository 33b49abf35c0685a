//! The rules for user input, as pure functions returning the cleaned value or
//! an [`Invalid`] naming the field. Handlers call these before any I/O; an
//! `Invalid` is answered as `validation_failed` (422).

/// Input that breaks a rule: which field, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The same rule broken by another field (a new password is a password).
    pub fn for_field(self, field: &'static str) -> Self {
        Self { field, ..self }
    }
}

impl From<Invalid> for crate::wire::errors::WireError {
    fn from(invalid: Invalid) -> Self {
        Self::validation(invalid.field, invalid.message)
    }
}

pub const PASSWORD_MIN_CHARS: usize = 8;
/// argon2 accepts any length, but hashing megabytes on request is a DoS lever.
pub const PASSWORD_MAX_BYTES: usize = 1024;

pub fn username(raw: &str) -> Result<String, Invalid> {
    let ok = (3..=32).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(Invalid::new(
            "username",
            "username must be 3 to 32 characters of letters, digits, _ . or -",
        ));
    }
    Ok(raw.to_owned())
}

/// A practical check, not RFC 5322: one `@`, a non-empty local part, a dotted
/// domain, no spaces or control characters. Returned trimmed and lower-cased,
/// the form stored and looked up, so `Alice@Example.com` is one account.
pub fn email(raw: &str) -> Result<String, Invalid> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Invalid::new(
            "email",
            "email must be a valid address like name@example.com",
        ));
    }
    Ok(email)
}

pub fn password(raw: &str) -> Result<(), Invalid> {
    if raw.chars().count() < PASSWORD_MIN_CHARS {
        return Err(Invalid::new(
            "password",
            format!("password must be at least {PASSWORD_MIN_CHARS} characters"),
        ));
    }
    if raw.len() > PASSWORD_MAX_BYTES {
        return Err(Invalid::new(
            "password",
            format!("password must be at most {PASSWORD_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Trimmed single-line text of `min..=max` characters, without control characters.
pub fn text(field: &'static str, raw: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let value = raw.trim();
    let chars = value.chars().count();
    if chars < min || chars > max {
        let message = if min == 0 {
            format!("{field} must be at most {max} characters")
        } else {
            format!("{field} must be {min} to {max} characters")
        };
        return Err(Invalid::new(field, message));
    }
    if value
        .chars()
        .any(|c| c.is_control() || is_invisible_control(c))
    {
        return Err(Invalid::new(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Characters that change how the text around them looks without showing
/// themselves: bidirectional overrides, embeddings, isolates and marks (a
/// file named `invoice\u{202e}fdp.exe` shows as `invoiceexe.pdf`), and
/// zero-width spaces. Not in names, file names or reactions; messages may
/// carry them (right-to-left writing uses marks), shown as text.
pub fn is_invisible_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// An absolute http(s) URL of at most 2048 bytes; anything else (javascript:,
/// data:, relative paths) could run or leak in a client that renders it.
pub fn avatar_url(raw: &str) -> Result<String, Invalid> {
    let invalid = || Invalid::new("avatar_url", "avatar_url must be an http or https URL");
    let value = raw.trim();
    if value.len() > 2048 {
        return Err(invalid());
    }
    let url = url::Url::parse(value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(url.to_string())
}

/// A colour as `#rrggbb` (any case in, lowercase out).
pub fn color(raw: &str) -> Result<String, Invalid> {
    let value = raw.trim();
    let hex = value.strip_prefix('#').unwrap_or_default();
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::new(
            "avatar_color",
            "avatar_color must be a colour like #3a7bd5",
        ));
    }
    Ok(value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<impl std::fmt::Debug, Invalid>) -> String {
        let error = result.unwrap_err();
        format!("{}: {}", error.field, error.message)
    }

    #[test]
    fn usernames() {
        for good in ["bob", "alice_1", "a.b-c", &"x".repeat(32)] {
            assert_eq!(username(good).unwrap(), good);
        }
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "has space",
            "émile",
            "a/b",
            "{\"$gt\":\"\"}",
            "a\0b",
        ] {
            assert!(
                field(username(bad)).contains("username"),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a@b@c.com",
            "a b@c.com",
            "a@.com",
            "a@c..com",
        ] {
            assert!(field(email(bad)).contains("email"), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("12345678").is_ok());
        assert!(
            password("pässwörd").is_ok(),
            "counted in characters, not bytes"
        );
        assert!(field(password("1234567")).contains("password"));
        assert!(field(password(&"x".repeat(PASSWORD_MAX_BYTES + 1))).contains("password"));
    }

    #[test]
    fn text_fields_are_trimmed_and_bounded() {
        assert_eq!(text("name", "  General  ", 1, 10).unwrap(), "General");
        assert!(field(text("name", "   ", 1, 10)).contains("name"));
        assert!(field(text("name", "eleven chars", 1, 10)).contains("name"));
        assert!(field(text("name", "bell\u{7}", 1, 10)).contains("control"));
        assert_eq!(text("description", "", 0, 10).unwrap(), "");
    }

    #[test]
    fn colours_are_six_hex_digits() {
        assert_eq!(color("#3A7BD5").unwrap(), "#3a7bd5");
        for bad in ["3a7bd5", "#3a7bd", "#3a7bd5ff", "red", "#gggggg", "url(x)"] {
            assert!(
                field(color(bad)).contains("avatar_color"),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn avatar_urls_must_be_http() {
        assert_eq!(
            avatar_url("https://cdn.example.com/a.png").unwrap(),
            "https://cdn.example.com/a.png"
        );
        for bad in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "/relative.png",
            "ftp://x/y",
            "not a url",
        ] {
            assert!(
                field(avatar_url(bad)).contains("avatar_url"),
                "{bad:?} accepted"
            );
        }
    }
}

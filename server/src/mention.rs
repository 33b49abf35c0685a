//! @mentions in message text: which usernames a message names, and whether
//! it calls the whole room (`@room`). Pure text, so it is unit tested here;
//! the chat resolves the names to members when a message is posted.

/// The most names one message may mention (more are ignored, not refused).
pub(crate) const MAX_MENTIONS: usize = 20;

/// What a message's text mentions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Mentioned {
    /// Usernames after an `@`, lower-cased, each once, in order.
    pub names: Vec<String>,
    /// `@room` (or `@here`, `@channel`, as other chats spell it).
    pub room: bool,
}

fn username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Finds `@name` where the `@` starts the text or follows a character that
/// cannot be in a username (so an e-mail address is not a mention), and the
/// name has the shape of a username (trailing `.` and `-` are punctuation).
pub(crate) fn mentioned(content: &str) -> Mentioned {
    let mut found = Mentioned::default();
    let mut previous: Option<char> = None;
    let mut chars = content.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let starts = c == '@' && previous.is_none_or(|p| !username_char(p));
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &content[at + 1..];
        let end = rest.find(|c: char| !username_char(c)).unwrap_or(rest.len());
        let name = rest[..end]
            .trim_end_matches(['.', '-'])
            .to_ascii_lowercase();
        match name.as_str() {
            "room" | "here" | "channel" => found.room = true,
            _ if (3..=32).contains(&name.len())
                && !found.names.contains(&name)
                && found.names.len() < MAX_MENTIONS =>
            {
                found.names.push(name)
            }
            _ => {}
        }
        while chars.peek().is_some_and(|(_, c)| username_char(*c)) {
            previous = chars.next().map(|(_, c)| c);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_the_room_and_nothing_in_addresses() {
        let found =
            mentioned("@Bob and @carol.smith: see @bob's note, mail alice@example.com. @room!");
        assert_eq!(found.names, ["bob", "carol.smith"]);
        assert!(found.room);
        let found = mentioned("thanks @dave. (@ed is too short) @@eve");
        assert_eq!(found.names, ["dave", "eve"]);
        assert!(!found.room);
        assert_eq!(mentioned("no mentions here"), Mentioned::default());
        let many: String = (0..30).map(|i| format!("@user{i} ")).collect();
        assert_eq!(mentioned(&many).names.len(), MAX_MENTIONS);
    }
}

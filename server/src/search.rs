//! Message search: a query's terms, how well a message's text matches them,
//! and the snippet shown with the matches marked. Pure, so ranking is unit
//! tested; the stores only find candidates (MongoDB's text index, or a scan).

/// Terms beyond this are ignored.
pub(crate) const MAX_TERMS: usize = 10;
/// Characters of context in a snippet.
const SNIPPET_CHARS: usize = 160;

/// The words of `query`, lower-cased, each once (at most [`MAX_TERMS`]).
pub(crate) fn terms(query: &str) -> Vec<String> {
    let mut terms = words(query);
    terms.truncate(MAX_TERMS);
    terms
}

/// The words of `text` a search can find, lower-cased, each once, in order:
/// runs of letters and digits of at least two characters. What a query's
/// terms are made of, and what the embedded store's index keeps.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
    {
        let word = word.to_lowercase();
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// Where each term starts a word of `text`: (char offset, char length).
fn matches(text: &str, terms: &[String]) -> Vec<Vec<(usize, usize)>> {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    // Lower-casing can change a text's length; offsets then approximate.
    let mut found = vec![Vec::new(); terms.len()];
    for (i, term) in terms.iter().enumerate() {
        let term: Vec<char> = term.chars().collect();
        for start in 0..chars.len() {
            let at_word_start = start == 0 || !chars[start - 1].is_alphanumeric();
            if at_word_start && chars[start..].starts_with(&term) {
                found[i].push((start, term.len()));
            }
        }
    }
    found
}

/// How well `text` matches every term (each at the start of a word): none
/// if a term is missing; more for repeated terms and for terms in the
/// query's order next to each other.
pub(crate) fn score(text: &str, terms: &[String]) -> Option<f64> {
    if terms.is_empty() {
        return None;
    }
    let found = matches(text, terms);
    if found.iter().any(Vec::is_empty) {
        return None;
    }
    let mut score: f64 = found.iter().map(|m| 1.0 + (m.len() as f64).ln()).sum();
    let lower = text.to_lowercase();
    if terms.len() > 1 && lower.contains(&terms.join(" ")) {
        score += 1.0;
    }
    // Short messages that match are more about the terms than long ones.
    score += 1.0 / (1.0 + (text.chars().count() as f64 / 200.0));
    Some(score)
}

/// A piece of a message around its first match, with the matches in it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, ts_rs::TS)]
pub struct Snippet {
    pub text: String,
    /// `[start, end)` char offsets in `text` of each match, in order.
    pub highlights: Vec<(usize, usize)>,
}

pub(crate) fn snippet(text: &str, terms: &[String]) -> Snippet {
    let chars: Vec<char> = text.chars().collect();
    let mut all: Vec<(usize, usize)> = matches(text, terms).into_iter().flatten().collect();
    all.sort_unstable();
    let first = all.first().map_or(0, |(start, _)| *start);
    let from = first.saturating_sub(SNIPPET_CHARS / 3);
    let to = (from + SNIPPET_CHARS).min(chars.len());
    let from = to.saturating_sub(SNIPPET_CHARS).min(from);
    let lead = if from > 0 { "…" } else { "" };
    let tail = if to < chars.len() { "…" } else { "" };
    let shift = lead.chars().count();
    let body: String = chars[from..to].iter().collect();
    let highlights = all
        .into_iter()
        .filter(|(start, len)| *start >= from && start + len <= to)
        .map(|(start, len)| (start - from + shift, start - from + shift + len))
        .collect();
    Snippet {
        text: format!("{lead}{body}{tail}"),
        highlights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_words_lower_cased_once() {
        assert_eq!(
            terms("Deploy the API, deploy! a 2 über"),
            ["deploy", "the", "api", "über"]
        );
        assert!(terms(" ? ").is_empty());
        assert_eq!(terms(&"w0 ".repeat(30)).len(), 1);
    }

    #[test]
    fn every_term_must_start_a_word_and_closer_matches_rank_higher() {
        let q = terms("deploy friday");
        assert_eq!(score("we redeploy on friday", &q), None, "inside a word");
        assert_eq!(score("deploy on monday", &q), None, "a term missing");
        let apart = score("deploy, then on friday we rest", &q).unwrap();
        let together = score("the deploy friday went fine", &q).unwrap();
        let twice = score("deploy friday, deploy friday again", &q).unwrap();
        assert!(
            together > apart && twice > together,
            "{apart} {together} {twice}"
        );
        assert!(score("Deploying Friday", &q).is_some(), "prefixes and case");
    }

    #[test]
    fn a_snippet_centres_on_the_matches_and_marks_them() {
        let q = terms("needle");
        let long = format!("{} needle {}", "hay ".repeat(100), "hay ".repeat(100));
        let cut = snippet(&long, &q);
        assert!(cut.text.starts_with('…') && cut.text.ends_with('…'));
        let (start, end) = cut.highlights[0];
        let marked: String = cut.text.chars().skip(start).take(end - start).collect();
        assert_eq!(marked, "needle");
        let short = snippet("Needle and needles", &q);
        assert_eq!(short.text, "Needle and needles");
        assert_eq!(short.highlights, [(0, 6), (11, 17)]);
    }
}

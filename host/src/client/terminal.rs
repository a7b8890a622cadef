//! What the command line prints of the servers' words (plugin names and
//! descriptions, endpoint names, error messages) never drives the terminal:
//! control characters other than newline and tab become visible `\uXXXX`
//! escapes, so an `ESC[2K\r` or an OSC sequence in a plugin's description shows
//! as text instead of rewriting what the operator sees.

use std::borrow::Cow;

/// `text` with every control character except `\n` and `\t` (C0, DEL and the
/// C1 range, which some terminals take as escapes too) written as `\uXXXX`. The
/// escape is also JSON's, so JSON output stays JSON.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `c` is a control character a terminal may act on.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_become_visible_text() {
        assert_eq!(clean("plain\tand\nlines"), "plain\tand\nlines");
        assert_eq!(
            clean("sum\u{1b}[2K\rhidden\u{1b}]0;title\u{7}\u{9b}"),
            "sum\\u001b[2K\\u000dhidden\\u001b]0;title\\u0007\\u009b"
        );
    }

    proptest! {
        #[test]
        fn nothing_a_terminal_acts_on_survives(text in any::<String>()) {
            let cleaned = clean(&text);
            prop_assert!(!cleaned.chars().any(is_unsafe));
            if !text.chars().any(is_unsafe) {
                prop_assert_eq!(cleaned.as_ref(), text.as_str());
            }
        }
    }
}

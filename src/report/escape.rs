//! Escaping of user data (class folders, file paths, labels, error messages, model
//! names) for every text format vit-batch writes: HTML (`report.html`), Markdown
//! (`report.md` and the gate summary) and XML (the gate's JUnit file).
//!
//! Why one module: a class name must read the same in every output, and an escaper
//! that exists twice drifts (the report and the gate summary used to escape Markdown
//! by two different rules). Each function escapes character by character, so the
//! escape of a sentence that quotes a class name contains the escape of that name.

/// Text for HTML element content and quoted attribute values.
pub(crate) fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text for Markdown, in running text, list items and table cells alike:
/// HTML-significant characters become entities (GitHub renders inline HTML), Markdown
/// punctuation is backslash-escaped (so `*x*` or `[a](b)` stay literal and `|` cannot
/// end a table cell), line breaks and tabs become spaces (a newline would end a table
/// row) and other control characters become U+FFFD.
pub(crate) fn markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' | '\r' | '\t' => out.push(' '),
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '!'
            | '|' | '~' | '$' => {
                out.push('\\');
                out.push(ch);
            }
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Text inside a single-backtick Markdown code span in a table cell. Backslash
/// escapes do not work inside code spans, so the characters that would end the span
/// or the cell are replaced instead: a backtick by `'`, `|` by `¦`, control
/// characters (line breaks included) by U+FFFD.
pub(crate) fn markdown_code(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '`' => '\'',
            '|' => '¦',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Text for XML 1.0 content and attribute values. Characters XML 1.0 cannot carry at
/// all (most C0 controls, U+FFFE/U+FFFF) become U+FFFD.
pub(crate) fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_quotes() {
        assert_eq!(
            html("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn markdown_escapes_html_punctuation_and_controls() {
        assert_eq!(
            markdown("<script>alert(1)</script>"),
            "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
        );
        assert_eq!(markdown("a|b*c_d"), "a\\|b\\*c\\_d");
        assert_eq!(markdown("a|b\nc<x>"), "a\\|b c&lt;x&gt;");
        assert_eq!(markdown("t\tx\r\n\u{1}\u{7f}"), "t x  \u{FFFD}\u{FFFD}");
        assert_eq!(markdown("[f](g) #h ~$!"), "\\[f\\]\\(g\\) \\#h \\~\\$\\!");
        assert_eq!(markdown("a\"b'c&d"), "a&quot;b'c&amp;d");
    }

    #[test]
    fn markdown_code_cannot_end_the_span_or_the_cell() {
        assert_eq!(markdown_code("a`b|c\nd"), "a'b¦c\u{FFFD}d");
        assert_eq!(markdown_code("<b>*x*</b>"), "<b>*x*</b>");
    }

    #[test]
    fn xml_escapes_everything() {
        assert_eq!(
            xml("a<b>&\"'\u{1}\n\u{FFFE}"),
            "a&lt;b&gt;&amp;&quot;&apos;\u{FFFD}\n\u{FFFD}"
        );
    }
}

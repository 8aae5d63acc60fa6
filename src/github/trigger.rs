//! Trigger phrase matching and prompt building. A phrase counts only where a
//! reader of the rendered Markdown sees it: not in quoted replies, code,
//! HTML, image alt text, link reference definitions or HTML comments, and
//! not split or assembled by invisible characters. The text is sanitized
//! first, so hidden content can neither carry a trigger nor reach the prompt.
//! Prompts are data: nothing here is, or may become, a command line.

use std::fmt::Write as _;
use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::events::TriggerCandidate;
use crate::api::TriggerEvent;

/// Most bytes a prompt may have (the `spec.prompt` limit).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// Longest title kept in a prompt's context block, in characters.
const MAX_TITLE_CHARS: usize = 1024;

/// Sanitizing passes: each one that changes anything makes the text shorter,
/// and a few cover every nesting seen in practice.
const MAX_SANITIZE_PASSES: usize = 8;

/// Zero-width characters and bidi controls (the required set), and other
/// invisible formatting characters that can smuggle text: soft hyphen,
/// Mongolian vowel separator, invisible operators, bidi marks and Unicode tag
/// characters.
fn is_hidden_char(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FEFF}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{00AD}'
            | '\u{180E}'
            | '\u{2061}'..='\u{2064}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Bidi overrides reverse how the characters after them are shown, so the
/// text a reader sees is not the text we would match.
fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202D}' | '\u{202E}')
}

fn markdown_options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS | Options::ENABLE_FOOTNOTES
}

/// Removes hidden content: HTML comments (an unclosed one runs to the end),
/// zero-width and bidi control characters (and the other invisible
/// formatting characters above), image alt text and titles (an image becomes
/// its URL) and link reference definition titles (the `[//]: # (hidden)`
/// trick). Matching and prompts both work on this output.
pub fn sanitize(text: &str) -> String {
    let mut s: String = text.chars().filter(|c| !is_hidden_char(*c)).collect();
    for _ in 0..MAX_SANITIZE_PASSES {
        let before = s.len();
        s = strip_html_comments(&s);
        s = strip_markdown_hiding(&s);
        if s.len() == before {
            break;
        }
    }
    s
}

fn strip_html_comments(s: &str) -> String {
    if !s.contains("<!--") {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 4..];
        // `<!-->` and `<!--->` are complete (empty) comments in CommonMark.
        rest = if let Some(r) = after.strip_prefix('>') {
            r
        } else if let Some(r) = after.strip_prefix("->") {
            r
        } else {
            match after.find("-->") {
                Some(end) => &after[end + 3..],
                None => "",
            }
        };
    }
    out.push_str(rest);
    out
}

/// Images become their URL; link reference definitions lose their title.
fn strip_markdown_hiding(s: &str) -> String {
    if !s.contains("![") && !s.contains("]:") {
        return s.to_owned();
    }
    let parser = Parser::new_ext(s, markdown_options());
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for (_, def) in parser.reference_definitions().iter() {
        if def.title.is_some()
            && let Some(label) = definition_label(&s[def.span.clone()])
        {
            let source = &s[def.span.clone()];
            let trailing = &source[source.trim_end().len()..];
            let dest: String = def.dest.chars().filter(|c| !is_hidden_char(*c)).collect();
            edits.push((def.span.clone(), format!("{label}: <{dest}>{trailing}")));
        }
    }
    let mut depth = 0usize;
    for (event, range) in parser.into_offset_iter() {
        match event {
            Event::Start(Tag::Image { dest_url, .. }) => {
                if depth == 0 {
                    edits.push((range, dest_url.chars().filter(|c| !is_hidden_char(*c)).collect()));
                }
                depth += 1;
            }
            Event::End(TagEnd::Image) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if edits.is_empty() {
        return s.to_owned();
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (range, replacement) in edits {
        if range.start < at || range.end > s.len() {
            continue;
        }
        out.push_str(&s[at..range.start]);
        out.push_str(&replacement);
        at = range.end;
    }
    out.push_str(&s[at..]);
    out
}

/// `[label]` at the start of a definition's source (after indentation).
fn definition_label(def: &str) -> Option<&str> {
    let trimmed = def.trim_start();
    let offset = def.len() - trimmed.len();
    if !trimmed.starts_with('[') {
        return None;
    }
    let mut escaped = false;
    for (i, c) in trimmed.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ']' => return Some(&def[offset..offset + i + 1]),
            _ => {}
        }
    }
    None
}

/// Finds the trigger phrase where a reader sees it and returns the
/// instruction after it: the rest of that paragraph and all following text,
/// sanitized and trimmed (possibly empty). `None` when the phrase appears
/// only in hidden, quoted or code text, not at word boundaries, or when the
/// text holds a bidi override.
pub fn find_trigger(text: &str, phrase: &str) -> Option<String> {
    let clean = sanitized_for_matching(text, phrase)?;
    let end = find_visible(&clean, phrase.trim())?;
    Some(clean[end..].trim().to_owned())
}

/// Whether `text` holds the command `phrase` (such as `/claude approve`)
/// under the same rules as [`find_trigger`].
pub fn contains_command(text: &str, phrase: &str) -> bool {
    sanitized_for_matching(text, phrase).is_some_and(|clean| find_visible(&clean, phrase.trim()).is_some())
}

fn sanitized_for_matching(text: &str, phrase: &str) -> Option<String> {
    if phrase.trim().is_empty() || text.chars().any(is_bidi_override) {
        return None;
    }
    Some(sanitize(text))
}

/// End (byte offset) of the first occurrence of `phrase` in `s` that sits at
/// word boundaries and lies wholly in text a reader sees.
fn find_visible(s: &str, phrase: &str) -> Option<usize> {
    let occurrences = occurrences(s, phrase);
    if occurrences.is_empty() {
        return None;
    }
    let visible = visible_ranges(s);
    occurrences
        .into_iter()
        .find(|o| visible.iter().any(|v| v.start <= o.start && o.end <= v.end))
        .map(|o| o.end)
}

/// Occurrences of `phrase`, case-insensitive, a space in the phrase matching
/// any run of whitespace, with word boundaries on both sides.
fn occurrences(s: &str, phrase: &str) -> Vec<Range<usize>> {
    let Some(first) = phrase.chars().next() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut prev: Option<char> = None;
    for (at, c) in s.char_indices() {
        if chars_eq_ci(first, c)
            && prev.is_none_or(is_left_boundary)
            && let Some(end) = match_at(s, at, phrase)
            && is_right_boundary(&s[end..])
        {
            found.push(at..end);
        }
        prev = Some(c);
    }
    found
}

fn match_at(s: &str, at: usize, phrase: &str) -> Option<usize> {
    let mut hay = s[at..].char_indices().peekable();
    let mut pat = phrase.chars().peekable();
    while let Some(p) = pat.next() {
        if p.is_whitespace() {
            while pat.next_if(|c| c.is_whitespace()).is_some() {}
            hay.next_if(|(_, c)| c.is_whitespace())?;
            while hay.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        } else {
            hay.next_if(|(_, c)| chars_eq_ci(p, *c))?;
        }
    }
    Some(at + hay.peek().map_or(s.len() - at, |(i, _)| *i))
}

fn chars_eq_ci(a: char, b: char) -> bool {
    a == b || a.eq_ignore_ascii_case(&b) || (!a.is_ascii() && !b.is_ascii() && a.to_lowercase().eq(b.to_lowercase()))
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// What may stand right before the phrase: whitespace and a few opening or
/// separating marks. Not letters, digits, `_`, `@`, `.`, `/`, `-` or
/// backslashes, so `foo@claude`, `a/@claude` and `\@claude` do not count.
fn is_left_boundary(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '(' | '[' | '{' | '"' | '\'' | ',' | ';' | ':' | '!' | '?' | '*' | '~' | '>' | '|'
        )
}

/// What may follow the phrase: the end, whitespace, or closing punctuation
/// (a `.` only when no word character follows it, so `@claude.ai` does not
/// count). Not `-` or `/`: `@claude-bot` and `@claude/team` are others.
fn is_right_boundary(rest: &str) -> bool {
    let mut chars = rest.chars();
    match chars.next() {
        None => true,
        Some(c) if c.is_whitespace() => true,
        Some('.') => chars.next().is_none_or(|c| !is_word_char(c)),
        Some(c) => matches!(
            c,
            ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}' | '"' | '\'' | '*' | '~' | '<' | '|'
        ),
    }
}

/// Source ranges of text a reader sees: paragraphs, headings, list items,
/// tables, links' text; not block quotes, code (fenced, indented or inline),
/// HTML, or image alt text. Adjacent ranges are merged.
fn visible_ranges(s: &str) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut hidden = 0usize;
    for (event, range) in Parser::new_ext(s, markdown_options()).into_offset_iter() {
        match event {
            Event::Start(Tag::BlockQuote(_) | Tag::CodeBlock(_) | Tag::Image { .. } | Tag::HtmlBlock) => hidden += 1,
            Event::End(TagEnd::BlockQuote(_) | TagEnd::CodeBlock | TagEnd::Image | TagEnd::HtmlBlock) => {
                hidden = hidden.saturating_sub(1)
            }
            Event::Text(_) | Event::SoftBreak | Event::HardBreak if hidden == 0 => match ranges.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => ranges.push(range),
            },
            _ => {}
        }
    }
    ranges
}

/// What an automatic review asks for when the policy's
/// `triggers.review.instructions` does not say.
pub const REVIEW_REQUEST: &str = "Review this pull request: read its changes (`git diff` against the base \
branch, and the files around them) and point out bugs, security problems and unclear code.";

/// The answer an automatic review must give, appended to every review's
/// instruction: the runner posts it as one pull request review.
pub const REVIEW_FORMAT: &str = "Do not change any file: this run is read-only. Answer with the review \
only, as one JSON object and nothing else: {\"body\": \"<summary, Markdown>\", \"comments\": \
[{\"path\": \"<a file the pull request changes>\", \"line\": <line number in its new version>, \
\"body\": \"<comment, Markdown>\"}]}. Comment only on lines the pull request changed.";

/// The instruction of an automatic review: the policy's request (or
/// [`REVIEW_REQUEST`]) and [`REVIEW_FORMAT`].
pub fn review_instruction(instructions: Option<&str>) -> String {
    format!("{}\n\n{REVIEW_FORMAT}", instructions.unwrap_or(REVIEW_REQUEST).trim())
}

/// The instruction a candidate carries: for `assigned` and `labeled` the
/// issue's body (the phrase is not needed there), otherwise the text after
/// the phrase, or `None` when the phrase is not there.
pub fn instruction_for(candidate: &TriggerCandidate, phrase: &str) -> Option<String> {
    match candidate.event {
        TriggerEvent::IssueAssigned | TriggerEvent::IssueLabeled => Some(sanitize(&candidate.body).trim().to_owned()),
        _ => find_trigger(&candidate.body, phrase),
    }
}

/// The prompt for a run: the sanitized instruction, then a context block
/// naming the repository, the issue or pull request and its URL. At most
/// [`MAX_PROMPT_BYTES`]; the instruction is cut (on a character boundary) so
/// that the context always fits.
pub fn build_prompt(instruction: &str, candidate: &TriggerCandidate) -> String {
    let kind = if candidate.is_pull_request {
        "pull request"
    } else {
        "issue"
    };
    let title: String = sanitize(&candidate.title)
        .chars()
        .take(MAX_TITLE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut context = String::from("\n\n---\nContext (from GitHub):\n");
    let _ = writeln!(context, "- Repository: {}", candidate.repository);
    let _ = writeln!(context, "- {kind} #{}: {}", candidate.number, title.trim());
    if let Some(url) = &candidate.html_url {
        let _ = writeln!(context, "- URL: {url}");
    }
    if let Some(url) = &candidate.comment_url {
        let _ = writeln!(context, "- Requested in: {url}");
    }
    if let Some(head) = &candidate.head_ref {
        let _ = writeln!(context, "- Head branch: {head}");
    }
    let _ = writeln!(context, "- Requested by: @{}", candidate.actor.login);
    truncate_on_char_boundary(&mut context, MAX_PROMPT_BYTES);

    let instruction = sanitize(instruction);
    let mut prompt = instruction.trim().to_owned();
    truncate_on_char_boundary(&mut prompt, MAX_PROMPT_BYTES - context.len());
    prompt.push_str(&context);
    prompt
}

fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Actor, ActorType, AuthorAssociation};

    const P: &str = "@claude";

    #[test]
    fn phrase_matcher_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("plain", "@claude fix the typo", Some("fix the typo")),
            ("case", "hey @Claude, fix", Some(", fix")),
            ("upper", "@CLAUDE do it", Some("do it")),
            ("alone", "@claude", Some("")),
            ("end of sentence", "Thanks @claude.", Some(".")),
            ("parenthesised", "(cc @claude)", Some(")")),
            ("bold", "**@claude** fix it", Some("** fix it")),
            ("list item", "- @claude fix it", Some("fix it")),
            ("heading", "# @claude fix it", Some("fix it")),
            (
                "link text",
                "[@claude](https://github.com/claude) fix",
                Some("](https://github.com/claude) fix"),
            ),
            (
                "rest of text",
                "@claude fix\nthis bug\n\n```\nlog\n```",
                Some("fix\nthis bug\n\n```\nlog\n```"),
            ),
            ("first of two", "@claude one\n\n@claude two", Some("one\n\n@claude two")),
            ("longer name", "@claudette fix", None),
            ("hyphenated name", "@claude-bot fix", None),
            ("team mention", "@claude/team fix", None),
            ("email", "write to foo@claude.ai", None),
            ("domain", "see @claude.ai/x", None),
            ("prefixed", "x@claude fix", None),
            ("underscore", "_@claude fix", None),
            ("escaped", "\\@claude fix", None),
            ("absent", "nothing to see", None),
            ("block quote", "> @claude fix", None),
            ("nested quote", "> > @claude fix", None),
            ("reply quote then text", "> @claude fix\n\nthanks", None),
            ("lazy continuation of quote", "> quoted\n@claude fix", None),
            ("quote then trigger", "> old text\n\n@claude fix", Some("fix")),
            ("fenced code", "```\n@claude fix\n```", None),
            ("tilde fence", "~~~\n@claude fix\n~~~", None),
            ("indented code", "text\n\n    @claude fix", None),
            ("inline code", "use `@claude fix` to call", None),
            ("after code", "`x` @claude fix", Some("fix")),
            ("html comment", "<!-- @claude fix -->", None),
            ("unclosed html comment", "hi <!-- @claude fix", None),
            ("html block", "<div>\n@claude fix\n</div>", None),
            ("image alt", "![@claude fix](https://x/y.png)", None),
            ("link title", "[x](https://x \"@claude fix\")", None),
            ("reference definition", "[//]: # (@claude fix)", None),
            ("zero-width split", "@cl\u{200B}aude fix", Some("fix")),
            ("zero-width joiner", "@clau\u{200D}de fix", Some("fix")),
            ("zero-width before", "foo\u{200B}@claude", None),
            ("zero-width inside comment", "<!\u{200B}-- @claude -->", None),
            ("bom", "\u{FEFF}@claude fix", Some("fix")),
            ("bidi isolate", "\u{2067}@claude fix\u{2069}", Some("fix")),
            ("bidi override", "\u{202E}edualc@ xif", None),
            ("bidi override anywhere", "@claude fix \u{202E}tfel", None),
            ("lookalike cyrillic", "@\u{0441}laude fix", None),
            ("tag characters stripped", "@claude fix\u{E0041}\u{E0042}", Some("fix")),
        ];
        for (name, text, want) in cases {
            assert_eq!(find_trigger(text, P).as_deref(), *want, "{name}: {text:?}");
        }
    }

    #[test]
    fn comment_hidden_text_cannot_assemble_a_phrase_in_code_or_quotes() {
        // Removing the comment joins `@cl` and `aude`; the result is shown as
        // `@claude` and counts, but not inside a quote.
        assert_eq!(find_trigger("@cl<!-- x -->aude fix", P).as_deref(), Some("fix"));
        assert_eq!(find_trigger("> @cl<!-- x -->aude fix", P), None);
        // An image replaced by its URL cannot open a comment that hides text.
        assert_eq!(find_trigger("<!![a](-)- @claude -->", P), None);
    }

    #[test]
    fn commands() {
        let cmd = "/claude approve";
        let cases: &[(&str, bool)] = &[
            ("/claude approve", true),
            ("/Claude Approve", true),
            ("LGTM\n\n/claude approve", true),
            ("/claude   approve", true),
            ("/claude approved", false),
            ("/claude approve-all", false),
            ("path/claude approve", false),
            ("> /claude approve", false),
            ("`/claude approve`", false),
            ("<!-- /claude approve -->", false),
            ("```\n/claude approve\n```", false),
            ("/claude\n\napprove", false),
            ("/claude", false),
        ];
        for (text, want) in cases {
            assert_eq!(contains_command(text, cmd), *want, "{text:?}");
        }
        assert!(!contains_command("anything", "  "));
    }

    #[test]
    fn sanitize_table() {
        let cases: &[(&str, &str)] = &[
            ("a<!-- hidden -->b", "ab"),
            ("a<!---->b<!-->c<!--->d", "abcd"),
            ("a<!-- open", "a"),
            ("z\u{200B}e\u{200C}r\u{200D}o\u{2060}\u{FEFF}", "zero"),
            (
                "\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}b\u{2066}\u{2067}\u{2068}\u{2069}",
                "b",
            ),
            ("see ![a cat](https://x/cat.png) here", "see https://x/cat.png here"),
            ("![alt](https://x/a.png \"title\")", "https://x/a.png"),
            ("[![badge](https://x/b.svg)](https://x)", "[https://x/b.svg](https://x)"),
            (
                "![ref alt][r]\n\n[r]: https://x/r.png",
                "https://x/r.png\n\n[r]: https://x/r.png",
            ),
            ("[//]: # (secret instructions)\ntext", "[//]: <#>\ntext"),
            ("`![not an image](x)`", "`![not an image](x)`"),
            ("plain text", "plain text"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), *want, "{input:?}");
        }
    }

    fn candidate(is_pr: bool) -> TriggerCandidate {
        TriggerCandidate {
            event: TriggerEvent::IssueComment,
            event_name: "issue_comment".into(),
            action: "created".into(),
            repository: "acme/api".into(),
            owner: "acme".into(),
            installation_id: None,
            actor: Actor {
                login: "dev".into(),
                id: 7,
                type_: ActorType::User,
            },
            author_association: AuthorAssociation::Member,
            number: 12,
            is_pull_request: is_pr,
            title: "Fix\u{200B} the\nparser".into(),
            html_url: Some("https://github.com/acme/api/pull/12".into()),
            comment_id: Some(1),
            comment_url: Some("https://github.com/acme/api/pull/12#issuecomment-1".into()),
            body: String::new(),
            head_sha: None,
            head_ref: Some("fix-parser".into()),
            fork: false,
            label: None,
            assignee: None,
            issue_updated_at: None,
            base_ref: None,
            draft: false,
        }
    }

    #[test]
    fn prompt_has_context_and_keeps_shell_text_as_data() {
        let body = "@claude run $(touch /tmp/pwned) and `rm -rf /`; echo \"$HOME\" 'x' <!-- hidden -->";
        let instruction = find_trigger(body, P).unwrap();
        let prompt = build_prompt(&instruction, &candidate(true));
        assert!(
            prompt.starts_with("run $(touch /tmp/pwned) and `rm -rf /`; echo \"$HOME\" 'x'"),
            "{prompt}"
        );
        assert!(!prompt.contains("hidden"));
        for want in [
            "Repository: acme/api",
            "pull request #12: Fix the parser",
            "URL: https://github.com/acme/api/pull/12",
            "Requested by: @dev",
        ] {
            assert!(prompt.contains(want), "{want} not in {prompt}");
        }
        let issue = build_prompt("x", &candidate(false));
        assert!(issue.contains("- issue #12:"), "{issue}");
    }

    #[test]
    fn prompt_is_capped_on_a_char_boundary_with_context_kept() {
        let huge = "é".repeat(MAX_PROMPT_BYTES);
        let prompt = build_prompt(&huge, &candidate(false));
        assert!(prompt.len() <= MAX_PROMPT_BYTES);
        assert!(prompt.len() > MAX_PROMPT_BYTES - 400);
        assert!(prompt.contains("Repository: acme/api"));
        let mut long_title = candidate(false);
        long_title.title = "t".repeat(100_000);
        assert!(build_prompt(&huge, &long_title).len() <= MAX_PROMPT_BYTES);
    }

    #[test]
    fn instruction_for_events() {
        let mut c = candidate(false);
        c.body = "please @claude fix it <!-- x -->".into();
        assert_eq!(instruction_for(&c, P).as_deref(), Some("fix it"));
        c.body = "no phrase".into();
        assert_eq!(instruction_for(&c, P), None);
        c.event = TriggerEvent::IssueLabeled;
        c.body = "  The body\u{200B} is the task  ".into();
        assert_eq!(instruction_for(&c, P).as_deref(), Some("The body is the task"));
        c.event = TriggerEvent::IssueAssigned;
        assert_eq!(instruction_for(&c, P).as_deref(), Some("The body is the task"));
    }
}

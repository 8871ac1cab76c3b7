//! Prompt templates (`prompts/*.prompt`): plain text in sections, with named
//! fields in braces, parsed and checked once at start so that a bad template
//! stops the server with a message naming the line, not the first request.
//!
//! ```text
//! # comment lines start with '#'
//! [system]
//! You suggest what a new user of {catalog} may want.
//! [example]                      (any number: the few-shot section)
//! {"age": 25, "occupation": "student"}
//! => comedy, romance
//! [user]
//! {profile}
//! [assistant]
//! This person would most enjoy:
//! ```
//!
//! `[user]` is rendered for each example's profile (a JSON object on the first
//! line) and then for the real user; the text after `=>` is that example's
//! answer. `[assistant]` starts the answer that every candidate label
//! continues. Fields: see [`FIELDS`]; `{{` and `}}` are literal braces. With a
//! ChatML tokenizer, sections become `<|im_start|>role ... <|im_end|>` turns;
//! otherwise they are joined as plain paragraphs.

use std::path::Path;

use super::{ColdStartError, Profile};

/// Field names a template may use.
pub const FIELDS: &[&str] =
    &["profile", "age", "gender", "country", "language", "occupation", "interests", "channel", "intents", "catalog"];

/// The default intent prompt, as shipped in `prompts/intent.prompt`.
pub const DEFAULT_PROMPT: &str = include_str!("../../prompts/intent.prompt");

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(&'static str),
}

/// A parsed section body.
#[derive(Debug, Clone, PartialEq)]
struct Text(Vec<Piece>);

#[derive(Debug, Clone)]
struct Example {
    profile: Profile,
    answer: String,
}

/// A checked prompt template.
#[derive(Debug, Clone)]
pub struct PromptTemplate {
    name: String,
    system: Option<Text>,
    examples: Vec<Example>,
    user: Text,
    assistant: Text,
}

/// Values that do not come from the profile.
pub struct Context<'a> {
    /// One intent label per line.
    pub intents: &'a str,
    /// The catalog's name.
    pub catalog: &'a str,
}

fn err(name: &str, line: usize, msg: impl std::fmt::Display) -> ColdStartError {
    ColdStartError::Template(format!("{name}:{line}: {msg}"))
}

/// Parses one section body's fields.
fn parse_text(name: &str, first_line: usize, body: &str) -> Result<Text, ColdStartError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut line = first_line;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                line += 1;
                text.push(c);
            }
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('\n') | None => return Err(err(name, line, format!("unclosed '{{' before {field:?}"))),
                        Some(c) => field.push(c),
                    }
                }
                let known = FIELDS.iter().find(|f| **f == field.trim()).ok_or_else(|| {
                    err(name, line, format!("unknown field {{{field}}}; known fields: {}", FIELDS.join(", ")))
                })?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(known));
            }
            '}' => return Err(err(name, line, "'}' without '{' (write '}}' for a literal brace)")),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Text(pieces))
}

impl Text {
    /// The section's text up to its first profile field, cut after the last
    /// line break before it: the same for every profile, and a token
    /// boundary (tokens do not span a line break followed by text).
    fn constant_head(&self, ctx: &Context) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field("intents") => out.push_str(ctx.intents),
                Piece::Field("catalog") => out.push_str(ctx.catalog),
                Piece::Field(_) => break,
            }
        }
        out.truncate(out.rfind('\n').map_or(0, |i| i + 1));
        out
    }

    fn render(&self, p: &Profile, ctx: &Context) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(&match *f {
                    "profile" => p.describe(),
                    "intents" => ctx.intents.to_string(),
                    "catalog" => ctx.catalog.to_string(),
                    other => p.field(other).unwrap_or_else(|| "unknown".into()),
                }),
            }
        }
        out.trim().to_string()
    }
}

impl PromptTemplate {
    /// Reads and checks a template file.
    pub fn load(path: &Path) -> Result<Self, ColdStartError> {
        let text = std::fs::read_to_string(path).map_err(|e| ColdStartError::Io(path.display().to_string(), e))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses and checks a template; `name` is used in error messages.
    pub fn parse(name: &str, source: &str) -> Result<Self, ColdStartError> {
        // split into (section, first line number, body)
        let mut sections: Vec<(String, usize, String)> = Vec::new();
        for (i, line) in source.lines().enumerate() {
            let n = i + 1;
            let t = line.trim_end();
            if t.trim_start().starts_with('#') {
                continue;
            }
            if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                if !["system", "example", "user", "assistant"].contains(&s) {
                    return Err(err(
                        name,
                        n,
                        format!("unknown section [{s}]; sections: [system], [example], [user], [assistant]"),
                    ));
                }
                sections.push((s.to_string(), n + 1, String::new()));
                continue;
            }
            match sections.last_mut() {
                Some((_, _, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None if t.trim().is_empty() => {}
                None => return Err(err(name, n, "text before the first [section]")),
            }
        }
        let mut tpl = PromptTemplate {
            name: name.to_string(),
            system: None,
            examples: Vec::new(),
            user: Text(vec![]),
            assistant: Text(vec![]),
        };
        let (mut user, mut assistant) = (false, false);
        for (section, line, body) in sections {
            let once = |seen: &mut bool| {
                if std::mem::replace(seen, true) {
                    Err(err(name, line - 1, format!("section [{section}] appears twice")))
                } else {
                    Ok(())
                }
            };
            match section.as_str() {
                "system" => tpl.system = Some(parse_text(name, line, &body)?),
                "user" => {
                    once(&mut user)?;
                    tpl.user = parse_text(name, line, &body)?;
                }
                "assistant" => {
                    once(&mut assistant)?;
                    tpl.assistant = parse_text(name, line, &body)?;
                }
                _ => tpl.examples.push(parse_example(name, line, &body)?),
            }
        }
        if !user || !assistant {
            return Err(err(name, 1, "a template needs a [user] and an [assistant] section"));
        }
        if !tpl.user.0.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(err(name, 1, "[user] uses no field: the prompt would not depend on the profile"));
        }
        Ok(tpl)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prompt for `profile`, ending where the candidate label starts.
    pub fn render(&self, profile: &Profile, ctx: &Context, chatml: bool) -> String {
        let (fixed, rest) = self.render_split(profile, ctx, chatml);
        fixed + &rest
    }

    /// [`PromptTemplate::render`] in two parts: the part that is the same for
    /// every profile (system turn, examples, and the user turn's lines before
    /// the first profile field), whose keys and values the LLM computes once,
    /// and the rest.
    pub fn render_split(&self, profile: &Profile, ctx: &Context, chatml: bool) -> (String, String) {
        let turn = |role: &str, text: &str| {
            if chatml {
                format!("<|im_start|>{role}\n{text}<|im_end|>\n")
            } else {
                format!("{text}\n\n")
            }
        };
        let answer_prefix = self.assistant.render(profile, ctx);
        let mut fixed = String::new();
        if let Some(s) = &self.system {
            fixed.push_str(&turn("system", &s.render(profile, ctx)));
        }
        for ex in &self.examples {
            fixed.push_str(&turn("user", &self.user.render(&ex.profile, ctx)));
            fixed.push_str(&turn("assistant", &join(&answer_prefix, &ex.answer)));
        }
        let user = turn("user", &self.user.render(profile, ctx));
        let head = self.user.constant_head(ctx);
        let open = if chatml { "<|im_start|>user\n" } else { "" };
        let cut = open.len() + head.len();
        debug_assert!(user.starts_with(&format!("{open}{head}")));
        fixed.push_str(&user[..cut]);
        let mut rest = user[cut..].to_string();
        if chatml {
            rest.push_str("<|im_start|>assistant\n");
        }
        rest.push_str(&answer_prefix);
        (fixed, rest)
    }

    /// A candidate label as it continues [`PromptTemplate::render`]'s prompt.
    pub fn continuation(&self, label: &str) -> String {
        format!(" {}", label.trim())
    }
}

fn join(prefix: &str, answer: &str) -> String {
    if prefix.is_empty() {
        answer.to_string()
    } else {
        format!("{prefix} {answer}")
    }
}

fn parse_example(name: &str, line: usize, body: &str) -> Result<Example, ColdStartError> {
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let profile_line =
        lines.next().ok_or_else(|| err(name, line, "an [example] needs a JSON profile line and a '=> answer' line"))?;
    let profile: Profile = serde_json::from_str(profile_line.trim())
        .map_err(|e| err(name, line, format!("example profile is not a valid profile object: {e}")))?;
    let answer = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("=>"))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err(name, line, "an [example] needs a '=> answer' line after its profile"))?;
    Ok(Example { profile, answer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        serde_json::from_str(
            r#"{"age": 31, "gender": "female", "occupation": "nurse", "interests": ["jazz", "hiking"]}"#,
        )
        .unwrap()
    }

    const CTX: Context = Context { intents: "a\nb", catalog: "movies" };

    #[test]
    fn shipped_prompts_parse_and_render() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "prompt") {
                let t = PromptTemplate::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!t.examples.is_empty(), "{}: a few-shot section", p.display());
                let s = t.render(&profile(), &CTX, true);
                assert!(s.contains("nurse") && s.ends_with(&t.assistant.render(&profile(), &CTX)), "{s}");
                assert!(s.matches("<|im_start|>user").count() == t.examples.len() + 1);
            }
        }
    }

    #[test]
    fn renders_fields_examples_and_literal_braces() {
        let t = PromptTemplate::parse(
            "t",
            "# c\n[system]\nPick for {catalog} {{sic}}\n[example]\n{\"age\": 20}\n=> rock\n[user]\nAge {age}, job {occupation}, likes {interests}; country {country}\n[assistant]\nAnswer:\n",
        )
        .unwrap();
        let s = t.render(&profile(), &CTX, false);
        assert!(s.starts_with("Pick for movies {sic}"), "{s}");
        assert!(s.contains("Age 20, job unknown"), "{s}");
        assert!(s.contains("Answer: rock"), "{s}");
        assert!(s.contains("Age 31, job nurse, likes jazz, hiking; country unknown"), "{s}");
        assert!(s.ends_with("Answer:"), "{s}");
        assert_eq!(t.continuation(" jazz "), " jazz");
    }

    /// The cached part reaches into the user turn up to the line holding the
    /// first profile field: the same for every profile, and with the rest it
    /// is the whole prompt.
    #[test]
    fn the_fixed_part_ends_before_the_first_profile_field() {
        let t =
            PromptTemplate::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/movies.prompt")))
                .unwrap();
        let other: Profile = serde_json::from_str(r#"{"age": 8}"#).unwrap();
        for chatml in [true, false] {
            let (fixed, rest) = t.render_split(&profile(), &CTX, chatml);
            assert_eq!(fixed.clone() + &rest, t.render(&profile(), &CTX, chatml));
            assert_eq!(t.render_split(&other, &CTX, chatml).0, fixed, "the same for every profile");
            assert!(fixed.ends_with("The viewer signed up with this profile:\n"), "{fixed}");
            assert!(rest.starts_with("age: 31\n") || rest.starts_with("{"), "{rest}");
        }
        // a field on the user turn's first line: nothing of the turn is fixed
        let t = PromptTemplate::parse("t", "[user]\nAge {age}\nmore\n[assistant]\nA:\n").unwrap();
        let (fixed, rest) = t.render_split(&profile(), &CTX, true);
        assert_eq!(fixed, "<|im_start|>user\n");
        assert!(rest.starts_with("Age 31"), "{rest}");
    }

    #[test]
    fn bad_templates_fail_with_the_line() {
        let cases = [
            ("[user]\n{age}\n[assistant]\nx\n[user]\n{age}\n", "appears twice"),
            ("[user]\nhello {nme}\n[assistant]\n", "t:2: unknown field {nme}"),
            ("[user]\n{age\n[assistant]\n", "t:2: unclosed"),
            ("[user]\n{age} }\n[assistant]\n", "'}' without '{'"),
            ("[user]\n{age}\n", "needs a [user] and an [assistant]"),
            ("[user]\nno fields\n[assistant]\n", "uses no field"),
            ("hello\n[user]\n{age}\n[assistant]\n", "t:1: text before"),
            ("[sistem]\nx\n", "unknown section [sistem]"),
            ("[example]\n{\"age\": \"old\"}\n=> x\n[user]\n{age}\n[assistant]\n", "not a valid profile"),
            ("[example]\n{\"age\": 3}\n[user]\n{age}\n[assistant]\n", "'=> answer'"),
        ];
        for (src, want) in cases {
            let e = PromptTemplate::parse("t", src).unwrap_err().to_string();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }
}

//! Prompt templates of LLM-layout models: text with slots for a request's
//! parts, rendered before the checkpoint's tokenizer reads it.
//!
//! - `{history}`: the history's items, each as its semantic-ID token strings
//!   (`<a_12><b_200><c_5>`), joined by the layout's item separator.
//! - `{profile}` and `{query}`: a new user's profile and a search query, as
//!   text.
//! - `[[ ... ]]`: an optional section, left out when a slot inside it has no
//!   value (`[[The user is {profile}. ]]`). Sections do not nest.
//! - `{{` and `}}`: literal braces.
//!
//! The template ends where the model's answer begins: a model that writes
//! `<|sid_begin|>` before an item's tokens has a template that ends with it.

use crate::model::ModelError;

/// A slot of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    History,
    Profile,
    Query,
}

impl Slot {
    fn parse(name: &str) -> Option<Slot> {
        match name {
            "history" => Some(Slot::History),
            "profile" => Some(Slot::Profile),
            "query" => Some(Slot::Query),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Slot(Slot),
    /// Left out when any of its slots is empty.
    Section(Vec<Part>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The values of a request's slots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fill<'a> {
    pub history: &'a str,
    pub profile: Option<&'a str>,
    pub query: Option<&'a str>,
}

impl Fill<'_> {
    fn get(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::History => Some(self.history).filter(|h| !h.is_empty()),
            Slot::Profile => self.profile.filter(|p| !p.is_empty()),
            Slot::Query => self.query.filter(|q| !q.is_empty()),
        }
    }
}

fn bad(msg: String) -> ModelError {
    ModelError::Sidecar(format!("prompt template: {msg}"))
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let mut top: Vec<Part> = Vec::new();
        let mut section: Option<Vec<Part>> = None;
        let mut literal = String::new();
        let mut rest = text;
        fn flush(literal: &mut String, into: &mut Vec<Part>) {
            if !literal.is_empty() {
                into.push(Part::Text(std::mem::take(literal)));
            }
        }
        fn target<'a>(section: &'a mut Option<Vec<Part>>, top: &'a mut Vec<Part>) -> &'a mut Vec<Part> {
            match section {
                Some(s) => s,
                None => top,
            }
        }
        while let Some(c) = rest.chars().next() {
            if let Some(r) = rest.strip_prefix("{{") {
                literal.push('{');
                rest = r;
            } else if let Some(r) = rest.strip_prefix("}}") {
                literal.push('}');
                rest = r;
            } else if let Some(r) = rest.strip_prefix("[[") {
                if section.is_some() {
                    return Err(bad("sections `[[ ]]` do not nest".into()));
                }
                flush(&mut literal, &mut top);
                section = Some(Vec::new());
                rest = r;
            } else if let Some(r) = rest.strip_prefix("]]") {
                let Some(mut parts) = section.take() else {
                    return Err(bad("`]]` without `[[`".into()));
                };
                flush(&mut literal, &mut parts);
                if !parts.iter().any(|p| matches!(p, Part::Slot(_))) {
                    return Err(bad("a section `[[ ]]` must hold a slot".into()));
                }
                top.push(Part::Section(parts));
                rest = r;
            } else if c == '{' {
                let end = rest.find('}').ok_or_else(|| bad("`{` without `}` (write `{{` for a brace)".into()))?;
                let name = &rest[1..end];
                let slot = Slot::parse(name).ok_or_else(|| {
                    bad(format!("unknown slot {{{name}}}: the slots are {{history}}, {{profile}} and {{query}}"))
                })?;
                let into = target(&mut section, &mut top);
                flush(&mut literal, into);
                into.push(Part::Slot(slot));
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(bad("`}` without `{` (write `}}` for a brace)".into()));
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if section.is_some() {
            return Err(bad("`[[` without `]]`".into()));
        }
        flush(&mut literal, &mut top);
        let t = Template { parts: top };
        if !t.has(Slot::History) {
            return Err(bad("it has no {history} slot".into()));
        }
        Ok(t)
    }

    /// Whether the template reads `slot`.
    pub fn has(&self, slot: Slot) -> bool {
        fn any(parts: &[Part], slot: Slot) -> bool {
            parts.iter().any(|p| match p {
                Part::Slot(s) => *s == slot,
                Part::Section(inner) => any(inner, slot),
                Part::Text(_) => false,
            })
        }
        any(&self.parts, slot)
    }

    pub fn render(&self, fill: &Fill) -> String {
        fn put(parts: &[Part], fill: &Fill, out: &mut String) {
            for p in parts {
                match p {
                    Part::Text(t) => out.push_str(t),
                    Part::Slot(s) => out.push_str(fill.get(*s).unwrap_or("")),
                    Part::Section(inner) => {
                        let filled =
                            inner.iter().all(|p| if let Part::Slot(s) = p { fill.get(*s).is_some() } else { true });
                        if filled {
                            put(inner, fill, out);
                        }
                    }
                }
            }
        }
        let mut out = String::new();
        put(&self.parts, fill, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_slots_sections_and_braces() {
        let t = Template::parse("[[User: {profile}. ]]Bought {history}.[[ Wants {query}.]] {{json}} <|sid_begin|>")
            .unwrap();
        assert!(t.has(Slot::Query) && t.has(Slot::Profile));
        let f = Fill { history: "<a_1><b_2>, <a_3><b_4>", profile: None, query: Some("red shoes") };
        assert_eq!(t.render(&f), "Bought <a_1><b_2>, <a_3><b_4>. Wants red shoes. {json} <|sid_begin|>");
        let f = Fill { profile: Some("25, F"), query: Some(""), ..f };
        assert_eq!(t.render(&f), "User: 25, F. Bought <a_1><b_2>, <a_3><b_4>. {json} <|sid_begin|>");
    }

    #[test]
    fn the_shipped_default_reads_every_slot() {
        let t = Template::parse(crate::model::llm::DEFAULT_PROMPT).unwrap();
        assert!(t.has(Slot::History) && t.has(Slot::Profile) && t.has(Slot::Query));
        let s = t.render(&Fill { history: "<a_1><b_2>", profile: None, query: None });
        assert!(s.contains("<a_1><b_2>") && !s.contains("profile") && !s.ends_with('\n'), "{s:?}");
    }

    #[test]
    fn refuses_malformed_templates_by_name() {
        for (text, says) in [
            ("no slot", "no {history}"),
            ("{history} {user}", "unknown slot {user}"),
            ("{history", "without `}`"),
            ("[[{profile} [[{query}]]]] {history}", "do not nest"),
            ("[[{profile} {history}", "without `]]`"),
            ("{history} ]]", "without `[[`"),
            ("[[text]] {history}", "must hold a slot"),
            ("{history} }", "without `{`"),
        ] {
            let e = Template::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}

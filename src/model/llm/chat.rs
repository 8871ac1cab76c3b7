//! The chat template of an instruct checkpoint (`chat_template` in its
//! `tokenizer_config.json`, Jinja), rendered as transformers'
//! `apply_chat_template(messages, add_generation_prompt=True)` renders it:
//! the request's prompt is the one user message, and the special tokens of
//! the config (`bos_token`, `eos_token`, ...) are variables. Python's string
//! methods that such templates call (`.strip()`, `.startswith()`, ...) come
//! from minijinja-contrib's pycompat.

use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::model::ModelError;

const NAME: &str = "chat";

/// The file transformers 4.50+ writes the chat template to, beside
/// `tokenizer_config.json`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// A compiled chat template and the special tokens it may read.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: Vec<(String, String)>,
}

fn bad(msg: String) -> ModelError {
    ModelError::Sidecar(format!("chat template: {msg}"))
}

/// `raise_exception(message)`, which transformers gives templates.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// The template of a `tokenizer_config.json` (its bytes): `chat_template`
    /// as a string, or the one named `default` of a list of
    /// `{"name", "template"}`.
    pub fn from_tokenizer_config(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::from_files(bytes, None)
    }

    /// The template as transformers finds it: `jinja` (the folder's
    /// `chat_template.jinja`, which transformers 4.50+ writes) when given,
    /// else the config's `chat_template`; the special tokens from the config.
    pub fn from_files(config: &[u8], jinja: Option<String>) -> Result<Self, ModelError> {
        let cfg: serde_json::Value =
            serde_json::from_slice(config).map_err(|e| bad(format!("tokenizer_config.json: {e}")))?;
        let source = match (jinja, cfg.get("chat_template")) {
            (Some(j), _) => j,
            (None, Some(serde_json::Value::String(s))) => s.clone(),
            (None, Some(serde_json::Value::Array(list))) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from))
                .ok_or_else(|| bad("tokenizer_config.json lists chat templates but none named default".into()))?,
            _ => return Err(bad(format!("neither {CHAT_TEMPLATE_FILE} nor a chat_template in tokenizer_config.json"))),
        };
        // special tokens as strings, or as transformers' {"content": ...}
        let special = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|k| {
                let v = cfg.get(k)?;
                let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
                Some((k.to_string(), s.to_string()))
            })
            .collect();
        Self::new(source, special)
    }

    fn new(source: String, special: Vec<(String, String)>) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // transformers renders with trim_blocks and lstrip_blocks
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_template_owned(NAME, source).map_err(|e| bad(e.to_string()))?;
        Ok(ChatTemplate { env, special })
    }

    /// The chat text of one user message, ending with the assistant's turn.
    pub fn render_user(&self, content: &str) -> Result<String, ModelError> {
        let tmpl = self.env.get_template(NAME).map_err(|e| bad(e.to_string()))?;
        // (only the tokens the config has: an absent one is undefined, as
        // in transformers, and renders as nothing)
        let special = Value::from_pairs(self.special.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let ctx = context! {
            messages => vec![context! { role => "user", content => content }],
            add_generation_prompt => true,
            ..special
        };
        tmpl.render(ctx).map_err(|e| ModelError::Input(format!("rendering the chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_qwen_style_template_with_python_methods_and_special_tokens() {
        let cfg = serde_json::json!({
            "eos_token": {"content": "<|im_end|>"},
            "bos_token": "<s>",
            "chat_template": "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        });
        let t = ChatTemplate::from_tokenizer_config(cfg.to_string().as_bytes()).unwrap();
        assert_eq!(
            t.render_user("  hello <a_1>  ").unwrap(),
            "<s><|im_start|>user\nhello <a_1><|im_end|>\n<|im_start|>assistant\n"
        );
        let raising = serde_json::json!({"chat_template": "{{ raise_exception('no system role') }}"});
        let e = ChatTemplate::from_tokenizer_config(raising.to_string().as_bytes()).unwrap().render_user("x");
        assert!(e.unwrap_err().to_string().contains("no system role"));
        assert!(ChatTemplate::from_tokenizer_config(b"{}").is_err(), "no chat_template");
    }
}

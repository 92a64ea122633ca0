//! Chat templates: the Jinja template a GGUF carries (`tokenizer.chat_template`), rendered with
//! minijinja and Python-compatible string methods, as the Hugging Face / llama.cpp servers do.

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::InferenceError;

/// ChatML, used when a model file carries no template of its own.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One chat message. The content is prompt material: its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("content", &"<redacted>")
            .finish()
    }
}

impl Message {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compile a template. `bos`/`eos` are the texts of the model's BOS/EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, InferenceError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| {
                InferenceError::BadModel(format!("chat template does not compile: {e}"))
            })?;
        Ok(Self {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// Render the conversation with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, InferenceError> {
        if messages.is_empty() {
            return Err(InferenceError::BadRequest("no messages".into()));
        }
        for m in messages {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(InferenceError::BadRequest(format!(
                    "message role {:?} is not one of system, user, assistant",
                    m.role
                )));
            }
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| InferenceError::Internal(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        // The template's own error text may quote the messages; it is not passed on.
        .map_err(|e| {
            InferenceError::BadRequest(format!(
                "the chat template refused the conversation ({:?})",
                e.kind()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").expect("compiles");
        let s = t
            .render(&[
                Message::new("system", "be brief"),
                Message::new("user", "hi"),
            ])
            .expect("renders");
        assert_eq!(
            s,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(src, "", "").expect("compiles");
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")]).expect("renders"),
            "HI"
        );
        let err = t
            .render(&[Message::new("assistant", "x")])
            .expect_err("raises");
        assert!(matches!(err, InferenceError::BadRequest(_)));
    }

    #[test]
    fn bad_roles_and_empty_conversations_are_refused() {
        let t = ChatTemplate::new(CHATML, "", "").expect("compiles");
        assert!(t.render(&[]).is_err());
        assert!(t.render(&[Message::new("tool", "x")]).is_err());
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn message_debug_is_redacted() {
        let m = Message::new("user", "secret canary");
        assert!(!format!("{m:?}").contains("canary"));
    }
}

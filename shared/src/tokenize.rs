//! The engine's view of a prompt as token ids: a local HF `tokenizer.json` and, for chat, the
//! model's chat template from `tokenizer_config.json`, rendered like the engine does.
//!
//! Files are read from a local path given by the operator; nothing is ever fetched. Chat
//! requests are rendered with `add_generation_prompt` and the request's
//! `chat_template_kwargs`, then encoded without added special tokens (the template carries
//! them), as vLLM does; completion and SGLang `text` prompts are encoded with them.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::request::{ApiRoute, ParsedRequest, Prompt};

/// Why a tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a tokenizer this build understands.
    #[error("cannot load tokenizer {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
}

/// A chat template and the special tokens it refers to.
struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Tokenizes request prompts the way the engine will.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("chat_template", &self.chat.is_some())
            .finish()
    }
}

fn invalid(path: &Path, reason: impl ToString) -> TokenizerError {
    TokenizerError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A special token from `tokenizer_config.json`: a string or `{"content": ...}`.
fn special(config: &Json, name: &str) -> String {
    match &config[name] {
        Json::String(s) => s.clone(),
        Json::Object(o) => o
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

impl PromptTokenizer {
    /// Loads `path`: a `tokenizer.json`, or a directory holding one. A
    /// `tokenizer_config.json` next to it supplies the chat template, if it has one.
    pub fn load(path: &Path) -> Result<PromptTokenizer, TokenizerError> {
        let (file, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path.to_owned())
        } else {
            let dir = path.parent().map(Path::to_owned).unwrap_or_default();
            (path.to_owned(), dir)
        };
        let text = read(&file)?;
        if !text.trim_start().starts_with('{') {
            return Err(invalid(&file, "not a tokenizer.json (JSON) file"));
        }
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| invalid(&file, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let chat = if config_path.is_file() {
            let config: Json =
                serde_json::from_str(&read(&config_path)?).map_err(|e| invalid(&config_path, e))?;
            match config["chat_template"].as_str() {
                Some(source) => Some(
                    ChatTemplate::new(source, &config)
                        .map_err(|e| invalid(&config_path, format!("chat template: {e}")))?,
                ),
                None => None,
            }
        } else {
            None
        };
        Ok(PromptTokenizer { tokenizer, chat })
    }

    /// Whether chat requests can be tokenized exactly (a chat template was found).
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Option<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .ok()
            .map(|e| e.get_ids().to_vec())
    }

    /// The token ids the engine will compute for this request body, when they can be known:
    /// `None` for bodies that are not JSON, prompts the client sent as ids (the core reads
    /// those itself), batches, the Responses API, and chat without a template.
    pub fn tokenize_request(&self, route: ApiRoute, body: &[u8]) -> Option<Vec<u32>> {
        let json: Json = serde_json::from_slice(body).ok()?;
        match route {
            ApiRoute::Completions => self.encode(json["prompt"].as_str()?, true),
            ApiRoute::Generate => self.encode(json["text"].as_str()?, true),
            ApiRoute::ChatCompletions => {
                let text = self.chat.as_ref()?.render(&json).ok()?;
                self.encode(&text, false)
            }
            ApiRoute::Embeddings | ApiRoute::Responses => None,
        }
    }

    /// [`PromptTokenizer::tokenize_request`] for a body the gateway already parsed: text
    /// prompts are encoded from the parsed request without reading the body again; only chat
    /// needs the JSON (its template sees messages, tools and flags).
    pub fn tokenize_parsed(&self, parsed: &ParsedRequest<'_>, body: &[u8]) -> Option<Vec<u32>> {
        match (parsed.route, &parsed.prompt) {
            (ApiRoute::Completions | ApiRoute::Generate, Prompt::Text(text)) => {
                self.encode(text, true)
            }
            (ApiRoute::ChatCompletions, _) => self.tokenize_request(parsed.route, body),
            _ => None,
        }
    }

    /// The chat prompt text the engine's template renders for this body.
    pub fn render_chat(&self, body: &Json) -> Option<String> {
        self.chat.as_ref()?.render(body).ok()
    }
}

impl ChatTemplate {
    fn new(source: &str, config: &Json) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        // As transformers renders chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned())?;
        Ok(ChatTemplate {
            env,
            bos_token: special(config, "bos_token"),
            eos_token: special(config, "eos_token"),
        })
    }

    fn render(&self, body: &Json) -> Result<String, Error> {
        let mut ctx = serde_json::Map::new();
        if let Some(kwargs) = body["chat_template_kwargs"].as_object() {
            ctx.extend(kwargs.clone());
        }
        ctx.insert("messages".into(), body["messages"].clone());
        if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
            ctx.insert("tools".into(), tools.clone());
        }
        let add_generation_prompt = body["add_generation_prompt"].as_bool().unwrap_or(true);
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos_token.clone().into());
        ctx.insert("eos_token".into(), self.eos_token.clone().into());
        self.env
            .get_template("chat")?
            .render(Value::from_serialize(&ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Qwen3 tokenizer files fetched by `scripts/fetch-tokenizers.sh`, when present.
    fn qwen3() -> Option<PromptTokenizer> {
        let dir = std::env::var_os("KVROUTE_TOKENIZER_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tokenizers/qwen3"),
            PathBuf::from,
        );
        if !dir.join("tokenizer.json").is_file() {
            eprintln!("skipping: no tokenizer at {}", dir.display());
            return None;
        }
        Some(PromptTokenizer::load(&dir).expect("the fetched tokenizer loads"))
    }

    #[test]
    fn missing_or_foreign_files_are_errors() {
        assert!(PromptTokenizer::load(Path::new("/nonexistent/tokenizer.json")).is_err());
        let dir = std::env::temp_dir().join(format!("kvroute-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cl100k_base.tiktoken");
        std::fs::write(&f, "IQ== 0\n").unwrap();
        assert!(matches!(
            PromptTokenizer::load(&f),
            Err(TokenizerError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn qwen3_completions_and_chat_tokenize_like_the_engine() {
        let Some(t) = qwen3() else { return };
        assert!(t.has_chat_template());
        // Qwen3 adds no BOS: "Hello world" is two tokens.
        let ids = t
            .tokenize_request(
                ApiRoute::Completions,
                br#"{"model":"m","prompt":"Hello world"}"#,
            )
            .unwrap();
        assert_eq!(ids, t.encode("Hello world", false).unwrap());
        assert_eq!(ids.len(), 2);
        let body = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#;
        let json: Json = serde_json::from_slice(body).unwrap();
        let text = t.render_chat(&json).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = t.tokenize_request(ApiRoute::ChatCompletions, body).unwrap();
        // <|im_start|> is one special token.
        assert_eq!(Some(ids[0]), t.tokenizer.token_to_id("<|im_start|>"));
        // Prompts given as ids are left to the core.
        assert!(
            t.tokenize_request(ApiRoute::Completions, br#"{"model":"m","prompt":[1,2]}"#)
                .is_none()
        );
    }

    #[test]
    fn parsed_requests_tokenize_like_raw_bodies() {
        let Some(t) = qwen3() else { return };
        let cases: [(ApiRoute, &[u8]); 3] = [
            (
                ApiRoute::Completions,
                br#"{"model":"m","prompt":"Hello world, again"}"#,
            ),
            (ApiRoute::Generate, br#"{"text":"Hello world, again"}"#),
            (
                ApiRoute::ChatCompletions,
                br#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
            ),
        ];
        for (route, body) in cases {
            let parsed = crate::request::parse_request(route, body).unwrap();
            let ids = t.tokenize_parsed(&parsed, body);
            assert!(ids.is_some(), "{route:?}");
            assert_eq!(ids, t.tokenize_request(route, body), "{route:?}");
        }
    }
}

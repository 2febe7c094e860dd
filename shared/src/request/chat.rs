//! Conversations (chat `messages`, Responses `input` items) rendered into one prompt text.
//!
//! Every message renders as `<|role|>\n` + content + `\n`, in order, so two conversations that
//! share a system prompt and their early turns share a text prefix of at least those bytes,
//! which is what prefix-aware policies key on. Content parts are concatenated: text parts as
//! they are, other parts as a short fixed placeholder (`<image>`, `<audio>`, ...). Assistant
//! tool calls render as `<|tool_call|>` + function name + `\n` + arguments + `\n`; tool results
//! render like any message with their role.
//!
//! The `tools` definitions are deliberately left out: they are usually identical across a
//! deployment's requests and engines place them differently in their chat templates, so they
//! add bytes to hash without telling requests apart. The rendering is not the engine's chat
//! template; it only has to be stable and prefix-preserving.
//!
//! Rendering makes one allocation: a first pass sums the piece lengths, a second copies them.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::de::Text;

/// Message content: a string or a list of typed parts.
#[derive(Debug)]
pub(super) enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

/// One content part (`{"type":"text","text":..}`, `{"type":"image_url",..}`, `input_text`...).
#[derive(Debug, Deserialize)]
pub(super) struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    text: Option<Text<'a>>,
    #[serde(borrow)]
    refusal: Option<Text<'a>>,
}

impl Part<'_> {
    fn emit<F: FnMut(&str) + ?Sized>(&self, out: &mut F) {
        match (&self.text, &self.refusal) {
            (Some(t), _) | (None, Some(t)) => out(&t.0),
            (None, None) => out(placeholder(self.kind.as_ref().map_or("", |k| &k.0))),
        }
    }
}

/// The fixed stand-in for a non-text part.
fn placeholder(kind: &str) -> &'static str {
    if kind.contains("image") {
        "<image>"
    } else if kind.contains("audio") {
        "<audio>"
    } else if kind.contains("video") {
        "<video>"
    } else if kind.contains("file") {
        "<file>"
    } else {
        "<media>"
    }
}

impl Content<'_> {
    fn emit<F: FnMut(&str) + ?Sized>(&self, out: &mut F) {
        match self {
            Content::Text(t) => out(t),
            Content::Parts(parts) => parts.iter().for_each(|p| p.emit(out)),
        }
    }
}

/// A chat message: role, optional content, optional assistant tool calls.
#[derive(Debug, Deserialize)]
pub(super) struct ChatMessage<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

/// `{"id":..,"type":"function","function":{"name":..,"arguments":".."}}`
#[derive(Debug, Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<FunctionCall<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    arguments: Option<Text<'a>>,
}

fn emit_tool_call<F: FnMut(&str) + ?Sized>(
    name: Option<&Text<'_>>,
    args: Option<&Text<'_>>,
    out: &mut F,
) {
    out("<|tool_call|>");
    out(name.map_or("", |n| &n.0));
    out("\n");
    out(args.map_or("", |a| &a.0));
    out("\n");
}

fn emit_message<F: FnMut(&str) + ?Sized>(role: &str, content: Option<&Content<'_>>, out: &mut F) {
    out("<|");
    out(role);
    out("|>\n");
    if let Some(c) = content {
        c.emit(out);
    }
    out("\n");
}

impl ChatMessage<'_> {
    fn emit<F: FnMut(&str) + ?Sized>(&self, out: &mut F) {
        emit_message(&self.role.0, self.content.as_ref(), out);
        for call in self.tool_calls.iter().flatten() {
            if let Some(f) = &call.function {
                emit_tool_call(f.name.as_ref(), f.arguments.as_ref(), out);
            }
        }
    }
}

/// Responses API `input`: a string (one user message) or a list of input items.
#[derive(Debug)]
pub(super) enum ResponsesInput<'a> {
    Text(Cow<'a, str>),
    Items(Vec<InputItem<'a>>),
}

/// One Responses input item: a message (`role` + `content`), a `function_call`
/// (`name` + `arguments`), a `function_call_output` (`output`) or another typed item.
#[derive(Debug, Deserialize)]
pub(super) struct InputItem<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    role: Option<Text<'a>>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    arguments: Option<Text<'a>>,
    #[serde(borrow)]
    output: Option<Content<'a>>,
}

impl InputItem<'_> {
    fn emit<F: FnMut(&str) + ?Sized>(&self, out: &mut F) {
        let kind = self.kind.as_ref().map_or("message", |k| &k.0);
        if let Some(role) = &self.role {
            emit_message(&role.0, self.content.as_ref(), out);
        } else if kind == "function_call" {
            emit_tool_call(self.name.as_ref(), self.arguments.as_ref(), out);
        } else if kind == "function_call_output" {
            emit_message("tool", self.output.as_ref(), out);
        } else {
            emit_message(kind, self.content.as_ref().or(self.output.as_ref()), out);
        }
    }
}

/// Renders `pieces` with one allocation: measure, then copy.
fn render_with<P: Fn(&mut dyn FnMut(&str))>(pieces: P) -> String {
    let mut len = 0;
    pieces(&mut |s: &str| len += s.len());
    let mut out = String::with_capacity(len);
    pieces(&mut |s: &str| out.push_str(s));
    out
}

/// Renders chat `messages` into the prompt text.
pub(super) fn render_chat(messages: &[ChatMessage<'_>]) -> String {
    render_with(|out| messages.iter().for_each(|m| m.emit(&mut *out)))
}

/// Renders Responses `instructions` (as a leading system message) and `input`.
pub(super) fn render_responses(instructions: Option<&str>, input: &ResponsesInput<'_>) -> String {
    render_with(|out| {
        if let Some(sys) = instructions {
            emit_message(
                "system",
                Some(&Content::Text(Cow::Borrowed(sys))),
                &mut *out,
            );
        }
        match input {
            ResponsesInput::Text(t) => {
                emit_message("user", Some(&Content::Text(Cow::Borrowed(t))), &mut *out)
            }
            ResponsesInput::Items(items) => items.iter().for_each(|i| i.emit(&mut *out)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> String {
        let msgs: Vec<ChatMessage> = serde_json::from_str(json).unwrap();
        render_chat(&msgs)
    }

    #[test]
    fn renders_roles_in_order() {
        let text =
            chat(r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#);
        assert_eq!(text, "<|system|>\nBe brief.\n<|user|>\nHi\n");
        assert_eq!(text.capacity(), text.len());
    }

    #[test]
    fn renders_parts_tool_calls_and_tool_results() {
        let text = chat(
            r#"[{"role":"user","content":[{"type":"text","text":"What is in "},
                 {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                 {"type":"text","text":"?"}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
                 "function":{"name":"lookup","arguments":"{\"q\":\"cat\"}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"a cat"}]"#,
        );
        assert_eq!(
            text,
            "<|user|>\nWhat is in <image>?\n<|assistant|>\n\n<|tool_call|>lookup\n{\"q\":\"cat\"}\n\
             <|tool|>\na cat\n"
        );
    }

    #[test]
    fn renders_responses_items() {
        let items: Vec<InputItem> = serde_json::from_str(
            r#"[{"role":"user","content":[{"type":"input_text","text":"Weather?"},
                 {"type":"input_file","file_id":"f"}]},
                {"type":"function_call","call_id":"c","name":"weather","arguments":"{}"},
                {"type":"function_call_output","call_id":"c","output":"sunny"},
                {"type":"reasoning","summary":[]}]"#,
        )
        .unwrap();
        let text = render_responses(Some("Sys"), &ResponsesInput::Items(items));
        assert_eq!(
            text,
            "<|system|>\nSys\n<|user|>\nWeather?<file>\n<|tool_call|>weather\n{}\n\
             <|tool|>\nsunny\n<|reasoning|>\n\n"
        );
        let text = render_responses(None, &ResponsesInput::Text("hello".into()));
        assert_eq!(text, "<|user|>\nhello\n");
    }
}

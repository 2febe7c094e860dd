//! Server-sent events of OpenAI-compatible streaming responses.
//!
//! [`SseDecoder`] turns arbitrary byte reads into `data:` payloads; [`parse_chunk`] reads one
//! payload (chat `delta.content` or completions `text`, and the final `usage`).

use serde::Deserialize;

/// Incremental SSE decoder: feed bytes as they arrive, get complete events' data back.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`, returning the data of every event completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, &mut events);
            start = end + 1;
        }
        self.buf.drain(..start);
        events
    }

    /// Ends the stream: returns the data of a last event not followed by a blank line.
    pub fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(line.trim_end_matches('\r'), &mut events);
        }
        events.extend(self.data.take());
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            events.extend(self.data.take());
        } else if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        // Comments (":") and other fields (event, id, retry) carry nothing we need.
    }
}

/// Token usage reported by the engine in the final chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt tokens served from the prefix cache, when reported.
    #[serde(default, deserialize_with = "cached_tokens")]
    #[serde(rename = "prompt_tokens_details")]
    pub cached_tokens: Option<u64>,
}

fn cached_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
    }
    Ok(Option::<Details>::deserialize(d)?.and_then(|x| x.cached_tokens))
}

/// What one SSE payload means.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream is complete.
    Done,
    /// A JSON chunk: generated text (possibly empty) and usage when present.
    Data {
        /// Text of all choices in this chunk.
        content: String,
        /// Usage, in the final chunk with `include_usage`.
        usage: Option<Usage>,
    },
    /// An error object sent inside the stream.
    Error(String),
}

#[derive(Deserialize)]
struct ChunkJson {
    #[serde(default)]
    choices: Vec<ChoiceJson>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceJson {
    text: Option<String>,
    delta: Option<DeltaJson>,
}

#[derive(Deserialize)]
struct DeltaJson {
    content: Option<String>,
}

/// Parses one payload of a chat or completions stream.
pub fn parse_chunk(data: &str) -> Result<Chunk, serde_json::Error> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let json: ChunkJson = serde_json::from_str(data)?;
    if let Some(err) = json.error {
        return Ok(Chunk::Error(err.to_string()));
    }
    let mut content = String::new();
    for choice in json.choices {
        if let Some(t) = choice.text {
            content.push_str(&t);
        }
        if let Some(c) = choice.delta.and_then(|d| d.content) {
            content.push_str(&c);
        }
    }
    Ok(Chunk::Data {
        content,
        usage: json.usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\"}}]}\n\n\
                      : keep-alive comment\r\n\r\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\
                      \"prompt_tokens_details\":{\"cached_tokens\":8}}}\r\n\r\n\
                      data: [DONE]\n\n";
        let bytes = stream.as_bytes();
        // Every split point, including inside the two-byte UTF-8 character.
        for split in 0..bytes.len() {
            let mut d = SseDecoder::new();
            let mut events = d.feed(&bytes[..split]);
            events.extend(d.feed(&bytes[split..]));
            events.extend(d.finish());
            assert_eq!(events.len(), 3, "split at {split}");
            assert_eq!(
                parse_chunk(&events[0]).ok(),
                Some(Chunk::Data {
                    content: "h\u{e9}".into(),
                    usage: None
                })
            );
            let usage = Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                cached_tokens: Some(8),
            };
            assert_eq!(
                parse_chunk(&events[1]).ok(),
                Some(Chunk::Data {
                    content: String::new(),
                    usage: Some(usage)
                })
            );
            assert_eq!(parse_chunk(&events[2]).ok(), Some(Chunk::Done));
        }
    }

    #[test]
    fn completions_text_multiline_data_and_unterminated_event() {
        let mut d = SseDecoder::new();
        let events =
            d.feed(b"data: {\"choices\":[{\"text\":\"ab\"}],\"usage\":null}\n\ndata: a\ndata: b");
        assert_eq!(events.len(), 1);
        assert_eq!(
            parse_chunk(&events[0]).ok(),
            Some(Chunk::Data {
                content: "ab".into(),
                usage: None
            })
        );
        assert_eq!(d.finish(), vec!["a\nb".to_string()]);
    }

    #[test]
    fn errors_and_garbage() {
        assert!(matches!(
            parse_chunk("{\"error\":{\"message\":\"overloaded\"}}"),
            Ok(Chunk::Error(m)) if m.contains("overloaded")
        ));
        assert!(parse_chunk("not json").is_err());
        let u: Usage = serde_json::from_str("{\"prompt_tokens\":3,\"completion_tokens\":1}")
            .unwrap_or_default();
        assert_eq!(u.cached_tokens, None);
        assert_eq!(u.prompt_tokens, 3);
    }
}

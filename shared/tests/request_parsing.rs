//! Request parsing over realistic bodies of every supported API, error mapping, borrowing and
//! robustness against arbitrary input.

use std::borrow::Cow;

use kvroute_core::{ApiRoute, ParsedRequest, Prompt, RequestError, request::parse_request};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(route: ApiRoute, body: &str) -> Result<ParsedRequest<'_>, RequestError> {
    parse_request(route, body.as_bytes())
}

fn prompt_text<'a>(p: &'a ParsedRequest<'_>) -> &'a str {
    match &p.prompt {
        Prompt::Text(t) => t,
        Prompt::Tokens(t) => panic!("expected text, got tokens {t:?}"),
    }
}

#[test]
fn chat_with_tools_extracts_every_field() {
    let body = fixture("chat_tools.json");
    let p = parse_request(ApiRoute::ChatCompletions, &body).unwrap();
    assert_eq!(p.route, ApiRoute::ChatCompletions);
    assert_eq!(p.model.as_deref(), Some("meta-llama/Llama-3.1-8B-Instruct"));
    assert!(matches!(p.model, Some(Cow::Borrowed(_))));
    assert!(p.stream);
    assert_eq!(p.max_tokens, Some(256), "max_completion_tokens wins");
    assert_eq!(p.user.as_deref(), Some("user-1234"));
    assert_eq!(p.cache_salt.as_deref(), Some("tenant-a"));
    assert_eq!(p.lora, None);
    let text = prompt_text(&p);
    assert!(text.starts_with("<|system|>\nYou are a helpful assistant.\n<|user|>\nWhat's"));
    assert!(text.contains("<|tool_call|>get_current_weather\n{\"location\": \"Boston, MA\"}\n"));
    assert!(text.ends_with("<|tool|>\n{\"temperature\": 22, \"unit\": \"celsius\"}\n"));
    assert!(
        !text.contains("Get the current weather"),
        "tool definitions are not rendered"
    );
}

#[test]
fn chat_multimodal_keeps_utf8_and_uses_placeholders() {
    let body = fixture("chat_multimodal.json");
    let p = parse_request(ApiRoute::ChatCompletions, &body).unwrap();
    assert_eq!(
        prompt_text(&p),
        "<|user|>\nWhat’s in this image? Réponds en français 🙂<image>\n"
    );
    assert_eq!(p.max_tokens, Some(300));
    assert!(!p.stream);
}

#[test]
fn chat_prefix_is_shared_by_conversations_with_the_same_start() {
    let a = r#"{"model":"m","messages":[{"role":"system","content":"Rules: be kind."},
        {"role":"user","content":"Hello"},{"role":"assistant","content":"Hi! How can I help?"},
        {"role":"user","content":"Tell me about cats."}]}"#;
    let b = r#"{"model":"m","messages":[{"role":"system","content":"Rules: be kind."},
        {"role":"user","content":"Hello"},{"role":"assistant","content":"Hi! How can I help?"},
        {"role":"user","content":"Tell me about dogs, please."}]}"#;
    let (pa, pb) = (
        parse(ApiRoute::ChatCompletions, a).unwrap(),
        parse(ApiRoute::ChatCompletions, b).unwrap(),
    );
    let shared_turns = "Rules: be kind.".len() + "Hello".len() + "Hi! How can I help?".len();
    let common = prompt_text(&pa)
        .bytes()
        .zip(prompt_text(&pb).bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common >= shared_turns, "{common} < {shared_turns}");
    assert!(prompt_text(&pb).starts_with(&prompt_text(&pa)[..common]));
}

#[test]
fn completions_string_prompt_is_borrowed_even_when_large() {
    let prompt = "lorem ipsum dolor sit amet ".repeat(220 * 1024 / 27);
    let body = format!(r#"{{"model":"m","prompt":"{prompt}","max_tokens":5,"stream":true}}"#);
    assert!(body.len() > 220 * 1000);
    let p = parse(ApiRoute::Completions, &body).unwrap();
    assert!(matches!(p.prompt, Prompt::Text(Cow::Borrowed(_))));
    assert_eq!(p.prompt.len(), prompt.len());
    assert_eq!(p.max_tokens, Some(5));
    assert!(p.stream);
}

#[test]
fn completions_prompt_shapes() {
    let p = parse(
        ApiRoute::Completions,
        r#"{"model":"m","prompt":["first","second"]}"#,
    )
    .unwrap();
    assert_eq!(p.prompt, Prompt::Text("first".into()));
    let p = parse(
        ApiRoute::Completions,
        r#"{"model":"m","prompt":[1,2,4294967295]}"#,
    )
    .unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![1, 2, u32::MAX]));
    let body = fixture("completions_tokens_batch.json");
    let p = parse_request(ApiRoute::Completions, &body).unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![15496, 11, 616, 3290, 318]));
    assert_eq!(p.max_tokens, Some(16));
    let p = parse(
        ApiRoute::Completions,
        r#"{"model":"m","prompt":"a\"b\u00e9"}"#,
    )
    .unwrap();
    assert_eq!(p.prompt, Prompt::Text("a\"bé".into()));
    let p = parse(ApiRoute::Completions, r#"{"model":"m","prompt":""}"#).unwrap();
    assert!(p.prompt.is_empty(), "an empty prompt is left to the engine");
}

#[test]
fn embeddings_take_the_first_input() {
    let body = fixture("embeddings.json");
    let p = parse_request(ApiRoute::Embeddings, &body).unwrap();
    assert_eq!(
        p.prompt,
        Prompt::Text("The food was delicious and the waiter...".into())
    );
    assert_eq!(p.user.as_deref(), Some("u-9"));
    let p = parse(ApiRoute::Embeddings, r#"{"model":"e","input":[[7,8],[9]]}"#).unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![7, 8]));
    let err = parse(
        ApiRoute::Embeddings,
        r#"{"model":"e","input":[{"role":"user"}]}"#,
    );
    assert!(matches!(
        err,
        Err(RequestError::InvalidField { field: "input", .. })
    ));
}

#[test]
fn responses_render_instructions_then_items() {
    let body = fixture("responses.json");
    let p = parse_request(ApiRoute::Responses, &body).unwrap();
    assert_eq!(p.max_tokens, Some(512));
    assert_eq!(
        prompt_text(&p),
        "<|system|>\nYou are a coding assistant that talks like a pirate.\n\
         <|user|>\nHow do I check if a Python object is an instance of a class?\n\
         <|tool_call|>search_docs\n{\"q\":\"isinstance\"}\n<|tool|>\nisinstance(obj, cls)\n"
    );
    let p = parse(
        ApiRoute::Responses,
        r#"{"model":"m","input":"Tell me a joke"}"#,
    )
    .unwrap();
    assert_eq!(prompt_text(&p), "<|user|>\nTell me a joke\n");
    // The same conversation through chat and Responses renders the same text.
    let chat = parse(
        ApiRoute::ChatCompletions,
        r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"Q"}]}"#,
    )
    .unwrap();
    let resp = parse(
        ApiRoute::Responses,
        r#"{"model":"m","instructions":"S","input":"Q"}"#,
    )
    .unwrap();
    assert_eq!(chat.prompt, resp.prompt);
}

#[test]
fn sglang_generate_text_and_input_ids() {
    let body = fixture("generate.json");
    let p = parse_request(ApiRoute::Generate, &body).unwrap();
    assert_eq!(p.model, None);
    assert_eq!(p.prompt, Prompt::Text("The capital of France is".into()));
    assert!(matches!(p.prompt, Prompt::Text(Cow::Borrowed(_))));
    assert_eq!(p.max_tokens, Some(32));
    assert_eq!(p.lora.as_deref(), Some("sql-lora"));
    assert!(p.stream);
    let p = parse(
        ApiRoute::Generate,
        r#"{"input_ids":[1,2,3],"sampling_params":{"max_new_tokens":8},"lora_path":"a"}"#,
    )
    .unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![1, 2, 3]));
    assert_eq!(p.lora.as_deref(), Some("a"));
    let p = parse(ApiRoute::Generate, r#"{"input_ids":[[5],[6]]}"#).unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![5]));
    assert_eq!(p.max_tokens, None);
}

#[test]
fn unknown_fields_of_any_shape_are_ignored() {
    // Fields of other APIs are unknown here too, whatever their type.
    let body = r#"{"model":"m","messages":[{"role":"user","content":"q"}],"prompt":5,
        "input":{},"text":[1],"input_ids":"x","sampling_params":"x","max_output_tokens":-1}"#;
    assert!(parse(ApiRoute::ChatCompletions, body).is_ok());
    let body = r#"{"model":"m","prompt":"p","messages":3,"instructions":[]}"#;
    assert!(parse(ApiRoute::Completions, body).is_ok());
    let body = r#"{"text":"t","model":"m","user":5,"cache_salt":[],"max_tokens":"x"}"#;
    assert!(parse(ApiRoute::Generate, body).is_ok());
    let body = r#"{"x-vendor":{"deep":[1,{"a":null}]},"model":"m","prompt":"p",
        "priority":-3,"structured_outputs":{"regex":"[a-z]+"},"stream":null,"max_tokens":null}"#;
    let p = parse(ApiRoute::Completions, body).unwrap();
    assert_eq!(p.prompt, Prompt::Text("p".into()));
    assert!(!p.stream);
    assert_eq!(p.max_tokens, None);
}

fn assert_invalid(route: ApiRoute, body: &str, field: &str) -> RequestError {
    let err = parse(route, body).unwrap_err();
    match &err {
        RequestError::InvalidField { field: f, reason } => {
            assert_eq!(*f, field, "{body}: {reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("{body}: expected InvalidField({field}), got {other:?}"),
    }
    assert_eq!(err.status(), 400);
    assert_eq!(err.to_openai().param.as_deref(), Some(field));
    err
}

#[test]
fn wrong_types_name_their_field() {
    use ApiRoute::*;
    assert_invalid(
        ChatCompletions,
        r#"{"model":"m","messages":{"role":"user"}}"#,
        "messages",
    );
    assert_invalid(
        ChatCompletions,
        r#"{"model":"m","messages":[]}"#,
        "messages",
    );
    assert_invalid(
        ChatCompletions,
        r#"{"model":"m","messages":[{"content":"x"}]}"#,
        "messages",
    );
    assert_invalid(
        ChatCompletions,
        r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
        "stream",
    );
    assert_invalid(
        ChatCompletions,
        r#"{"model":7,"messages":[{"role":"user"}]}"#,
        "model",
    );
    let err = assert_invalid(
        Completions,
        r#"{"model":"m","prompt":"p","max_tokens":-1}"#,
        "max_tokens",
    );
    assert!(err.to_string().contains("-1"), "{err}");
    assert_invalid(
        Completions,
        r#"{"model":"m","prompt":"p","max_completion_tokens":1.5}"#,
        "max_completion_tokens",
    );
    let err = assert_invalid(Completions, r#"{"model":"m","prompt":[1,-2]}"#, "prompt");
    assert!(err.to_string().contains("token id -2"), "{err}");
    assert_invalid(
        Completions,
        r#"{"model":"m","prompt":[4294967296]}"#,
        "prompt",
    );
    assert_invalid(Completions, r#"{"model":"m","prompt":[]}"#, "prompt");
    assert_invalid(
        Completions,
        r#"{"model":"m","prompt":{"text":"x"}}"#,
        "prompt",
    );
    assert_invalid(Responses, r#"{"model":"m","input":5}"#, "input");
    assert_invalid(Responses, r#"{"model":"m","input":[1,2]}"#, "input");
    assert_invalid(
        Responses,
        r#"{"model":"m","input":"x","max_output_tokens":"9"}"#,
        "max_output_tokens",
    );
    assert_invalid(Generate, r#"{"text":"a","input_ids":[1]}"#, "input_ids");
    assert_invalid(Generate, r#"{"text":[1,2]}"#, "text");
    assert_invalid(Generate, r#"{"input_ids":"abc"}"#, "input_ids");
    assert_invalid(
        Generate,
        r#"{"text":"a","sampling_params":{"max_new_tokens":-5}}"#,
        "sampling_params",
    );
    assert_invalid(Generate, r#"{"text":"a","lora_path":3}"#, "lora_path");
}

#[test]
fn missing_fields_are_reported() {
    use ApiRoute::*;
    let cases: [(ApiRoute, &str, &str); 7] = [
        (
            ChatCompletions,
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            "model",
        ),
        (ChatCompletions, r#"{"model":"m"}"#, "messages"),
        (Completions, r#"{"model":"m","messages":[]}"#, "prompt"),
        (Embeddings, r#"{"model":"m","prompt":"x"}"#, "input"),
        (Responses, r#"{"model":"m","instructions":"x"}"#, "input"),
        (Responses, r#"{"input":"x"}"#, "model"),
        (Generate, r#"{"sampling_params":{}}"#, "text"),
    ];
    for (route, body, field) in cases {
        let err = parse(route, body).unwrap_err();
        assert_eq!(err, RequestError::MissingField(field), "{body}");
        assert_eq!(err.status(), 400);
        assert_eq!(err.to_openai().param.as_deref(), Some(field));
    }
    // `model` is optional on SGLang's native API.
    assert!(parse(Generate, r#"{"text":"x"}"#).unwrap().model.is_none());
}

#[test]
fn malformed_json_and_non_objects() {
    for body in [
        &b""[..],
        b"{",
        b"{\"model\":}",
        b"{\"model\":\"m\"} x",
        b"nul",
        b"{\"a\":\"\xff\"}",
    ] {
        let err = parse_request(ApiRoute::Completions, body).unwrap_err();
        assert!(
            matches!(err, RequestError::InvalidJson(_)),
            "{body:?}: {err:?}"
        );
        assert_eq!(err.status(), 400);
        assert_eq!(err.to_openai().param, None);
    }
    let err = parse(ApiRoute::Completions, r#"{"model":"m", "prompt": tru}"#).unwrap_err();
    assert!(err.to_string().contains("line 1 column"), "{err}");
    for body in ["[]", "[{\"model\":\"m\"}]", "\"s\"", "3", "null", "  true"] {
        assert_eq!(
            parse(ApiRoute::ChatCompletions, body),
            Err(RequestError::NotAnObject),
            "{body}"
        );
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // As the whole body, inside a field that is read, and unterminated: errors.
    assert!(matches!(
        parse(ApiRoute::Completions, &nested),
        Err(RequestError::InvalidJson(_) | RequestError::NotAnObject)
    ));
    let body = format!(r#"{{"model":"m","prompt":{nested}}}"#);
    assert!(parse(ApiRoute::Completions, &body).is_err());
    let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":{nested}}}]}}"#);
    assert!(parse(ApiRoute::ChatCompletions, &body).is_err());
    let body = format!(
        r#"{{"model":"m","prompt":"p","extra":{}"#,
        "[".repeat(depth)
    );
    assert!(matches!(
        parse(ApiRoute::Completions, &body),
        Err(RequestError::InvalidJson(_))
    ));
    // Inside a skipped field the value is only scanned (without recursion): no crash either.
    let body = format!(r#"{{"model":"m","prompt":"p","extra":{nested}}}"#);
    let _ = parse(ApiRoute::Completions, &body);
}

#[test]
fn escaped_strings_are_owned_unescaped() {
    let p = parse(
        ApiRoute::Completions,
        r#"{"model":"m\/x","prompt":"tab\there","user":"\u00fc"}"#,
    )
    .unwrap();
    assert_eq!(p.model.as_deref(), Some("m/x"));
    assert_eq!(p.prompt, Prompt::Text("tab\there".into()));
    assert!(matches!(p.prompt, Prompt::Text(Cow::Owned(_))));
    assert_eq!(p.user.as_deref(), Some("ü"));
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![Just("user"), Just("text"), Just("image_url")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("model".to_string()),
            Just("messages".to_string()),
            Just("prompt".to_string()),
            Just("input".to_string()),
            Just("text".to_string()),
            Just("input_ids".to_string()),
            Just("role".to_string()),
            Just("content".to_string()),
            Just("type".to_string()),
            Just("sampling_params".to_string()),
            Just("max_new_tokens".to_string()),
            Just("lora_path".to_string()),
            Just("tool_calls".to_string()),
            Just("function".to_string()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const ROUTES: [ApiRoute; 5] = [
    ApiRoute::ChatCompletions,
    ApiRoute::Completions,
    ApiRoute::Embeddings,
    ApiRoute::Responses,
    ApiRoute::Generate,
];

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for route in ROUTES {
            let _ = parse_request(route, &body);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        for route in ROUTES {
            match parse_request(route, &body) {
                Ok(p) => prop_assert_eq!(p.route, route),
                Err(e) => {
                    let too_large = matches!(e, RequestError::TooLarge { .. });
                    prop_assert_eq!(e.status(), 400);
                    prop_assert!(!too_large, "{:?}", e);
                }
            }
        }
    }
}

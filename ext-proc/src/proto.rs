//! Builders and readers for the ext_proc protobuf messages.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, StreamedBodyResponse, TrailersResponse, body_mutation,
    processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use kvroute_core::LocalReply;

/// Largest body chunk re-streamed to Envoy in FULL_DUPLEX_STREAMED mode (as the reference
/// endpoint picker does; Envoy recommends at most 64 KiB per message).
pub const MAX_STREAMED_CHUNK: usize = 62_000;

/// `OVERWRITE_IF_EXISTS_OR_ADD` of `HeaderValueOption.HeaderAppendAction`.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// The value of a header: Envoy sends `raw_value`; `value` is read as a fallback.
pub fn header_value(h: &HeaderValue) -> Option<&str> {
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

/// The first header named `name` (lower-case) in `map`.
pub fn find_header<'a>(map: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    map?.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(header_value)
}

/// A string attribute Envoy sent in `ProcessingRequest.attributes` (keyed by the filter's
/// name, each a Struct of attribute name to value), from whichever entry holds it.
pub fn attribute_string(
    attributes: &std::collections::HashMap<String, Struct>,
    name: &str,
) -> Option<String> {
    attributes
        .values()
        .find_map(|s| match s.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        })
}

/// A header set on the request, replacing any existing value.
pub fn set_header(key: &str, value: impl Into<Vec<u8>>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.into(),
            ..HeaderValue::default()
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
        ..HeaderValueOption::default()
    }
}

/// A string value read from `filter_metadata[namespace][key]`: a string, or the strings of a
/// list (joined by `,`).
pub fn metadata_strings(md: Option<&Metadata>, namespace: &str, key: &str) -> Option<Vec<String>> {
    let value = md?.filter_metadata.get(namespace)?.fields.get(key)?;
    match value.kind.as_ref()? {
        Kind::StringValue(s) => Some(split_list(s)),
        Kind::ListValue(list) => Some(
            list.values
                .iter()
                .filter_map(|v| match v.kind.as_ref() {
                    Some(Kind::StringValue(s)) => Some(split_list(s)),
                    _ => None,
                })
                .flatten()
                .collect(),
        ),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `{namespace: {key: value}}` as a protobuf Struct, for `ProcessingResponse.dynamic_metadata`.
pub fn destination_metadata(namespace: &str, key: &str, value: &str) -> Struct {
    let inner = Struct {
        fields: [(
            key.to_owned(),
            Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            },
        )]
        .into_iter()
        .collect(),
    };
    Struct {
        fields: [(
            namespace.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// A `CommonResponse` with a header mutation (and nothing else set).
pub fn common(mutation: HeaderMutation, clear_route_cache: bool) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(mutation),
        clear_route_cache,
        ..CommonResponse::default()
    }
}

/// Adds a whole-body replacement (BUFFERED mode) to `common`.
pub fn with_body(mut common: CommonResponse, body: Vec<u8>) -> CommonResponse {
    common.body_mutation = Some(BodyMutation {
        mutation: Some(body_mutation::Mutation::Body(body)),
    });
    common
}

/// A response to request headers.
pub fn request_headers(common: CommonResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        })),
        ..ProcessingResponse::default()
    }
}

/// A response to a (buffered) request body.
pub fn request_body(common: CommonResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
            response: Some(common),
        })),
        ..ProcessingResponse::default()
    }
}

/// A FULL_DUPLEX_STREAMED body chunk sent back to Envoy, on the request or response side.
pub fn streamed_body(
    chunk: Vec<u8>,
    end_of_stream: bool,
    response_side: bool,
) -> ProcessingResponse {
    let body = BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body: chunk,
                        end_of_stream,
                        ..StreamedBodyResponse::default()
                    },
                )),
            }),
            ..CommonResponse::default()
        }),
    };
    ProcessingResponse {
        response: Some(if response_side {
            Response::ResponseBody(body)
        } else {
            Response::RequestBody(body)
        }),
        ..ProcessingResponse::default()
    }
}

/// Re-streams `body` as FULL_DUPLEX_STREAMED request-body chunks of at most
/// [`MAX_STREAMED_CHUNK`] bytes; the last carries `end_of_stream` when `end_of_stream` is set.
/// A body that fits one chunk is moved, not copied; an empty body still produces one (empty)
/// chunk so the stream is ended.
pub fn restream_request_body(body: Vec<u8>, end_of_stream: bool) -> Vec<ProcessingResponse> {
    if body.len() <= MAX_STREAMED_CHUNK {
        return vec![streamed_body(body, end_of_stream, false)];
    }
    let count = body.len().div_ceil(MAX_STREAMED_CHUNK);
    body.chunks(MAX_STREAMED_CHUNK)
        .enumerate()
        .map(|(i, c)| streamed_body(c.to_vec(), end_of_stream && i + 1 == count, false))
        .collect()
}

/// An empty (continue) response to response headers.
pub fn response_headers() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse::default())),
        ..ProcessingResponse::default()
    }
}

/// An empty (continue) response to a buffered or streamed response body.
pub fn response_body() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseBody(BodyResponse::default())),
        ..ProcessingResponse::default()
    }
}

/// An empty response to trailers, on the request or response side.
pub fn trailers(response_side: bool) -> ProcessingResponse {
    let t = TrailersResponse::default();
    ProcessingResponse {
        response: Some(if response_side {
            Response::ResponseTrailers(t)
        } else {
            Response::RequestTrailers(t)
        }),
        ..ProcessingResponse::default()
    }
}

/// A local reply sent by Envoy on the picker's behalf.
pub fn immediate(reply: &LocalReply) -> ProcessingResponse {
    let mut set_headers = vec![set_header("content-type", "application/json")];
    if let Some(secs) = reply.retry_after_secs {
        set_headers.push(set_header("retry-after", secs.to_string()));
    }
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(reply.status),
            }),
            headers: Some(HeaderMutation {
                set_headers,
                remove_headers: Vec::new(),
            }),
            body: reply.body.clone().into_bytes(),
            details: format!("kvroute_{}", reply.status),
            ..ImmediateResponse::default()
        })),
        ..ProcessingResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restreams_in_bounded_chunks() {
        let body: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let msgs = restream_request_body(body.clone(), true);
        assert_eq!(msgs.len(), 3);
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let Some(Response::RequestBody(b)) = &m.response else {
                panic!("not a body response");
            };
            let Some(body_mutation::Mutation::StreamedResponse(s)) = b
                .response
                .as_ref()
                .and_then(|c| c.body_mutation.as_ref())
                .and_then(|m| m.mutation.as_ref())
            else {
                panic!("not a streamed response");
            };
            assert!(s.body.len() <= MAX_STREAMED_CHUNK);
            assert_eq!(s.end_of_stream, i == 2);
            joined.extend_from_slice(&s.body);
        }
        assert_eq!(joined, body);
    }

    #[test]
    fn reads_subset_from_list_or_string() {
        let mut md = Metadata::default();
        let list = Value {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: vec![
                        Value {
                            kind: Some(Kind::StringValue("10.0.0.1:80".into())),
                        },
                        Value {
                            kind: Some(Kind::StringValue("10.0.0.2:80, 10.0.0.3:80".into())),
                        },
                    ],
                },
            )),
        };
        md.filter_metadata.insert(
            "ns".into(),
            Struct {
                fields: [("k".to_owned(), list)].into_iter().collect(),
            },
        );
        assert_eq!(
            metadata_strings(Some(&md), "ns", "k").unwrap(),
            vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        );
        assert!(metadata_strings(Some(&md), "ns", "missing").is_none());
    }
}

//! The msgpack encoding of KV-event batches (vLLM's `KVEventBatch`, also used by SGLang).
//!
//! A batch is `[ts, events]` or `[ts, events, dp_rank]` (older encoders) or a map with `ts`,
//! `events` and `data_parallel_rank`. Each event is either a tagged array whose first element
//! is the event name (`["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
//! lora_id, medium]`, trailing defaults omitted) or a map with a `type` field and named fields.
//! Block hashes are integers (low 64 bits) or byte strings, of which the last 8 bytes are
//! read big-endian, as vLLM does when converting its hashes to integers.

use rmpv::Value;

use super::{KvEvent, KvEventBatch};

/// Why a payload is not a valid event batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not msgpack, or trailing bytes.
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    /// Valid msgpack of the wrong shape.
    #[error("malformed event batch: {0}")]
    Shape(String),
}

/// How events are laid out on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Tagged arrays (`["BlockStored", ...]`), vLLM's historical layout.
    #[default]
    Array,
    /// Maps with a `type` field.
    Map,
}

fn shape(msg: impl Into<String>) -> WireError {
    WireError::Shape(msg.into())
}

/// Decodes one msgpack event batch.
pub fn decode_batch(bytes: &[u8]) -> Result<KvEventBatch, WireError> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value(&mut rd).map_err(|e| WireError::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(WireError::Msgpack(format!("{} trailing bytes", rd.len())));
    }
    batch_from_value(&value)
}

fn batch_from_value(v: &Value) -> Result<KvEventBatch, WireError> {
    let (ts, events, dp_rank) = match v {
        Value::Array(items) => (items.first(), items.get(1), items.get(2)),
        Value::Map(_) => (
            field(v, "ts"),
            field(v, "events"),
            field(v, "data_parallel_rank").or_else(|| field(v, "dp_rank")),
        ),
        _ => return Err(shape("batch is neither an array nor a map")),
    };
    let ts = ts.and_then(Value::as_f64).unwrap_or(0.0);
    let events = events
        .and_then(Value::as_array)
        .ok_or_else(|| shape("batch has no event list"))?
        .iter()
        .map(event_from_value)
        .collect::<Result<Vec<_>, _>>()?;
    let dp_rank = opt(dp_rank)
        .map(|v| v.as_u64().ok_or_else(|| shape("dp_rank is not an integer")))
        .transpose()?
        .map(|r| u32::try_from(r).unwrap_or(u32::MAX));
    Ok(KvEventBatch {
        ts,
        events,
        dp_rank,
    })
}

/// The value of map field `name`.
fn field<'v>(map: &'v Value, name: &str) -> Option<&'v Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// `None` for an absent or nil value.
fn opt(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_nil())
}

/// The fields of an event by position (array layout) or name (map layout).
struct Fields<'v> {
    value: &'v Value,
    is_map: bool,
}

impl<'v> Fields<'v> {
    /// Field `name`, which is element `index` (after the tag) in the array layout.
    fn get(&self, index: usize, name: &str) -> Option<&'v Value> {
        if self.is_map {
            opt(field(self.value, name))
        } else {
            opt(self.value.as_array().and_then(|a| a.get(index + 1)))
        }
    }
}

fn event_from_value(v: &Value) -> Result<KvEvent, WireError> {
    let (tag, is_map) = match v {
        Value::Array(items) => (items.first().and_then(Value::as_str), false),
        Value::Map(_) => (field(v, "type").and_then(Value::as_str), true),
        _ => return Err(shape("event is neither an array nor a map")),
    };
    let f = Fields { value: v, is_map };
    match tag {
        Some("BlockStored") => Ok(KvEvent::BlockStored {
            block_hashes: hashes(f.get(0, "block_hashes"))?,
            parent_block_hash: f.get(1, "parent_block_hash").map(hash).transpose()?,
            token_ids: token_ids(f.get(2, "token_ids"))?,
            block_size: f
                .get(3, "block_size")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| shape("BlockStored without a valid block_size"))?,
            lora_id: f.get(4, "lora_id").and_then(Value::as_u64),
            medium: f
                .get(5, "medium")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        Some("BlockRemoved") => Ok(KvEvent::BlockRemoved {
            block_hashes: hashes(f.get(0, "block_hashes"))?,
            medium: f
                .get(1, "medium")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        Some("AllBlocksCleared") => Ok(KvEvent::AllBlocksCleared),
        Some(other) => Err(shape(format!("unknown event type {other:?}"))),
        None => Err(shape("event without a type")),
    }
}

/// A block hash: an integer (negative ones are read as their two's complement) or bytes.
fn hash(v: &Value) -> Result<u64, WireError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(n) = v.as_i64() {
        return Ok(n as u64);
    }
    if let Some(b) = v.as_slice() {
        let tail = &b[b.len().saturating_sub(8)..];
        return Ok(tail.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)));
    }
    Err(shape("block hash is neither an integer nor bytes"))
}

fn hashes(v: Option<&Value>) -> Result<Vec<u64>, WireError> {
    v.and_then(Value::as_array)
        .ok_or_else(|| shape("block_hashes is not a list"))?
        .iter()
        .map(hash)
        .collect()
}

fn token_ids(v: Option<&Value>) -> Result<Vec<u32>, WireError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    v.as_array()
        .ok_or_else(|| shape("token_ids is not a list"))?
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| shape("token id is not a 32-bit unsigned integer"))
        })
        .collect()
}

/// Encodes a batch (what an engine publishes), in the given event layout.
pub fn encode_batch(batch: &KvEventBatch, encoding: Encoding) -> Vec<u8> {
    let events: Vec<Value> = batch
        .events
        .iter()
        .map(|e| event_to_value(e, encoding))
        .collect();
    let value = match encoding {
        Encoding::Array => {
            let mut items = vec![Value::F64(batch.ts), Value::Array(events)];
            if let Some(rank) = batch.dp_rank {
                items.push(Value::from(rank));
            }
            Value::Array(items)
        }
        Encoding::Map => {
            let mut entries = vec![
                (Value::from("ts"), Value::F64(batch.ts)),
                (Value::from("events"), Value::Array(events)),
            ];
            if let Some(rank) = batch.dp_rank {
                entries.push((Value::from("data_parallel_rank"), Value::from(rank)));
            }
            Value::Map(entries)
        }
    };
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &value);
    out
}

fn event_to_value(e: &KvEvent, encoding: Encoding) -> Value {
    let nullable = |s: &Option<String>| s.as_deref().map_or(Value::Nil, Value::from);
    let list = |hs: &[u64]| Value::Array(hs.iter().map(|&h| Value::from(h)).collect());
    let (tag, fields): (&str, Vec<(&str, Value)>) = match e {
        KvEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_id,
            medium,
        } => (
            "BlockStored",
            vec![
                ("block_hashes", list(block_hashes)),
                (
                    "parent_block_hash",
                    parent_block_hash.map_or(Value::Nil, Value::from),
                ),
                (
                    "token_ids",
                    Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
                ),
                ("block_size", Value::from(*block_size)),
                ("lora_id", lora_id.map_or(Value::Nil, Value::from)),
                ("medium", nullable(medium)),
            ],
        ),
        KvEvent::BlockRemoved {
            block_hashes,
            medium,
        } => (
            "BlockRemoved",
            vec![
                ("block_hashes", list(block_hashes)),
                ("medium", nullable(medium)),
            ],
        ),
        KvEvent::AllBlocksCleared => ("AllBlocksCleared", Vec::new()),
    };
    match encoding {
        Encoding::Array => Value::Array(
            std::iter::once(Value::from(tag))
                .chain(fields.into_iter().map(|(_, v)| v))
                .collect(),
        ),
        Encoding::Map => Value::Map(
            std::iter::once((Value::from("type"), Value::from(tag)))
                .chain(fields.into_iter().map(|(k, v)| (Value::from(k), v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: vec![1, u64::MAX],
            parent_block_hash: None,
            token_ids: vec![1, 2, 3, 4],
            block_size: 2,
            lora_id: None,
            medium: Some("GPU".into()),
        }
    }

    /// `["BlockStored", [1], null, [7, 8], 2, null, "GPU"]` inside `[1.5, [...]]`, written
    /// byte by byte from the msgpack spec.
    const ARRAY_FIXTURE: &[u8] = &[
        0x92, // array(2): the batch
        0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,    // float64 1.5
        0x92, // array(2): events
        0x97, // array(7): BlockStored
        0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o', b'r', b'e', b'd', // tag
        0x91, 0x01, // [1]
        0xc0, // nil parent
        0x92, 0x07, 0x08, // [7, 8]
        0x02, // block_size 2
        0xc0, // nil lora_id
        0xa3, b'G', b'P', b'U', // "GPU"
        0x91, // array(1): AllBlocksCleared
        0xb0, b'A', b'l', b'l', b'B', b'l', b'o', b'c', b'k', b's', b'C', b'l', b'e', b'a', b'r',
        b'e', b'd',
    ];

    /// `{"ts": 2, "events": [{"type": "BlockRemoved", "block_hashes": [bin8], "medium": nil}],
    /// "data_parallel_rank": 3}`, byte by byte; the hash is 8 bytes (0..7) read big-endian.
    const MAP_FIXTURE: &[u8] = &[
        0x83, // map(3)
        0xa2, b't', b's', 0x02, // "ts": 2 (an integer timestamp)
        0xa6, b'e', b'v', b'e', b'n', b't', b's', 0x91, // "events": array(1)
        0x83, // map(3)
        0xa4, b't', b'y', b'p', b'e', // "type"
        0xac, b'B', b'l', b'o', b'c', b'k', b'R', b'e', b'm', b'o', b'v', b'e', b'd', 0xac, b'b',
        b'l', b'o', b'c', b'k', b'_', b'h', b'a', b's', b'h', b'e', b's', // key
        0x91, 0xc4, 0x08, 0, 1, 2, 3, 4, 5, 6, 7, // [bin8]
        0xa6, b'm', b'e', b'd', b'i', b'u', b'm', 0xc0, // "medium": nil
        0xb2, b'd', b'a', b't', b'a', b'_', b'p', b'a', b'r', b'a', b'l', b'l', b'e', b'l', b'_',
        b'r', b'a', b'n', b'k', 0x03,
    ];

    #[test]
    fn decodes_the_tagged_array_fixture() {
        let b = decode_batch(ARRAY_FIXTURE).unwrap();
        assert_eq!(b.ts, 1.5);
        assert_eq!(b.dp_rank, None);
        assert_eq!(
            b.events,
            vec![
                KvEvent::BlockStored {
                    block_hashes: vec![1],
                    parent_block_hash: None,
                    token_ids: vec![7, 8],
                    block_size: 2,
                    lora_id: None,
                    medium: Some("GPU".into()),
                },
                KvEvent::AllBlocksCleared,
            ]
        );
    }

    #[test]
    fn decodes_the_map_fixture_with_byte_hashes() {
        let b = decode_batch(MAP_FIXTURE).unwrap();
        assert_eq!(b.ts, 2.0);
        assert_eq!(b.dp_rank, Some(3));
        assert_eq!(
            b.events,
            vec![KvEvent::BlockRemoved {
                block_hashes: vec![0x0001_0203_0405_0607],
                medium: None,
            }]
        );
    }

    #[test]
    fn both_encodings_round_trip() {
        let batch = KvEventBatch {
            ts: 12.25,
            events: vec![
                stored(),
                KvEvent::BlockRemoved {
                    block_hashes: vec![9],
                    medium: None,
                },
                KvEvent::AllBlocksCleared,
            ],
            dp_rank: Some(1),
        };
        for enc in [Encoding::Array, Encoding::Map] {
            assert_eq!(decode_batch(&encode_batch(&batch, enc)).unwrap(), batch);
        }
    }

    #[test]
    fn older_short_events_and_signed_hashes_are_accepted() {
        // An older BlockStored without lora_id and medium, with a negative (signed) hash.
        let v = Value::Array(vec![
            Value::F64(0.0),
            Value::Array(vec![Value::Array(vec![
                Value::from("BlockStored"),
                Value::Array(vec![Value::from(-1i64)]),
                Value::from(5u64),
                Value::Array(vec![Value::from(1u32)]),
                Value::from(1u32),
            ])]),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let b = decode_batch(&bytes).unwrap();
        let KvEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            lora_id,
            medium,
            ..
        } = &b.events[0]
        else {
            panic!("expected BlockStored");
        };
        assert_eq!(block_hashes, &vec![u64::MAX]);
        assert_eq!(*parent_block_hash, Some(5));
        assert_eq!((*lora_id, medium.as_deref()), (None, None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            &b"\xc1"[..],
            &[0x92, 0x01][..],
            &[0x91, 0x01][..],
            &[0x92, 0x01, 0x91, 0x91, 0xa3, b'N', b'o', b'p'][..],
            &[
                0x92, 0x01, 0x91, 0x92, 0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o', b'r',
                b'e', b'd', 0x01,
            ][..],
        ] {
            assert!(decode_batch(bad).is_err(), "{bad:?}");
        }
        let mut trailing = encode_batch(&KvEventBatch::cleared(), Encoding::Array);
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
    }
}

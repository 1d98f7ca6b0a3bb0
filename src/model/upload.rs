//! Parsing uploads (TSI schedule JSON, NDJSON lines) into validated blocks.
//!
//! The JSON document is deserialized in one pass straight into compact
//! [`Block`]s: each raw block is validated and converted as soon as it is
//! read, unknown fields are skipped without being materialised, so a large
//! body is never held twice in another shape.

use super::time::mjd_to_unix;
use super::InvalidUpload;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Schedule-level fields of an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    /// `schedule_period` as Unix seconds `[start, end)`, when given.
    pub schedule_period: Option<(i64, i64)>,
}

/// A validated block: periods in Unix seconds, non-empty, sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub identity: String,
    pub priority: f64,
    pub scheduled: bool,
    pub periods: Vec<(i64, i64)>,
}

/// A whole parsed JSON document (an upload or an append body).
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// `None` when the body was a bare array of blocks.
    pub header: Option<Header>,
    pub blocks: Vec<Block>,
    pub empty_periods_dropped: u64,
}

/// Running totals over the blocks of an upload or append.
#[derive(Debug, Clone, Default)]
pub struct UploadStats {
    pub blocks: u64,
    pub periods: u64,
    pub empty_periods_dropped: u64,
    pub min_start: Option<i64>,
    pub max_end: Option<i64>,
    pub priority_min: Option<f64>,
    pub priority_max: Option<f64>,
    pub max_period_seconds: i64,
    pub digest: super::BlockDigest,
}

impl UploadStats {
    /// Accounts for one more block.
    pub fn add(&mut self, b: &Block) {
        self.blocks += 1;
        self.periods += b.periods.len() as u64;
        for &(s, e) in &b.periods {
            self.min_start = Some(self.min_start.map_or(s, |m| m.min(s)));
            self.max_end = Some(self.max_end.map_or(e, |m| m.max(e)));
            self.max_period_seconds = self.max_period_seconds.max(e - s);
        }
        self.priority_min = Some(self.priority_min.map_or(b.priority, |m| m.min(b.priority)));
        self.priority_max = Some(self.priority_max.map_or(b.priority, |m| m.max(b.priority)));
        self.digest.add_block(b);
    }
}

// ---------------------------------------------------------------------------
// Raw shapes, deserialized loosely so that validation can name the field.

/// A JSON value where a number is expected; anything else is remembered by
/// its kind so that the error can say what was found.
#[derive(Debug, Clone, Copy)]
enum Loose {
    Number(f64),
    Integer(i128),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Loose, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose::Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Integer(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(Loose::Integer(v.into()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Loose, E> {
                Ok(Loose::Other("a string"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Loose, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Loose, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Loose {
    fn as_f64(self) -> Result<f64, &'static str> {
        match self {
            Loose::Number(v) => Ok(v),
            Loose::Integer(v) => Ok(v as f64),
            Loose::Other(kind) => Err(kind),
        }
    }

    /// Renders an `id` / `original_block_id` value as an identity.
    fn as_identity(self) -> Option<String> {
        match self {
            Loose::Integer(v) => Some(v.to_string()),
            _ => None,
        }
    }
}

/// A string or an integer (identities).
#[derive(Debug, Clone)]
enum IdValue {
    Text(String),
    Other(Loose),
}

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IdValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E>(self, v: &str) -> Result<IdValue, E> {
                Ok(IdValue::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<IdValue, E> {
                Ok(IdValue::Text(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<IdValue, E> {
                Ok(IdValue::Other(Loose::Number(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<IdValue, E> {
                Ok(IdValue::Other(Loose::Integer(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<IdValue, E> {
                Ok(IdValue::Other(Loose::Integer(v.into())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IdValue, E> {
                Ok(IdValue::Other(Loose::Other("a boolean")))
            }
            fn visit_unit<E>(self) -> Result<IdValue, E> {
                Ok(IdValue::Other(Loose::Other("null")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<IdValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IdValue::Other(Loose::Other("a list")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<IdValue, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IdValue::Other(Loose::Other("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

impl IdValue {
    fn identity(&self) -> Option<String> {
        match self {
            IdValue::Text(s) => Some(s.clone()),
            IdValue::Other(l) => l.as_identity(),
        }
    }
}

/// Reads a derived struct from a JSON object only. Serde's derive also takes
/// a list of the fields in declaration order (`[60000, 60001]` as a period,
/// `[5, null, 1]` as a block), which the format does not have: such a body
/// is refused rather than read by position.
#[derive(Debug)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Object)
    }
}

/// A period as written: an [`Object`] of [`PeriodFields`].
type RawPeriod = Object<PeriodFields>;

#[derive(Debug, Deserialize)]
struct PeriodFields {
    start: Option<Loose>,
    stop: Option<Loose>,
    start_mjd: Option<Loose>,
    end_mjd: Option<Loose>,
}

/// A block as written: an [`Object`] of [`BlockFields`].
type RawBlock = Object<BlockFields>;

#[derive(Debug, Deserialize)]
struct BlockFields {
    id: Option<IdValue>,
    original_block_id: Option<IdValue>,
    priority: Option<Loose>,
    visibility_periods: Option<Vec<RawPeriod>>,
    scheduled_period: Option<RawPeriod>,
}

/// The header as written: an [`Object`] of [`HeaderFields`].
type RawHeader = Object<HeaderFields>;

#[derive(Debug, Deserialize)]
struct HeaderFields {
    name: Option<IdValue>,
    schedule_period: Option<RawPeriod>,
}

// ---------------------------------------------------------------------------
// Validation.

/// An MJD field of a period converted to Unix seconds.
fn instant(v: Option<Loose>, field: &str, what: &dyn Fn() -> String) -> Result<i64, String> {
    let v = v.ok_or_else(|| format!("{}: missing `{field}`", what()))?;
    let mjd = v
        .as_f64()
        .map_err(|kind| format!("{}: `{field}` must be an MJD number, got {kind}", what()))?;
    mjd_to_unix(mjd).ok_or_else(|| {
        format!(
            "{}: `{field}` = {mjd} is not a valid MJD (must be finite, within [0, 100000])",
            what()
        )
    })
}

/// A period as `[start, end)` Unix seconds (possibly empty: start == end).
fn period(raw: &RawPeriod, what: &dyn Fn() -> String) -> Result<(i64, i64), String> {
    let raw = &raw.0;
    let (s, e) = if raw.start.is_some() || raw.stop.is_some() {
        (
            instant(raw.start, "start", what)?,
            instant(raw.stop, "stop", what)?,
        )
    } else if raw.start_mjd.is_some() || raw.end_mjd.is_some() {
        (
            instant(raw.start_mjd, "start_mjd", what)?,
            instant(raw.end_mjd, "end_mjd", what)?,
        )
    } else {
        return Err(format!(
            "{}: a period needs `start` and `stop` (or `start_mjd` and `end_mjd`)",
            what()
        ));
    };
    if e < s {
        return Err(format!("{}: stop is before start", what()));
    }
    Ok((s, e))
}

/// Adds a period to `out` unless it is empty, which is counted in `dropped`.
fn keep_non_empty(p: (i64, i64), out: &mut Vec<(i64, i64)>, dropped: &mut u64) {
    if p.1 > p.0 {
        out.push(p);
    } else {
        *dropped += 1;
    }
}

/// Describes a block in error messages: its position and identity if known.
fn block_label(index: usize, identity: Option<&str>) -> String {
    match identity {
        Some(id) => format!("block #{index} (\"{id}\")"),
        None => format!("block #{index}"),
    }
}

/// Validates one raw block; `index` is its position (0-based) in the body.
fn validate_block(raw: RawBlock, index: usize, dropped: &mut u64) -> Result<Block, String> {
    let raw = raw.0;
    let identity = match (&raw.original_block_id, &raw.id) {
        (Some(v), _) => v.identity().ok_or_else(|| {
            format!(
                "{}: `original_block_id` must be a string or an integer",
                block_label(index, None)
            )
        })?,
        (None, Some(v)) => v.identity().ok_or_else(|| {
            format!(
                "{}: `id` must be a string or an integer",
                block_label(index, None)
            )
        })?,
        (None, None) => {
            return Err(format!(
                "{}: missing identity: give `original_block_id` or `id`",
                block_label(index, None)
            ))
        }
    };
    if identity.contains('\0') {
        return Err(format!(
            "{}: the identity contains a NUL character (U+0000), which no store keeps",
            block_label(index, None)
        ));
    }
    let label = block_label(index, Some(&identity));
    let priority = match raw.priority {
        None => return Err(format!("{label}: missing `priority`")),
        Some(v) => v
            .as_f64()
            .map_err(|kind| format!("{label}: `priority` must be a number, got {kind}"))?,
    };
    let mut periods = Vec::with_capacity(raw.visibility_periods.as_ref().map_or(0, Vec::len));
    for (i, p) in raw.visibility_periods.iter().flatten().enumerate() {
        let p = period(p, &|| format!("{label}: visibility_periods[{i}]"))?;
        keep_non_empty(p, &mut periods, dropped);
    }
    let scheduled = match &raw.scheduled_period {
        Some(p) => {
            period(p, &|| format!("{label}: scheduled_period"))?;
            true
        }
        None => false,
    };
    Ok(Block {
        identity,
        priority,
        scheduled,
        periods,
    })
}

fn validate_header(raw: HeaderFields) -> Result<Header, String> {
    let name = match raw.name {
        Some(IdValue::Text(s)) if s.contains('\0') => {
            return Err("`name` contains a NUL character (U+0000), which no store keeps".into())
        }
        Some(IdValue::Text(s)) => s,
        Some(_) => return Err("`name` must be a string".into()),
        None => return Err("missing `name` of the schedule".into()),
    };
    let schedule_period = match &raw.schedule_period {
        Some(p) => Some(period(p, &|| "schedule_period".to_string())?),
        None => None,
    };
    Ok(Header {
        name,
        schedule_period,
    })
}

// ---------------------------------------------------------------------------
// The JSON document.

/// Parses a whole JSON body: an upload document (`{"name", "blocks", …}`,
/// `with_header`) or an append body (a bare array of blocks, or an object
/// with `blocks`, whose `name` and `schedule_period` are ignored like any
/// other member: an append never changes them).
pub fn parse_document(body: &[u8], with_header: bool) -> Result<ParsedDocument, InvalidUpload> {
    let current = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = de
        .deserialize_any(DocVisitor {
            current: &current,
            with_header,
        })
        .map_err(|e| block_json_error(e, current.get()))?;
    de.end().map_err(json_error)?;
    finish_document(raw)
}

/// Like [`json_error`], naming the block being read when the error is not
/// a syntax error and does not name it already.
fn block_json_error(e: serde_json::Error, block: Option<usize>) -> InvalidUpload {
    let err = json_error(e);
    match block {
        Some(i)
            if !err.detail.starts_with("malformed JSON") && !err.detail.starts_with("block #") =>
        {
            InvalidUpload::new(format!("block #{i}: {}", err.detail))
        }
        _ => err,
    }
}

fn json_error(e: serde_json::Error) -> InvalidUpload {
    let text = e.to_string();
    if e.is_syntax() || e.is_eof() {
        InvalidUpload::new(format!("malformed JSON: {text}"))
    } else {
        InvalidUpload::new(text)
    }
}

struct RawDocument {
    header: Option<RawHeaderParts>,
    blocks: Option<Vec<Block>>,
    possible: Vec<(String, Vec<RawPeriod>)>,
    dropped: u64,
}

#[derive(Default)]
struct RawHeaderParts {
    name: Option<IdValue>,
    schedule_period: Option<RawPeriod>,
}

struct DocVisitor<'a> {
    /// Index of the block being read, for error messages.
    current: &'a Cell<Option<usize>>,
    /// Whether the schedule-level members are read (an upload) or skipped
    /// (an append).
    with_header: bool,
}

impl<'de> Visitor<'de> for DocVisitor<'_> {
    type Value = RawDocument;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a schedule object with `name` and `blocks`, or a list of blocks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawDocument, A::Error> {
        let mut dropped = 0;
        let blocks = BlocksVisitor {
            dropped: &mut dropped,
            current: self.current,
        }
        .visit_seq(seq)?;
        Ok(RawDocument {
            header: None,
            blocks: Some(blocks),
            possible: Vec::new(),
            dropped,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDocument, A::Error> {
        let mut header = RawHeaderParts::default();
        let mut blocks = None;
        let mut possible = Vec::new();
        let mut dropped = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "name" if self.with_header => header.name = map.next_value()?,
                "schedule_period" if self.with_header => {
                    header.schedule_period = map.next_value()?
                }
                "blocks" => {
                    blocks = Some(map.next_value_seed(BlocksVisitor {
                        dropped: &mut dropped,
                        current: self.current,
                    })?)
                }
                "possible_periods" => {
                    let m: Option<HashMap<String, Vec<RawPeriod>>> = map.next_value()?;
                    possible = m.unwrap_or_default().into_iter().collect();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RawDocument {
            header: self.with_header.then_some(header),
            blocks,
            possible,
            dropped,
        })
    }
}

/// Reads the `blocks` list, validating and converting each block as it comes.
struct BlocksVisitor<'a> {
    dropped: &'a mut u64,
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for BlocksVisitor<'_> {
    type Value = Vec<Block>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Block>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BlocksVisitor<'_> {
    type Value = Vec<Block>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`blocks` to be a list of block objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Block>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        loop {
            self.current.set(Some(out.len()));
            let Some(raw) = seq.next_element::<RawBlock>()? else {
                break;
            };
            let b = validate_block(raw, out.len(), self.dropped).map_err(de::Error::custom)?;
            out.push(b);
        }
        self.current.set(None);
        Ok(out)
    }
}

fn finish_document(raw: RawDocument) -> Result<ParsedDocument, InvalidUpload> {
    let header = match raw.header {
        Some(h) if h.name.is_some() || raw.blocks.is_none() || h.schedule_period.is_some() => {
            Some(validate_header(HeaderFields {
                name: h.name,
                schedule_period: h.schedule_period,
            })?)
        }
        _ => None,
    };
    let mut blocks = raw
        .blocks
        .ok_or_else(|| InvalidUpload::new("missing `blocks`: the list of scheduling blocks"))?;
    let mut dropped = raw.dropped;
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        if let Some(first) = index.insert(b.identity.as_str(), i) {
            return Err(InvalidUpload::new(format!(
                "{}: duplicate identity; block #{first} has the same",
                block_label(i, Some(&b.identity))
            )));
        }
    }
    let mut extra: Vec<(usize, Vec<(i64, i64)>)> = Vec::new();
    let mut possible = raw.possible;
    possible.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, periods) in possible {
        let Some(&i) = index.get(key.as_str()) else {
            return Err(InvalidUpload::new(format!(
                "possible_periods[\"{key}\"]: no block has this identity"
            )));
        };
        let mut add = Vec::with_capacity(periods.len());
        for (j, p) in periods.iter().enumerate() {
            let p = period(p, &|| format!("possible_periods[\"{key}\"][{j}]"))?;
            keep_non_empty(p, &mut add, &mut dropped);
        }
        extra.push((i, add));
    }
    drop(index);
    for (i, add) in extra {
        blocks[i].periods.extend(add);
    }
    for b in &mut blocks {
        b.periods.sort_unstable();
    }
    Ok(ParsedDocument {
        header,
        blocks,
        empty_periods_dropped: dropped,
    })
}

// ---------------------------------------------------------------------------
// NDJSON lines.

/// Parses the first NDJSON line: `{"name": …, "schedule_period": …}`.
pub fn parse_header_line(line: &[u8]) -> Result<Header, InvalidUpload> {
    let raw: RawHeader = serde_json::from_slice(line)
        .map_err(|e| InvalidUpload::new(format!("line 1 (the header): {}", json_error(e))))?;
    validate_header(raw.0).map_err(|e| InvalidUpload::new(format!("line 1 (the header): {e}")))
}

/// Parses one NDJSON block line; `line_no` is 1-based, `index` the block's
/// position. Returns the block and how many empty periods it dropped.
pub fn parse_block_line(
    line: &[u8],
    line_no: usize,
    index: usize,
) -> Result<(Block, u64), InvalidUpload> {
    let raw: RawBlock = serde_json::from_slice(line)
        .map_err(|e| InvalidUpload::new(format!("line {line_no}: {}", json_error(e))))?;
    let mut dropped = 0;
    let mut b = validate_block(raw, index, &mut dropped)
        .map_err(|e| InvalidUpload::new(format!("line {line_no}: {e}")))?;
    b.periods.sort_unstable();
    Ok((b, dropped))
}

/// Tracks identities seen so far in a stream, to refuse duplicates. It
/// keeps a hash and a block index per identity rather than another copy of
/// the string: the caller holds the identities and resolves the rare hash
/// match. Identities whose hash collides with a different one are kept
/// whole in a side set, so a collision can never pass for a duplicate.
#[derive(Debug, Default)]
pub struct IdentitySet {
    hasher: std::collections::hash_map::RandomState,
    by_hash: HashMap<u64, u32>,
    collided: HashSet<Box<str>>,
}

impl IdentitySet {
    /// Records identity `id` of block `index`; false when an earlier block
    /// had it. `identity_of` gives the identity of an earlier block.
    pub fn insert<'a>(
        &mut self,
        id: &str,
        index: u32,
        identity_of: impl Fn(u32) -> &'a str,
    ) -> bool {
        use std::collections::hash_map::Entry;
        use std::hash::BuildHasher;
        match self.by_hash.entry(self.hasher.hash_one(id)) {
            Entry::Vacant(v) => {
                v.insert(index);
                true
            }
            Entry::Occupied(o) if identity_of(*o.get()) == id => false,
            Entry::Occupied(_) => self.collided.insert(id.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{
      "name": "example", "schedule_period": {"start_mjd": 60694.0, "end_mjd": 60701.0},
      "dark_periods": [{"start_mjd": 1, "end_mjd": 2}],
      "blocks": [
        {"id": 1, "original_block_id": "b-1", "priority": 9.0, "visibility_periods": [], "scheduled_period": null},
        {"id": 2, "original_block_id": "b-2", "priority": 7.5, "visibility_periods": [],
         "scheduled_period": {"start_mjd": 60695.20, "end_mjd": 60695.24}}
      ],
      "possible_periods": {"b-1": [{"start_mjd": 60694.19, "end_mjd": 60694.24}, {"start_mjd": 60696.12, "end_mjd": 60696.20}],
                           "b-2": [{"start_mjd": 60695.18, "end_mjd": 60695.26}]}
    }"#;

    #[test]
    fn the_tsi_shape_parses_with_possible_periods_merged() {
        let d = parse_document(FIXTURE.as_bytes(), true).unwrap();
        let h = d.header.unwrap();
        assert_eq!(h.schedule_period, Some((1_737_244_800, 1_737_849_600)));
        assert_eq!(d.blocks.len(), 2);
        assert_eq!(d.blocks[0].periods.len(), 2);
        assert!(!d.blocks[0].scheduled);
        assert!(d.blocks[1].scheduled);
    }

    fn err(body: &str) -> String {
        parse_document(body.as_bytes(), true).unwrap_err().detail
    }

    #[test]
    fn refusals_name_the_block_and_the_field() {
        let e = err(
            r#"{"name":"x","blocks":[{"id":1,"priority":1,"visibility_periods":[{"start":2,"stop":1}]}]}"#,
        );
        assert!(
            e.contains("block #0 (\"1\")") && e.contains("visibility_periods[0]"),
            "{e}"
        );
        let e = err(r#"{"name":"x","blocks":[{"id":1}]}"#);
        assert!(e.contains("missing `priority`"), "{e}");
        let e = err(r#"{"name":"x","blocks":[{"priority":1}]}"#);
        assert!(e.contains("missing identity"), "{e}");
        let e = err(
            r#"{"name":"x","blocks":[{"id":1,"priority":1,"visibility_periods":[{"start":"a","stop":1}]}]}"#,
        );
        assert!(e.contains("got a string"), "{e}");
        let e = err(
            r#"{"name":"x","blocks":[{"id":1,"priority":1,"visibility_periods":[{"start":1,"stop":1e6}]}]}"#,
        );
        assert!(e.contains("not a valid MJD"), "{e}");
        let e = err(r#"{"name":"x","blocks":"nope"}"#);
        assert!(e.contains("list of block objects"), "{e}");
        let e = err("{\"name\":\"x\",\n \"blocks\": [");
        assert!(
            e.starts_with("malformed JSON") && e.contains("line 2"),
            "{e}"
        );
        let e = err(r#"{"name":"x","blocks":[{"id":1,"priority":1},{"id":1,"priority":2}]}"#);
        assert!(e.contains("duplicate identity"), "{e}");
        let e = err(r#"{"name":"x","blocks":[],"possible_periods":{"zz":[]}}"#);
        assert!(e.contains("possible_periods[\"zz\"]"), "{e}");
    }

    #[test]
    fn lists_are_not_read_as_objects() {
        // Serde's derive would read these by field position.
        let e = err(r#"{"name":"x","blocks":[[5,null,1,null,null]]}"#);
        assert!(e.contains("expected an object"), "{e}");
        let e = err(
            r#"{"name":"x","blocks":[{"id":1,"priority":1,"visibility_periods":[[60000,60001]]}]}"#,
        );
        assert!(
            e.contains("block #0") && e.contains("expected an object"),
            "{e}"
        );
        let e = err(r#"{"name":"x","schedule_period":[60000,60001],"blocks":[]}"#);
        assert!(e.contains("expected an object"), "{e}");
        assert!(parse_block_line(br#"[1,null,2]"#, 2, 0).is_err());
        assert!(parse_header_line(br#"["x"]"#).is_err());
    }

    #[test]
    fn an_append_object_ignores_the_schedule_members() {
        let body = br#"{"name":5,"schedule_period":{"start":2,"stop":1},"blocks":[{"id":1,"priority":1}]}"#;
        let d = parse_document(body, false).unwrap();
        assert!(d.header.is_none());
        assert_eq!(d.blocks.len(), 1);
        assert!(parse_document(body, true).is_err());
    }

    #[test]
    fn empty_periods_are_dropped_and_counted() {
        let d = parse_document(
            br#"{"name":"x","blocks":[{"id":1,"priority":1,"visibility_periods":[{"start":60000,"stop":60000},{"start":60000,"stop":60001}]}],
                "possible_periods":{"1":[{"start_mjd":60002,"end_mjd":60002}]}}"#,
            true,
        )
        .unwrap();
        assert_eq!(d.empty_periods_dropped, 2);
        assert_eq!(d.blocks[0].periods.len(), 1);
    }
}

/// Blocks parsed from a run of complete NDJSON lines.
#[derive(Debug)]
pub struct NdjsonChunk {
    /// The header, when the chunk held the first line of an upload.
    pub header: Option<Header>,
    pub blocks: Vec<Block>,
    pub empty_periods_dropped: u64,
    /// Lines consumed (blank ones included).
    pub lines: usize,
}

/// Parses complete NDJSON lines. `first_line` is the 1-based number of the
/// chunk's first line, `first_block` the index of its first block; with
/// `expect_header` the first non-blank line is the schedule header.
pub fn parse_ndjson_chunk(
    chunk: &[u8],
    first_line: usize,
    first_block: usize,
    mut expect_header: bool,
) -> Result<NdjsonChunk, InvalidUpload> {
    let mut out = NdjsonChunk {
        header: None,
        blocks: Vec::new(),
        empty_periods_dropped: 0,
        lines: 0,
    };
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        out.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_no = first_line + i;
        if expect_header {
            let h = parse_header_line(line).map_err(|e| {
                InvalidUpload::new(e.detail.replacen("line 1", &format!("line {line_no}"), 1))
            })?;
            out.header = Some(h);
            expect_header = false;
            continue;
        }
        let (b, dropped) = parse_block_line(line, line_no, first_block + out.blocks.len())?;
        out.blocks.push(b);
        out.empty_periods_dropped += dropped;
    }
    Ok(out)
}

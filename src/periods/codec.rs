//! The packed chunk codec: start-sorted periods ⇄ compact bytes. Pure: no
//! I/O. Both dialects store the same bytes (`bytea` / `BLOB`).
//!
//! Layout of a payload (format 1), three columns one after the other, each
//! an unsigned LEB128 varint per period:
//!
//! ```text
//! u8 format (1) | varint n | n × start delta | n × duration | n × block
//! ```
//!
//! The first start delta is from the chunk start, each next one from the
//! previous start (starts are sorted, so deltas are never negative; a busy
//! day has starts seconds apart: one byte). Durations are `end - start`
//! (≥ 1; night windows of hours take two or three bytes). Blocks are
//! indices relative to the row's `block_base` (the first block of the
//! version that wrote the row), so an append is encoded before it knows
//! where its blocks will land. About 6–7 bytes per period in all; the
//! columns decode in three tight loops.

use crate::engine::PeriodColumns;
use crate::model::{chunk_start_of, PackedChunk};
use rayon::prelude::*;

/// The payload format written today.
const FORMAT: u8 = 1;

/// A payload that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt period chunk at {chunk_start}: {reason}")]
pub struct CorruptChunk {
    pub chunk_start: i64,
    pub reason: &'static str,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint at `*pos`, advancing it; `None` past the end or on an
/// over-long encoding.
#[inline]
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        // The tenth byte holds the 64th bit only: anything more overflows.
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// Encodes the periods `(start, end, block)` of one chunk, sorted by start,
/// all starting in the chunk of `chunk_start`, blocks relative to the row's
/// block base.
pub fn encode(chunk_start: i64, periods: &[(i64, i64, u32)]) -> PackedChunk {
    debug_assert!(periods.windows(2).all(|w| w[0].0 <= w[1].0));
    let mut out = Vec::with_capacity(8 + periods.len() * 7);
    out.push(FORMAT);
    put_varint(&mut out, periods.len() as u64);
    let mut prev = chunk_start;
    for &(s, _, _) in periods {
        debug_assert_eq!(chunk_start_of(s), chunk_start);
        put_varint(&mut out, (s - prev) as u64);
        prev = s;
    }
    for &(s, e, _) in periods {
        debug_assert!(e > s);
        put_varint(&mut out, (e - s) as u64);
    }
    for &(_, _, b) in periods {
        put_varint(&mut out, u64::from(b));
    }
    PackedChunk {
        chunk_start,
        period_count: periods.len() as i64,
        max_end: periods.iter().map(|p| p.1).max().unwrap_or(chunk_start),
        payload: out,
    }
}

/// Decodes a payload written by [`encode`] into columns of exactly its
/// length, blocks offset by `block_base`.
pub fn decode_to(
    chunk_start: i64,
    block_base: i64,
    payload: &[u8],
    starts: &mut [i64],
    ends: &mut [i64],
    blocks: &mut [u32],
) -> Result<(), CorruptChunk> {
    let corrupt = |reason| CorruptChunk {
        chunk_start,
        reason,
    };
    if payload.first() != Some(&FORMAT) {
        return Err(corrupt("unknown format"));
    }
    let mut pos = 1;
    let n = get_varint(payload, &mut pos).ok_or_else(|| corrupt("truncated count"))?;
    if n != starts.len() as u64 || starts.len() != ends.len() || ends.len() != blocks.len() {
        return Err(corrupt("count differs from the row's period count"));
    }
    let mut s = chunk_start;
    for start in starts.iter_mut() {
        let d = get_varint(payload, &mut pos).ok_or_else(|| corrupt("truncated starts"))?;
        s = s
            .checked_add_unsigned(d)
            .ok_or_else(|| corrupt("start overflows"))?;
        *start = s;
    }
    if starts
        .last()
        .is_some_and(|&last| last >= chunk_start + crate::model::CHUNK_SPAN)
    {
        return Err(corrupt("a start lies beyond the chunk"));
    }
    for (end, &start) in ends.iter_mut().zip(starts.iter()) {
        let d = get_varint(payload, &mut pos).ok_or_else(|| corrupt("truncated durations"))?;
        if d == 0 {
            return Err(corrupt("an empty period"));
        }
        *end = start
            .checked_add_unsigned(d)
            .ok_or_else(|| corrupt("end overflows"))?;
    }
    for block in blocks.iter_mut() {
        let b = get_varint(payload, &mut pos).ok_or_else(|| corrupt("truncated blocks"))?;
        *block = i64::try_from(b)
            .ok()
            .and_then(|b| b.checked_add(block_base))
            .and_then(|b| u32::try_from(b).ok())
            .ok_or_else(|| corrupt("block out of range"))?;
    }
    if pos != payload.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(())
}

/// One stored chunk to decode, with what its row says of it.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRef<'a> {
    pub chunk_start: i64,
    pub block_base: i64,
    pub period_count: usize,
    /// The row's latest end: window reads skip rows by it, so a payload
    /// whose periods end later is refused.
    pub max_end: i64,
    pub payload: &'a [u8],
}

/// A chunk and the slices of the output its periods go to.
type Part<'a> = (ChunkRef<'a>, &'a mut [i64], &'a mut [i64], &'a mut [u32]);

/// Decodes chunks given in start order into one start-sorted set of
/// columns, many chunks in parallel (each into its own slice of the
/// output, whose offsets the period counts give).
pub fn decode_all(chunks: &[ChunkRef<'_>]) -> Result<PeriodColumns, CorruptChunk> {
    let total: usize = chunks.iter().map(|c| c.period_count).sum();
    let mut starts = vec![0i64; total];
    let mut ends = vec![0i64; total];
    let mut blocks = vec![0u32; total];
    let mut parts = Vec::with_capacity(chunks.len());
    let (mut s, mut e, mut b) = (&mut starts[..], &mut ends[..], &mut blocks[..]);
    for &c in chunks {
        let n = c.period_count;
        let (s1, s2) = s.split_at_mut(n);
        let (e1, e2) = e.split_at_mut(n);
        let (b1, b2) = b.split_at_mut(n);
        parts.push((c, s1, e1, b1));
        (s, e, b) = (s2, e2, b2);
    }
    let run = |(c, s, e, b): Part<'_>| {
        decode_to(c.chunk_start, c.block_base, c.payload, s, e, b)?;
        if e.iter().any(|&end| end > c.max_end) {
            return Err(CorruptChunk {
                chunk_start: c.chunk_start,
                reason: "a period ends after the row's max end",
            });
        }
        Ok(())
    };
    // Below ~64k periods one thread decodes faster than waking others.
    if total < 65_536 {
        parts.into_iter().try_for_each(run)?;
    } else {
        parts.into_par_iter().try_for_each(run)?;
    }
    // Chunks cover disjoint spans; given in start order, their
    // concatenation is sorted. Check that rather than trust the caller.
    if chunks
        .windows(2)
        .any(|w| w[0].chunk_start >= w[1].chunk_start)
    {
        return Err(CorruptChunk {
            chunk_start: chunks[0].chunk_start,
            reason: "chunks out of order",
        });
    }
    Ok(PeriodColumns::from_sorted(starts, ends, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CHUNK_SPAN;

    fn chunk_ref(c: &PackedChunk, block_base: i64) -> ChunkRef<'_> {
        ChunkRef {
            chunk_start: c.chunk_start,
            block_base,
            period_count: c.period_count as usize,
            max_end: c.max_end,
            payload: &c.payload,
        }
    }

    fn decode(c: &PackedChunk, base: i64) -> Result<PeriodColumns, CorruptChunk> {
        decode_all(&[chunk_ref(c, base)])
    }

    fn decode_raw(chunk_start: i64, n: usize, payload: &[u8]) -> Result<(), CorruptChunk> {
        decode_to(
            chunk_start,
            0,
            payload,
            &mut vec![0; n],
            &mut vec![0; n],
            &mut vec![0; n],
        )
    }

    #[test]
    fn chunks_round_trip_with_a_block_base() {
        let c0 = 20_000 * CHUNK_SPAN;
        let rows = vec![
            (c0, c0 + 1, 0),
            (c0, c0 + 90_000, 7),
            (c0 + 5, c0 + 3_600, 150_000),
            (c0 + CHUNK_SPAN - 1, c0 + 10 * CHUNK_SPAN, 3),
        ];
        let packed = encode(c0, &rows);
        assert_eq!(packed.period_count, 4);
        assert_eq!(packed.max_end, c0 + 10 * CHUNK_SPAN);
        let p = decode(&packed, 10).unwrap();
        assert_eq!(p.starts, rows.iter().map(|r| r.0).collect::<Vec<_>>());
        assert_eq!(p.ends, rows.iter().map(|r| r.1).collect::<Vec<_>>());
        assert_eq!(p.blocks, vec![10, 17, 150_010, 13]);
        assert_eq!(p.max_len(), 9 * CHUNK_SPAN + 1);
    }

    #[test]
    fn negative_instants_pack_into_their_own_day() {
        let c = chunk_start_of(-1);
        assert_eq!(c, -CHUNK_SPAN);
        let packed = encode(c, &[(-1, 5, 0)]);
        assert_eq!(decode(&packed, 0).unwrap().starts, vec![-1]);
    }

    #[test]
    fn damaged_payloads_are_refused_not_misread() {
        let c0 = 0;
        let packed = encode(c0, &[(10, 20, 1), (11, 30, 2)]);
        assert!(decode_raw(c0, 2, &packed.payload).is_ok());
        for cut in 0..packed.payload.len() {
            assert!(decode_raw(c0, 2, &packed.payload[..cut]).is_err());
        }
        let mut extra = packed.payload.clone();
        extra.push(0);
        assert!(decode_raw(c0, 2, &extra).is_err());
        assert!(
            decode_raw(c0, 3, &packed.payload).is_err(),
            "count mismatch"
        );
        // A start pushed out of its chunk.
        let mut far = vec![FORMAT];
        for v in [1, CHUNK_SPAN as u64, 1, 0] {
            put_varint(&mut far, v);
        }
        assert!(decode_raw(c0, 1, &far).is_err());
        far[2..].copy_from_slice(&{
            let mut ok = Vec::new();
            for v in [CHUNK_SPAN as u64 - 1, 1, 0] {
                put_varint(&mut ok, v);
            }
            ok
        });
        assert!(
            decode_raw(c0, 1, &far).is_ok(),
            "the last second of the chunk is in it"
        );
        // Chunks given out of order.
        let a = encode(0, &[(5, 6, 0)]);
        let b = encode(CHUNK_SPAN, &[(CHUNK_SPAN, CHUNK_SPAN + 1, 0)]);
        assert!(decode_all(&[chunk_ref(&b, 0), chunk_ref(&a, 0)]).is_err());
        // A row whose max end says less than its periods do.
        let mut short = chunk_ref(&a, 0);
        short.max_end = 5;
        assert!(decode_all(&[short]).is_err());
        // A varint overflowing 64 bits.
        let mut huge = vec![FORMAT];
        huge.extend([0xff; 9]);
        huge.push(0x02);
        assert!(get_varint(&huge[1..], &mut 0).is_none());
    }
}

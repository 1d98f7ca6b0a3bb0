//! Packing the periods of an upload or append into chunks, in bounded
//! memory.
//!
//! Bodies list periods block by block, while chunks hold them by time, so
//! nothing can be written before the whole body is read. Periods are taken
//! in batches (a run of NDJSON lines, or every [`Packer::BATCH`] periods):
//! each batch is sorted and packed per chunk as a *run* right away, so what
//! waits is already packed (~7 bytes a period). Past [`SPOOL_AFTER_BYTES`]
//! of runs the packer moves them to an unnamed temporary file, so memory
//! stays bounded however large the body. At the end, [`Packer::into_chunks`]
//! merges each chunk's runs into its one sorted chunk, chunk by chunk, for
//! the writer to consume as they come.

use super::codec::{decode_to, encode};
use crate::model::{chunk_start_of, PackedChunk, CHUNK_SPAN};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Runs held in memory beyond this many bytes move to the spool file.
pub const SPOOL_AFTER_BYTES: usize = 4 << 20;

/// A packed run of one chunk: in memory or at `offset` in the spool file.
#[derive(Debug)]
enum Run {
    Held(PackedChunk),
    Spooled {
        count: i64,
        max_end: i64,
        offset: u64,
        len: usize,
    },
}

/// Collects periods in any order; see the module doc.
#[derive(Debug, Default)]
pub struct Packer {
    pending: Vec<(i64, i64, u32)>,
    runs: BTreeMap<i64, Vec<Run>>,
    held_bytes: usize,
    spool: Option<std::fs::File>,
    spool_len: u64,
    periods: u64,
}

impl Packer {
    /// Periods held unpacked at most before they are packed into runs.
    pub const BATCH: usize = 1 << 16;

    /// An empty packer.
    pub fn new() -> Packer {
        Packer::default()
    }

    /// Adds a block's periods; `block` is relative to the group's base.
    pub fn add(&mut self, block: u32, periods: &[(i64, i64)]) -> io::Result<()> {
        for &(s, e) in periods {
            self.add_period(block, s, e)?;
        }
        Ok(())
    }

    /// Adds one non-empty period `[s, e)` of `block`.
    pub fn add_period(&mut self, block: u32, s: i64, e: i64) -> io::Result<()> {
        debug_assert!(e > s);
        self.pending.push((s, e, block));
        self.periods += 1;
        if self.pending.len() >= Self::BATCH {
            self.seal()?;
        }
        Ok(())
    }

    /// Packs the periods added since the last call into runs.
    pub fn seal(&mut self) -> io::Result<()> {
        self.pending.sort_unstable();
        let mut rest = &self.pending[..];
        while let Some(&(s, _, _)) = rest.first() {
            let c = chunk_start_of(s);
            let n = rest.partition_point(|p| p.0 < c + CHUNK_SPAN);
            let mut run = encode(c, &rest[..n]);
            run.payload.shrink_to_fit();
            self.held_bytes += run.payload.len();
            self.runs.entry(c).or_default().push(Run::Held(run));
            rest = &rest[n..];
        }
        self.pending.clear();
        if self.held_bytes > SPOOL_AFTER_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    /// Moves every held run to the spool file.
    fn spill(&mut self) -> io::Result<()> {
        let file = match &mut self.spool {
            Some(f) => f,
            None => self.spool.insert(tempfile::tempfile()?),
        };
        let mut out = io::BufWriter::new(&*file);
        for runs in self.runs.values_mut() {
            for run in runs.iter_mut() {
                if let Run::Held(chunk) = run {
                    out.write_all(&chunk.payload)?;
                    let spooled = Run::Spooled {
                        count: chunk.period_count,
                        max_end: chunk.max_end,
                        offset: self.spool_len,
                        len: chunk.payload.len(),
                    };
                    self.spool_len += chunk.payload.len() as u64;
                    *run = spooled;
                }
            }
        }
        out.flush()?;
        self.held_bytes = 0;
        Ok(())
    }

    /// Periods added so far.
    pub fn periods(&self) -> u64 {
        self.periods
    }

    /// The packed chunks, in chunk order, each made as it is taken.
    pub fn into_chunks(mut self) -> io::Result<Chunks> {
        self.seal()?;
        Ok(Chunks {
            runs: std::mem::take(&mut self.runs).into_iter(),
            spool: self.spool.take(),
        })
    }

    /// All packed chunks at once (for small inputs and tests).
    pub fn finish(self) -> io::Result<Vec<PackedChunk>> {
        self.into_chunks()?.collect()
    }
}

/// The chunks of a [`Packer`], merged one chunk at a time.
#[derive(Debug)]
pub struct Chunks {
    runs: std::collections::btree_map::IntoIter<i64, Vec<Run>>,
    spool: Option<std::fs::File>,
}

impl Chunks {
    /// The payload of a run and its period count and max end.
    fn load(&self, run: Run) -> io::Result<PackedChunk> {
        match run {
            Run::Held(chunk) => Ok(chunk),
            Run::Spooled {
                count,
                max_end,
                offset,
                len,
            } => {
                let mut payload = vec![0; len];
                self.spool
                    .as_ref()
                    .expect("spooled runs have a spool file")
                    .read_exact_at(&mut payload, offset)?;
                Ok(PackedChunk {
                    chunk_start: 0,
                    period_count: count,
                    max_end,
                    payload,
                })
            }
        }
    }

    fn merge(&self, c: i64, mut runs: Vec<Run>) -> io::Result<PackedChunk> {
        if runs.len() == 1 {
            let chunk = self.load(runs.pop().expect("one run"))?;
            return Ok(PackedChunk {
                chunk_start: c,
                ..chunk
            });
        }
        let mut rows = Vec::new();
        for run in runs {
            let chunk = self.load(run)?;
            let n = chunk.period_count as usize;
            let (mut s, mut e, mut b) = (vec![0; n], vec![0; n], vec![0; n]);
            decode_to(c, 0, &chunk.payload, &mut s, &mut e, &mut b).map_err(io::Error::other)?;
            rows.extend((0..n).map(|k| (s[k], e[k], b[k])));
        }
        rows.sort_unstable();
        let mut chunk = encode(c, &rows);
        chunk.payload.shrink_to_fit();
        Ok(chunk)
    }
}

impl Chunks {
    /// The next (up to) `n` chunks, merged in parallel; empty at the end.
    pub fn next_batch(&mut self, n: usize) -> io::Result<Vec<PackedChunk>> {
        let todo: Vec<(i64, Vec<Run>)> = self.runs.by_ref().take(n).collect();
        todo.into_par_iter()
            .map(|(c, runs)| self.merge(c, runs))
            .collect()
    }
}

impl Iterator for Chunks {
    type Item = io::Result<PackedChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        let (c, runs) = self.runs.next()?;
        Some(self.merge(c, runs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periods::codec::decode_all;

    fn decode(c: &PackedChunk) -> crate::engine::PeriodColumns {
        decode_all(&[crate::periods::codec::ChunkRef {
            chunk_start: c.chunk_start,
            block_base: 0,
            period_count: c.period_count as usize,
            max_end: c.max_end,
            payload: &c.payload,
        }])
        .unwrap()
    }

    #[test]
    fn runs_of_several_batches_merge_into_sorted_chunks() {
        let mut p = Packer::new();
        let day = CHUNK_SPAN;
        p.add(2, &[(3 * day + 50, 3 * day + 60), (day + 7, day + 8)])
            .unwrap();
        p.seal().unwrap();
        p.add(0, &[(3 * day + 10, 4 * day + 10)]).unwrap();
        p.add(1, &[(day + 7, day + 9)]).unwrap();
        assert_eq!(p.periods(), 4);
        let chunks = p.finish().unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.chunk_start).collect::<Vec<_>>(),
            vec![day, 3 * day]
        );
        let d1 = decode(&chunks[0]);
        assert_eq!(d1.starts(), &[day + 7, day + 7]);
        assert_eq!(d1.blocks(), &[2, 1]);
        let d3 = decode(&chunks[1]);
        assert_eq!(d3.starts(), &[3 * day + 10, 3 * day + 50]);
        assert_eq!(chunks[1].max_end, 4 * day + 10);
    }

    #[test]
    fn spooled_runs_come_back_exactly() {
        // Enough periods to pass the spool bound several times over, in
        // blocks spread over a month; compare with an in-memory packing.
        let periods: Vec<(u32, i64, i64)> = (0..3_000_000u32)
            .map(|i| {
                let s = i64::from(i.wrapping_mul(2_654_435_761) % (30 * 86_400) as u32);
                (i % 50_000, s, s + 600 + i64::from(i % 3_000))
            })
            .collect();
        let mut spooled = Packer::new();
        for &(b, s, e) in &periods {
            spooled.add_period(b, s, e).unwrap();
        }
        assert!(spooled.spool.is_some(), "the test must reach the spool");
        let got = spooled.finish().unwrap();
        let mut all: Vec<(i64, i64, u32)> = periods.iter().map(|&(b, s, e)| (s, e, b)).collect();
        all.sort_unstable();
        let mut want = Vec::new();
        let mut rest = &all[..];
        while let Some(&(s, _, _)) = rest.first() {
            let c = chunk_start_of(s);
            let n = rest.partition_point(|p| p.0 < c + CHUNK_SPAN);
            want.push(encode(c, &rest[..n]));
            rest = &rest[n..];
        }
        assert_eq!(got, want);
    }
}

//! The duplicate-detection checksum over a schedule's canonical content.
//!
//! Each block gets a SHA-256 digest of its canonical form (identity,
//! priority, scheduled flag, periods sorted). The schedule's digest is the
//! lane-wise sum (mod 2^64) of its block digests: independent of block order
//! and updatable by an append without re-reading existing blocks, which is
//! exact because identities are unique within a schedule. The checksum is
//! then SHA-256 over name, `schedule_period` and that sum.

use super::upload::{Block, Header};
use sha2::{Digest, Sha256};

/// Order-independent sum of block digests (four 64-bit lanes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockDigest(pub [u64; 4]);

impl BlockDigest {
    /// Adds one block to the sum.
    pub fn add_block(&mut self, block: &Block) {
        let mut h = Sha256::new();
        h.update((block.identity.len() as u64).to_le_bytes());
        h.update(block.identity.as_bytes());
        // -0.0 == 0.0 as a priority, so both hash alike.
        let p = if block.priority == 0.0 {
            0.0
        } else {
            block.priority
        };
        h.update(p.to_bits().to_le_bytes());
        h.update([u8::from(block.scheduled)]);
        h.update((block.periods.len() as u64).to_le_bytes());
        for &(s, e) in &block.periods {
            h.update(s.to_le_bytes());
            h.update(e.to_le_bytes());
        }
        let d = h.finalize();
        for (lane, chunk) in self.0.iter_mut().zip(d.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
    }

    /// Adds another sum (the blocks of an append to those of a schedule).
    pub fn combine(&mut self, other: &BlockDigest) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }

    /// Hex form for storage.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|l| format!("{l:016x}")).collect()
    }

    /// Parses the hex form written by [`BlockDigest::to_hex`].
    pub fn from_hex(text: &str) -> Option<BlockDigest> {
        if text.len() != 64 {
            return None;
        }
        let mut lanes = [0u64; 4];
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = u64::from_str_radix(&text[i * 16..(i + 1) * 16], 16).ok()?;
        }
        Some(BlockDigest(lanes))
    }
}

/// The schedule checksum (hex SHA-256) of `header` plus blocks summed in
/// `blocks`.
pub fn schedule_checksum(header: &Header, blocks: &BlockDigest) -> String {
    let mut h = Sha256::new();
    h.update(b"visbin-schedule-v1");
    h.update((header.name.len() as u64).to_le_bytes());
    h.update(header.name.as_bytes());
    match header.schedule_period {
        Some((s, e)) => {
            h.update([1]);
            h.update(s.to_le_bytes());
            h.update(e.to_le_bytes());
        }
        None => h.update([0]),
    }
    for lane in blocks.0 {
        h.update(lane.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, periods: Vec<(i64, i64)>) -> Block {
        Block {
            identity: id.into(),
            priority: 1.5,
            scheduled: false,
            periods,
        }
    }

    #[test]
    fn block_order_does_not_change_the_checksum_but_content_does() {
        let header = Header {
            name: "s".into(),
            schedule_period: None,
        };
        let (a, b) = (block("a", vec![(0, 10)]), block("b", vec![(5, 10)]));
        let mut d1 = BlockDigest::default();
        d1.add_block(&a);
        d1.add_block(&b);
        let mut d2 = BlockDigest::default();
        d2.add_block(&b);
        d2.add_block(&a);
        assert_eq!(
            schedule_checksum(&header, &d1),
            schedule_checksum(&header, &d2)
        );
        assert_eq!(BlockDigest::from_hex(&d1.to_hex()), Some(d1));
        let mut d3 = BlockDigest::default();
        d3.add_block(&a);
        d3.add_block(&block("b", vec![(5, 11)]));
        assert_ne!(
            schedule_checksum(&header, &d1),
            schedule_checksum(&header, &d3)
        );
    }
}

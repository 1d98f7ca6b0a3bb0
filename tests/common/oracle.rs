//! A brute-force oracle for the bin counters (DESIGN §4), written from the
//! design text and sharing no code with the engine.
#![allow(dead_code)]

use std::collections::BTreeSet;

/// A block as the oracle sees it.
#[derive(Debug, Clone)]
pub struct OBlock {
    pub identity: String,
    pub priority: f64,
    pub scheduled: bool,
    pub periods: Vec<(i64, i64)>,
}

/// A filter as the oracle sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OFilter {
    pub priority_min: Option<f64>,
    pub priority_max: Option<f64>,
    pub scheduled: Option<bool>,
    pub block_ids: Option<Vec<String>>,
}

impl OFilter {
    /// Query-string form (`&`-prefixed parts).
    pub fn query(&self) -> String {
        let mut q = String::new();
        if let Some(v) = self.priority_min {
            q += &format!("&priority_min={v}");
        }
        if let Some(v) = self.priority_max {
            q += &format!("&priority_max={v}");
        }
        if let Some(v) = self.scheduled {
            q += &format!("&scheduled={v}");
        }
        if let Some(ids) = &self.block_ids {
            q += &format!("&block_ids={}", ids.join(","));
        }
        q
    }

    fn selects(&self, b: &OBlock) -> bool {
        self.priority_min.is_none_or(|m| b.priority >= m)
            && self.priority_max.is_none_or(|m| b.priority <= m)
            && self.scheduled.is_none_or(|s| s == b.scheduled)
            && self
                .block_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&b.identity))
    }
}

/// DESIGN §4's quartile rule.
pub fn quartile(p: f64, pmin: f64, pmax: f64) -> usize {
    if pmax == pmin {
        return 1;
    }
    let x = (p - pmin) / (pmax - pmin);
    [0.25, 0.5, 0.75].iter().filter(|&&edge| x >= edge).count()
}

/// The seven counters of bin `[bs, be)`.
pub fn bin(blocks: &[OBlock], f: &OFilter, bs: i64, be: i64) -> [u32; 7] {
    let pmin = blocks
        .iter()
        .map(|b| b.priority)
        .fold(f64::INFINITY, f64::min);
    let pmax = blocks
        .iter()
        .map(|b| b.priority)
        .fold(f64::NEG_INFINITY, f64::max);
    let visible: BTreeSet<usize> = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| f.selects(b) && b.periods.iter().any(|&(s, e)| s < be && e > bs))
        .map(|(i, _)| i)
        .collect();
    let mut out = [0u32; 7];
    for &i in &visible {
        let b = &blocks[i];
        out[0] += 1;
        out[1 + quartile(b.priority, pmin, pmax)] += 1;
        out[if b.scheduled { 5 } else { 6 }] += 1;
    }
    out
}

/// Counters of consecutive bins of width `w` starting at `first_start`.
pub fn bins(blocks: &[OBlock], f: &OFilter, first_start: i64, w: i64, n: usize) -> Vec<[u32; 7]> {
    (0..n as i64)
        .map(|k| bin(blocks, f, first_start + k * w, first_start + (k + 1) * w))
        .collect()
}

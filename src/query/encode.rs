//! Writers for answers: the range query (JSON, columnar JSON, CSV) and the
//! TSI histogram. Written by hand with `itoa`: a year of 15-minute bins is
//! 35,040 rows and a generic serializer would dominate a cold request.

use crate::engine::{BinCounts, Grid, COLUMNS};

/// Top-level fields of a range-query response.
pub struct Envelope {
    pub schedule_id: i64,
    pub bin_seconds: i64,
    pub origin: i64,
}

fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

fn head(out: &mut Vec<u8>, e: &Envelope, grid: &Grid, c: &BinCounts) {
    out.extend_from_slice(b"{\"schedule_id\":");
    push_int(out, e.schedule_id);
    out.extend_from_slice(b",\"bin_seconds\":");
    push_int(out, e.bin_seconds);
    out.extend_from_slice(b",\"origin\":");
    push_int(out, e.origin);
    out.extend_from_slice(b",\"start_unix\":");
    push_int(out, grid.bin_start(c.range.first));
    out.extend_from_slice(b",\"end_unix\":");
    push_int(out, grid.bin_start(c.range.end));
}

/// `{"schedule_id": …, "bins": [{…}, …]}`.
pub fn json(e: &Envelope, grid: &Grid, c: &BinCounts) -> Vec<u8> {
    let n = c.range.len();
    let mut out = Vec::with_capacity(128 + n * 220);
    head(&mut out, e, grid, c);
    out.extend_from_slice(b",\"bins\":[");
    for j in 0..n {
        if j > 0 {
            out.push(b',');
        }
        let k = c.range.first + j as i64;
        out.extend_from_slice(b"{\"bin_start_unix\":");
        push_int(&mut out, grid.bin_start(k));
        out.extend_from_slice(b",\"bin_end_unix\":");
        push_int(&mut out, grid.bin_start(k + 1));
        for (name, col) in COLUMNS.iter().zip(&c.columns) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            push_int(&mut out, col[j]);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The same top level with one array per bin field.
pub fn columnar(e: &Envelope, grid: &Grid, c: &BinCounts) -> Vec<u8> {
    let n = c.range.len();
    let mut out = Vec::with_capacity(256 + n * 70);
    head(&mut out, e, grid, c);
    out.extend_from_slice(b",\"bins\":{\"bin_start_unix\":[");
    for j in 0..n {
        if j > 0 {
            out.push(b',');
        }
        push_int(&mut out, grid.bin_start(c.range.first + j as i64));
    }
    out.extend_from_slice(b"],\"bin_end_unix\":[");
    for j in 0..n {
        if j > 0 {
            out.push(b',');
        }
        push_int(&mut out, grid.bin_start(c.range.first + j as i64 + 1));
    }
    out.push(b']');
    for (name, col) in COLUMNS.iter().zip(&c.columns) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":[");
        for (j, v) in col.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            push_int(&mut out, *v);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
}

/// A header row of the bin field names, then one row per bin.
pub fn csv(grid: &Grid, c: &BinCounts) -> Vec<u8> {
    let n = c.range.len();
    let mut out = Vec::with_capacity(200 + n * 60);
    out.extend_from_slice(b"bin_start_unix,bin_end_unix");
    for name in COLUMNS {
        out.push(b',');
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'\n');
    for j in 0..n {
        let k = c.range.first + j as i64;
        push_int(&mut out, grid.bin_start(k));
        out.push(b',');
        push_int(&mut out, grid.bin_start(k + 1));
        for col in &c.columns {
            out.push(b',');
            push_int(&mut out, col[j]);
        }
        out.push(b'\n');
    }
    out
}

/// The TSI histogram: `[{"bin_start_unix", "bin_end_unix", "visible_count"}, …]`.
pub fn histogram(rows: &[(i64, i64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 72 + 2);
    out.push(b'[');
    for (i, &(a, b, v)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"bin_start_unix\":");
        push_int(&mut out, a);
        out.extend_from_slice(b",\"bin_end_unix\":");
        push_int(&mut out, b);
        out.extend_from_slice(b",\"visible_count\":");
        push_int(&mut out, v);
        out.push(b'}');
    }
    out.push(b']');
    out
}

//! `visbin gen`: a realistic synthetic schedule in the upload format, from a
//! seed. Night-like visibility windows of 0.5–8 h on a random subset of
//! nights, some blocks never visible, ~30 % scheduled, priorities with
//! decimals, and some windows a few minutes apart (in the same bin).

use crate::model::time::parse_instant;
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// Output format of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenFormat {
    /// One JSON document (the TSI shape).
    Json,
    /// A header line, then one block per line.
    Ndjson,
}

/// Options of `visbin gen`.
#[derive(Debug, Clone, Args)]
pub struct GenConfig {
    /// Number of blocks.
    #[arg(long, default_value_t = 1500)]
    pub blocks: usize,
    /// Mean visibility periods per visible block.
    #[arg(long, default_value_t = 50)]
    pub periods: usize,
    /// Length of the schedule in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// First day (RFC 3339 or Unix seconds).
    #[arg(long, default_value = "2025-01-01T00:00:00Z")]
    pub start: String,
    /// Random seed; the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GenFormat::Json)]
    pub format: GenFormat,
    /// Schedule name (default: derived from the seed and size).
    #[arg(long)]
    pub name: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Also write `schedule_period` (the generated days) into the header.
    #[arg(long)]
    pub with_schedule_period: bool,
}

impl GenConfig {
    /// `blocks` blocks with ~`periods` periods each over 2025 (365 days),
    /// as JSON; adjust other fields with struct update syntax.
    pub fn new(blocks: usize, periods: usize, seed: u64) -> GenConfig {
        GenConfig {
            blocks,
            periods,
            days: 365,
            start: "2025-01-01T00:00:00Z".into(),
            seed,
            format: GenFormat::Json,
            name: None,
            output: None,
            with_schedule_period: false,
        }
    }
}

/// One generated block.
#[derive(Debug, Clone)]
pub struct GenBlock {
    pub id: u64,
    pub priority: f64,
    /// MJD windows.
    pub periods: Vec<(f64, f64)>,
    pub scheduled: Option<(f64, f64)>,
}

/// Generates the blocks of `config` (deterministic for a seed).
pub fn blocks(config: &GenConfig, start_mjd: f64) -> impl Iterator<Item = GenBlock> + '_ {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let days = config.days.max(1);
    (0..config.blocks).map(move |i| {
        let priority = (rng.gen_range(0.0..10.0f64) * 100.0).round() / 100.0;
        let never_visible = rng.gen_bool(0.05);
        let mut periods = Vec::new();
        if !never_visible && config.periods > 0 {
            let n = rng.gen_range(config.periods.div_ceil(2)..=config.periods + config.periods / 2);
            while periods.len() < n {
                let night = rng.gen_range(0..days) as f64;
                // Dusk between 18:00 and 23:00 UTC, window of 0.5–8 h.
                let s = start_mjd + night + rng.gen_range(0.75..0.96);
                let e = s + rng.gen_range(0.5..8.0) / 24.0;
                periods.push((s, e));
                if rng.gen_bool(0.1) && periods.len() < n {
                    // A short window a few minutes later: same 15-minute bin.
                    let s2 = e + rng.gen_range(2.0..10.0) / 1440.0;
                    periods.push((s2, s2 + rng.gen_range(3.0..20.0) / 1440.0));
                }
            }
        }
        let scheduled = if !periods.is_empty() && rng.gen_bool(0.3) {
            let (s, e) = periods[rng.gen_range(0..periods.len())];
            Some((s, s + (e - s) / 2.0))
        } else {
            None
        };
        GenBlock {
            id: 1_000_000 + i as u64,
            priority,
            periods,
            scheduled,
        }
    })
}

fn write_block(out: &mut impl Write, b: &GenBlock) -> std::io::Result<()> {
    write!(
        out,
        "{{\"id\":{},\"original_block_id\":\"block-{}\",\"priority\":{},\"visibility_periods\":[",
        b.id, b.id, b.priority
    )?;
    for (k, (s, e)) in b.periods.iter().enumerate() {
        if k > 0 {
            out.write_all(b",")?;
        }
        write!(out, "{{\"start\":{s:.7},\"stop\":{e:.7}}}")?;
    }
    out.write_all(b"],\"scheduled_period\":")?;
    match b.scheduled {
        Some((s, e)) => write!(out, "{{\"start\":{s:.7},\"stop\":{e:.7}}}")?,
        None => out.write_all(b"null")?,
    }
    out.write_all(b"}")
}

/// Writes a generated schedule in the upload format.
pub fn write(config: &GenConfig, out: impl Write) -> anyhow::Result<()> {
    let start = parse_instant(&config.start).map_err(anyhow::Error::msg)?;
    let start_mjd = start as f64 / 86_400.0 + 40_587.0;
    let name = config.name.clone().unwrap_or_else(|| {
        format!(
            "synthetic-{}x{}-{}d-seed{}",
            config.blocks, config.periods, config.days, config.seed
        )
    });
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut header = serde_json::json!({ "name": name });
    if config.with_schedule_period {
        header["schedule_period"] = serde_json::json!({
            "start_mjd": start_mjd,
            "end_mjd": start_mjd + f64::from(config.days),
        });
    }
    match config.format {
        GenFormat::Json => {
            let h = header.to_string();
            out.write_all(&h.as_bytes()[..h.len() - 1])?;
            out.write_all(b",\"blocks\":[\n")?;
            for (i, b) in blocks(config, start_mjd).enumerate() {
                if i > 0 {
                    out.write_all(b",\n")?;
                }
                write_block(&mut out, &b)?;
            }
            out.write_all(b"\n]}\n")?;
        }
        GenFormat::Ndjson => {
            writeln!(out, "{header}")?;
            for b in blocks(config, start_mjd) {
                write_block(&mut out, &b)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs `visbin gen`.
pub fn run(config: &GenConfig) -> anyhow::Result<()> {
    match &config.output {
        Some(path) => write(config, std::fs::File::create(path)?),
        None => write(config, std::io::stdout().lock()),
    }
}

//! `sluice plot RUN_DIR`: PNG charts of a run's `metrics.jsonl` (reward, accuracy, losses, KL,
//! staleness, throughput) in `RUN_DIR/plots/`, drawn with plotters. A step recorded twice (a
//! learner resumed from a checkpoint redoes the steps after it) is drawn with its latest value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use sluice_core::metrics;

/// One chart: a title, a file name, and the series it draws (metric key, legend).
struct Chart {
    file: &'static str,
    title: &'static str,
    series: &'static [(&'static str, &'static str)],
    role: &'static str,
}

const CHARTS: &[Chart] = &[
    Chart {
        file: "reward",
        title: "reward",
        series: &[(metrics::REWARD_MEAN, "mean reward")],
        role: "learner",
    },
    Chart {
        file: "accuracy",
        title: "accuracy",
        series: &[(metrics::ACCURACY, "accuracy")],
        role: "learner",
    },
    Chart {
        file: "losses",
        title: "losses",
        series: &[
            (metrics::LOSS_TOTAL, "total"),
            (metrics::LOSS_POLICY, "policy"),
            (metrics::LOSS_KL, "kl"),
            (metrics::LOSS_TB, "tb"),
        ],
        role: "learner",
    },
    Chart { file: "kl", title: "KL to the reference", series: &[(metrics::KL, "kl")], role: "learner" },
    Chart {
        file: "staleness",
        title: "staleness (versions)",
        series: &[(metrics::STALENESS_MEAN, "mean"), (metrics::STALENESS_MAX, "max")],
        role: "learner",
    },
    Chart {
        file: "throughput",
        title: "learner tokens/s",
        series: &[(metrics::TOKENS_PER_S, "trained tokens/s")],
        role: "learner",
    },
    Chart {
        file: "rollout",
        title: "rollout samples/s (per worker, cumulative)",
        series: &[("rollout/samples_per_s", "samples/s")],
        role: "rollout",
    },
];

const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let bytes: &'static [u8] = epaint_default_fonts::UBUNTU_LIGHT;
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            result = Err(anyhow::anyhow!("the built-in chart font does not load"));
        }
    });
    result
}

/// `(step, value)` points of `key` in records of `role`, by series (the worker for rollout
/// records, one series otherwise); a repeated step keeps its last value.
fn points(records: &[Value], role: &str, key: &str) -> BTreeMap<String, BTreeMap<u64, f64>> {
    let mut out: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for r in records {
        if r[metrics::ROLE] != role || r.get("event").is_some() {
            continue;
        }
        let (Some(step), Some(v)) = (r[metrics::STEP].as_u64(), r[key].as_f64()) else { continue };
        if !v.is_finite() {
            continue;
        }
        let series = r["worker"].as_str().unwrap_or("").to_string();
        out.entry(series).or_default().insert(step, v);
    }
    out
}

/// Reads `RUN_DIR/metrics.jsonl`, naming the line of any record that does not parse.
pub fn read_metrics(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            // A process killed mid-write leaves a torn last line; anything else is an error.
            Err(_) if i + 1 == text.lines().count() => {
                tracing::warn!("{}: torn last line skipped", path.display())
            }
            Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Draws every chart that has data into `RUN_DIR/plots/NAME.png`; returns the files written.
pub fn plot(dir: &Path) -> Result<Vec<PathBuf>> {
    let records = read_metrics(dir)?;
    register_font()?;
    let out_dir = dir.join("plots");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut written = Vec::new();
    for chart in CHARTS {
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (key, legend) in chart.series {
            for (series, pts) in points(&records, chart.role, key) {
                let name = if series.is_empty() { legend.to_string() } else { format!("{series} {legend}") };
                lines.push((name, pts.into_iter().map(|(s, v)| (s as f64, v)).collect()));
            }
        }
        lines.retain(|(_, p)| !p.is_empty());
        if lines.is_empty() {
            continue;
        }
        let path = out_dir.join(format!("{}.png", chart.file));
        draw(&path, chart.title, &lines).with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    if written.is_empty() {
        bail!("{}: no learner steps recorded yet", dir.join("metrics.jsonl").display());
    }
    Ok(written)
}

fn draw(path: &Path, title: &str, lines: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("learner step").label_style((FONT, 14)).draw().map_err(|e| err(&e))?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

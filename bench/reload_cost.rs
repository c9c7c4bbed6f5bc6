//! What one reload of pylon-xds's config costs, stage by stage, in process:
//! the bounded first pass over the YAML, the whole load (first pass, serde,
//! checks, translation), and the snapshot build against the previous
//! revision. The file is the one `xds-fleet` writes (`--clusters N`
//! clusters of two endpoints), with one endpoint changed between revisions,
//! as in the fleet benchmark's edits.
//!
//! `--whole` reads the whole file every time (the path of a first load, or
//! of a file whose layout the reload shortcut does not cut) instead of
//! reusing the clusters whose text did not change.
//!
//! `cargo run --release -p control-plane --example reload-cost -- [--whole] [CLUSTERS] [ROUNDS]`

use std::time::{Duration, Instant};

use control_plane::config::{self, Options};
use control_plane::snapshot::Snapshot;

#[path = "fleet_config.rs"]
mod fleet_config;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let whole = args.iter().any(|a| a == "--whole");
    args.retain(|a| a != "--whole");
    let mut args = args.into_iter();
    let clusters: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(50), |a| a.parse())?;
    let options = Options::default();
    let texts: Vec<String> = (0..rounds + 1)
        .map(|g| fleet_config::config(clusters, g, false))
        .collect();
    let mut memo = config::Memo::default();
    let mut load_one = |text: &str| {
        let bytes = text.as_bytes();
        if whole {
            config::load_bytes("bench.yaml", bytes, &options)
        } else {
            config::load_bytes_reusing("bench.yaml", bytes, &options, &mut memo)
        }
        .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let first = load_one(&texts[0])?;
    let mut previous = Snapshot::build(first, None)?;
    let (mut scan, mut load, mut build) = (Vec::new(), Vec::new(), Vec::new());
    for text in &texts[1..] {
        let t = Instant::now();
        pylon::yaml::check(text, &options.limits).map_err(|r| anyhow::anyhow!("{}", r.message))?;
        scan.push(t.elapsed());
        let t = Instant::now();
        let resources = load_one(text)?;
        load.push(t.elapsed());
        let t = Instant::now();
        let snap = Snapshot::build(resources, Some(&previous))?;
        build.push(t.elapsed());
        previous = snap;
    }
    let (scan, load, build) = (median(scan), median(load), median(build));
    println!(
        "{clusters} clusters, {} bytes, {}, median of {rounds}: first pass {scan:?}, load (incl. first pass) {load:?}, snapshot build {build:?}, reload {:?}",
        texts[0].len(),
        if whole { "whole file" } else { "reusing" },
        load + build
    );
    Ok(())
}

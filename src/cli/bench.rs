//! `bench` (being written).
use std::path::Path;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
/// Arguments of the hidden worker.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {}
/// Runs `bench`.
pub fn run(_dir: &Path, _args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
/// Runs a worker.
pub fn worker(_dir: &Path, _args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

//! `stream` (being written).
use std::path::Path;

/// Arguments of `stream`.
#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// Network name.
    pub name: String,
}
/// Runs `stream`.
pub fn run(_dir: &Path, _args: StreamArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

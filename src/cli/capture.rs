//! `capture` (being written).
use std::path::Path;

/// Arguments of `capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Network name.
    pub name: String,
}
/// Runs `capture`.
pub fn run(_dir: &Path, _args: CaptureArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

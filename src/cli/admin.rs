//! `create`, `destroy`, `list`, `status`.
use std::path::Path;

/// Arguments of `create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Network name.
    pub name: String,
}
/// Arguments of `destroy`.
#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    /// Network name.
    pub name: String,
}
/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {}
/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Network name.
    pub name: String,
}
/// Runs `create`.
pub fn create(_dir: &Path, _args: CreateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
/// Runs `destroy`.
pub fn destroy(_dir: &Path, _args: DestroyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
/// Runs `list`.
pub fn list(_dir: &Path, _args: ListArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
/// Runs `status`.
pub fn status(_dir: &Path, _args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

//! The CLI side of the admin API (`status`, `federation refresh`).

use std::path::Path;

use crate::cli::FederationCommand;

/// `meshtrust status`.
///
/// # Errors
/// Until the admin API exists.
pub fn status(_admin_socket: &Path, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("the admin API is not available in this build")
}

/// `meshtrust federation ...`.
///
/// # Errors
/// Until the admin API exists.
pub fn federation(_command: FederationCommand) -> anyhow::Result<()> {
    anyhow::bail!("the admin API is not available in this build")
}

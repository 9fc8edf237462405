//! The directory networks live in, checked before it is trusted.
//!
//! Whoever controls the directory controls the networks in it: its owner may rename or
//! replace any file there, sticky bit or not, and so may anyone allowed to write to a
//! directory without the sticky bit. A peer that then opens a network by name would join
//! a file of their choosing, and they would read its traffic. So before guestnet creates,
//! opens, lists or removes a network, it checks that the directory is
//!
//! 1. owned by the user running guestnet or by root, and
//! 2. writable by nobody else, unless it is sticky (as `/dev/shm` and `/tmp` are: there
//!    only a file's owner may remove or rename it).
//!
//! Region files themselves are opened with `O_NOFOLLOW`, so that a link planted under a
//! network's name cannot lead peers elsewhere (see `Region::open`).
//!
//! A missing directory is created. Made by root, the shared default ([`DEFAULT_DIR`]) gets
//! mode 1777, like `/dev/shm` itself: every user may keep networks in it and nobody may
//! replace another's. Any other directory, and the default when an ordinary user makes it,
//! gets 0700: a directory a user owns is one only that user can trust (rule 1), so opening
//! it to others would only let them plant files under names its owner may use.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{DirectoryProblem, Error, IoError, Result, io_error};

/// Environment variable naming the directory that holds the regions.
pub const DIR_ENV: &str = "GUESTNET_DIR";
/// Default directory of the regions.
pub const DEFAULT_DIR: &str = "/dev/shm/guestnet";

/// The directory regions live in: `$GUESTNET_DIR`, else [`DEFAULT_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

const STICKY: u32 = 0o1000;
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Checks that `dir` may be trusted with networks (see the module doc). A directory that
/// does not exist passes: there is nothing in it to trust, and the caller finds nothing.
pub(crate) fn check(dir: &Path) -> Result<()> {
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(format!("stat {}", dir.display()))(e)),
    };
    let refuse = |problem| Error::UntrustedDirectory {
        dir: dir.display().to_string(),
        problem,
    };
    if !metadata.is_dir() {
        return Err(refuse(DirectoryProblem::NotADirectory));
    }
    let user = rustix::process::geteuid().as_raw();
    if metadata.uid() != user && metadata.uid() != 0 {
        return Err(refuse(DirectoryProblem::Owner {
            owner: metadata.uid(),
            user,
        }));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & WRITABLE_BY_OTHERS != 0 && mode & STICKY == 0 {
        return Err(refuse(DirectoryProblem::WritableByOthers { mode }));
    }
    Ok(())
}

/// Makes `dir` if it is missing (with the mode the module doc gives) and checks it.
pub(crate) fn prepare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| not_writable(parent, e, format!("create {}", parent.display())))?;
        }
        let mode = mode_for_new(dir, rustix::process::geteuid().is_root());
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            // The umask narrowed the mode (and 1777 needs it whole); ours wins.
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(io_error(format!("set the mode of {}", dir.display())))?,
            // Made meanwhile by someone else: the check below decides.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                let parent = dir.parent().unwrap_or(dir);
                return Err(not_writable(parent, e, format!("create {}", dir.display())));
            }
        }
    }
    check(dir)
}

/// The mode a missing networks directory is made with.
fn mode_for_new(dir: &Path, as_root: bool) -> u32 {
    if as_root && dir == Path::new(DEFAULT_DIR) {
        0o1777
    } else {
        0o700
    }
}

/// The error for a failure to create something in `dir`: for a refusal, who owns the
/// directory and what to do instead; otherwise the system's error as it is.
pub(crate) fn not_writable(dir: &Path, error: io::Error, context: String) -> Error {
    let refused = matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM));
    match std::fs::metadata(dir) {
        Ok(metadata) if refused => Error::DirectoryNotWritable {
            dir: dir.display().to_string(),
            owner: metadata.uid(),
            mode: metadata.mode() & 0o7777,
            user: rustix::process::geteuid().as_raw(),
        },
        _ => Error::Io(IoError {
            context,
            source: error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_made_by_root_is_shared() {
        let default = Path::new(DEFAULT_DIR);
        assert_eq!(mode_for_new(default, true), 0o1777);
        assert_eq!(mode_for_new(default, false), 0o700);
        assert_eq!(
            mode_for_new(Path::new("/run/user/1000/guestnet"), true),
            0o700
        );
        assert_eq!(mode_for_new(Path::new("/tmp/nets"), false), 0o700);
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let nets = dir.path().join("a/b/nets");
        prepare(&nets).unwrap();
        let mode = std::fs::metadata(&nets).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_regular_file_is_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check(&file),
            Err(Error::UntrustedDirectory {
                problem: DirectoryProblem::NotADirectory,
                ..
            })
        ));
    }
}

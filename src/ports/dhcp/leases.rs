//! The lease table and its file.
//!
//! One record per client MAC: the address it was given, until when, whether the client
//! took it (bound) or was only offered it, and the host name it sent. A record outlives
//! its lease: an expired record still says which address that MAC had, so a client that
//! comes back gets the same address as long as nobody else needed it. An address that a
//! client declined, or that answered an ARP probe, is set aside until a given time.
//!
//! The file is JSON, written whole to a temporary name in the same directory, flushed to
//! disk, then renamed over the old one and the directory flushed, so a crash at any moment
//! leaves either the old table or the new one, never half of one. Times are seconds since
//! the Unix epoch, so a restarted server, or one started after a reboot, reads them right.
//! The file is the server's own, but it is still checked on loading: a record outside the
//! configuration (another subnet, a range since shrunk) is dropped, not trusted.

use core::net::Ipv4Addr;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::Config;
use crate::wire::MacAddress;

/// The file format's version.
const FILE_VERSION: u32 = 1;

/// A client's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The address.
    pub address: Ipv4Addr,
    /// When the lease (or the offer) ends, in seconds since the Unix epoch.
    pub expires: u64,
    /// Whether the client took it with a REQUEST; false while it is only offered.
    pub bound: bool,
    /// The host name the client sent (option 12 or 81), checked and lower-case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
}

impl Lease {
    /// Whether the lease (or the offer) still holds at `now` (seconds since the epoch).
    pub fn is_active(&self, now: u64) -> bool {
        self.expires > now
    }
}

/// The table: leases by MAC, and addresses set aside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    version: u32,
    leases: BTreeMap<MacAddress, Lease>,
    /// Addresses not to hand out before the given time: declined by a client, or found
    /// in use by an ARP probe.
    #[serde(default)]
    set_aside: BTreeMap<Ipv4Addr, u64>,
    /// Which client's record holds each address: the index that keeps every lookup
    /// logarithmic in a range of any size. Not in the file; rebuilt after loading.
    #[serde(skip)]
    by_address: BTreeMap<Ipv4Addr, MacAddress>,
}

/// Errors of the lease file.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The file is not a lease file of this version.
    #[error("{path} is not a guestnet lease file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

impl Leases {
    /// An empty table.
    pub fn new() -> Leases {
        Leases {
            version: FILE_VERSION,
            ..Leases::default()
        }
    }

    /// The record of `mac`.
    pub fn get(&self, mac: MacAddress) -> Option<&Lease> {
        self.leases.get(&mac)
    }

    /// Sets the record of `mac`, removing any other record on the same address (it was
    /// expired, or the caller would not give the address away).
    pub fn set(&mut self, mac: MacAddress, lease: Lease) {
        self.remove(mac);
        if let Some(other) = self.by_address.insert(lease.address, mac) {
            self.leases.remove(&other);
        }
        self.leases.insert(mac, lease);
    }

    /// Removes the record of `mac`.
    pub fn remove(&mut self, mac: MacAddress) -> Option<Lease> {
        let lease = self.leases.remove(&mac)?;
        if self.by_address.get(&lease.address) == Some(&mac) {
            self.by_address.remove(&lease.address);
        }
        Some(lease)
    }

    /// Rebuilds the address index from the records, keeping the first of two records on
    /// one address (a hand-edited file may hold both).
    fn reindex(&mut self) {
        self.by_address.clear();
        let by_address = &mut self.by_address;
        self.leases
            .retain(|&mac, lease| match by_address.entry(lease.address) {
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(mac);
                    true
                }
                std::collections::btree_map::Entry::Occupied(_) => false,
            });
    }

    /// Every record, by MAC.
    pub fn iter(&self) -> impl Iterator<Item = (MacAddress, &Lease)> {
        self.leases.iter().map(|(&mac, lease)| (mac, lease))
    }

    /// The client whose record holds `address`, expired or not.
    pub fn holder(&self, address: Ipv4Addr) -> Option<(MacAddress, &Lease)> {
        let &mac = self.by_address.get(&address)?;
        self.leases.get(&mac).map(|lease| (mac, lease))
    }

    /// Leases bound and not expired at `now`.
    pub fn active_count(&self, now: u64) -> usize {
        self.leases
            .values()
            .filter(|l| l.bound && l.is_active(now))
            .count()
    }

    /// Sets `address` aside until `until`.
    pub fn set_aside(&mut self, address: Ipv4Addr, until: u64) {
        self.set_aside.insert(address, until);
    }

    /// Whether `address` is set aside at `now`.
    pub fn is_set_aside(&self, address: Ipv4Addr, now: u64) -> bool {
        self.set_aside
            .get(&address)
            .is_some_and(|&until| until > now)
    }

    /// Forgets set-aside addresses whose time has passed; returns whether any were.
    pub fn forget_expired_set_asides(&mut self, now: u64) -> bool {
        let before = self.set_aside.len();
        self.set_aside.retain(|_, &mut until| until > now);
        before != self.set_aside.len()
    }

    /// Drops records the configuration no longer allows: an address outside the
    /// subnet, or the server's or router's, or on another's static address, or (for a
    /// dynamic client) outside the range. Returns how many were dropped.
    pub fn keep_only_valid(&mut self, config: &Config) -> usize {
        let before = self.leases.len();
        self.leases.retain(|&mac, lease| {
            let address = lease.address;
            let allowed = match config.static_address(mac) {
                Some(fixed) => fixed == address,
                None => config.range.contains(address),
            };
            allowed
                && config.subnet.contains(&address)
                && address != config.address
                && Some(address) != config.router
                && !config.is_static_for_another(address, mac)
        });
        self.reindex();
        self.set_aside
            .retain(|address, _| config.subnet.contains(address));
        before - self.leases.len()
    }

    /// Reads the table from `path`; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Leases, LeaseFileError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Leases::new()),
            Err(source) => {
                return Err(LeaseFileError::Io {
                    what: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut leases: Leases =
            serde_json::from_slice(&bytes).map_err(|e| LeaseFileError::Format {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        if leases.version != FILE_VERSION {
            return Err(LeaseFileError::Format {
                path: path.to_path_buf(),
                why: format!("version {} where {FILE_VERSION} is known", leases.version),
            });
        }
        leases.reindex();
        Ok(leases)
    }

    /// Writes the table to `path` atomically: a temporary file in the same directory,
    /// synced, renamed over `path`, then the directory synced so the rename lasts.
    pub fn save(&self, path: &Path) -> Result<(), LeaseFileError> {
        let io_error = |what: &'static str, source: io::Error| LeaseFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let directory = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        let temporary = directory.join(name);
        let text = serde_json::to_vec_pretty(self).map_err(|e| LeaseFileError::Format {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(&text)?;
            file.write_all(b"\n")?;
            file.sync_all()
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&temporary);
            return Err(io_error("write", source));
        }
        if let Err(source) = fs::rename(&temporary, path) {
            let _ = fs::remove_file(&temporary);
            return Err(io_error("replace", source));
        }
        File::open(&directory)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error("sync the directory of", source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::dhcp::config::ConfigOptions;

    const A: MacAddress = MacAddress([2, 0, 0, 0, 0, 1]);
    const B: MacAddress = MacAddress([2, 0, 0, 0, 0, 2]);

    fn lease(last: u8, expires: u64) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 0, last),
            expires,
            bound: true,
            host_name: Some("vm".into()),
        }
    }

    #[test]
    fn the_file_round_trips_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.leases");
        let mut leases = Leases::new();
        leases.set(A, lease(10, 100));
        leases.set_aside(Ipv4Addr::new(10, 0, 0, 11), 200);
        leases.save(&path).unwrap();
        assert_eq!(Leases::load(&path).unwrap(), leases);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lab.leases")]);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none");
        assert_eq!(Leases::load(&path).unwrap(), Leases::new());
        fs::write(&path, "[1, 2]").unwrap();
        let error = Leases::load(&path).unwrap_err().to_string();
        assert!(error.contains("is not a guestnet lease file"), "{error}");
        fs::write(&path, r#"{"version": 9, "leases": {}}"#).unwrap();
        let error = Leases::load(&path).unwrap_err().to_string();
        assert!(error.contains("version 9"), "{error}");
    }

    #[test]
    fn one_address_has_one_record() {
        let mut leases = Leases::new();
        leases.set(A, lease(10, 100));
        leases.set(B, lease(10, 200));
        assert!(leases.get(A).is_none());
        assert_eq!(leases.holder(Ipv4Addr::new(10, 0, 0, 10)).unwrap().0, B);
    }

    #[test]
    fn a_file_with_two_records_on_one_address_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.leases");
        let text = r#"{"version": 1, "leases": {
            "02:00:00:00:00:01": {"address": "10.0.0.10", "expires": 5, "bound": true},
            "02:00:00:00:00:02": {"address": "10.0.0.10", "expires": 9, "bound": true}}}"#;
        fs::write(&path, text).unwrap();
        let leases = Leases::load(&path).unwrap();
        assert_eq!(leases.iter().count(), 1);
        assert_eq!(leases.holder(Ipv4Addr::new(10, 0, 0, 10)).unwrap().0, A);
    }

    #[test]
    fn records_the_configuration_no_longer_allows_are_dropped() {
        let config = Config::new(&ConfigOptions {
            subnet: "10.0.0.0/24".into(),
            range: "10.0.0.10-10.0.0.20".into(),
            ..ConfigOptions::default()
        })
        .unwrap();
        let mut leases = Leases::new();
        leases.set(A, lease(10, 100));
        leases.set(B, lease(30, 100));
        assert_eq!(leases.keep_only_valid(&config), 1);
        assert!(leases.get(A).is_some());
        assert!(leases.get(B).is_none());
    }
}

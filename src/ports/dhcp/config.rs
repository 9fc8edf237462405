//! What the DHCP server hands out, checked once at start: the subnet, the range, the
//! server's own address, static hosts, the domain.
//!
//! Every rule the server relies on later is checked here, so the state machine never
//! meets a range outside its subnet or a static host on the server's own address: the
//! range lies inside the subnet and holds neither its network nor its broadcast address;
//! the router and the server's address are in the subnet and outside the range, and differ;
//! static hosts are in the subnet, on addresses nobody else has, one per MAC.

use core::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::wire::MacAddress;

/// The shortest lease the server grants: clients renew at half of it.
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(60);

/// The longest lease: 32-bit seconds on the wire, kept well clear of "infinite".
pub const MAX_LEASE_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors of the server's options; each says which option and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--subnet` is not a CIDR block, or too small to hold clients and a server.
    #[error("--subnet {0}: {1}")]
    Subnet(String, &'static str),
    /// `--range` is not `FIRST-LAST`, or does not fit the subnet.
    #[error("--range {0}: {1}")]
    Range(String, String),
    /// An address option is not an address, or not where it must be.
    #[error("--{option} {value}: {why}")]
    Address {
        /// The option's name.
        option: &'static str,
        /// What was given.
        value: String,
        /// Why it was refused.
        why: String,
    },
    /// `--lease-time` is not a duration or out of bounds.
    #[error("--lease-time {0}: {1}")]
    LeaseTime(String, String),
    /// `--host` is not `MAC=IP`, or clashes with another address.
    #[error("--host {0}: {1}")]
    Host(String, String),
    /// `--domain` is not a domain name.
    #[error("--domain {0}: {1}")]
    Domain(String, String),
}

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address handed out.
    pub first: Ipv4Addr,
    /// The last address handed out.
    pub last: Ipv4Addr,
}

impl AddressRange {
    /// Whether `address` is in the range.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.first <= address && address <= self.last
    }

    /// The addresses, in order.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl FromStr for AddressRange {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<AddressRange, ConfigError> {
        let bad = |why: &str| ConfigError::Range(text.to_string(), why.to_string());
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| bad("expected FIRST-LAST, such as 10.0.0.10-10.0.0.99"))?;
        let first: Ipv4Addr = first
            .trim()
            .parse()
            .map_err(|_| bad("the first address is not an IPv4 address"))?;
        let last: Ipv4Addr = last
            .trim()
            .parse()
            .map_err(|_| bad("the last address is not an IPv4 address"))?;
        if first > last {
            return Err(bad("the first address is above the last"));
        }
        Ok(AddressRange { first, last })
    }
}

/// A client that always gets the same address: `--host MAC=IP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticHost {
    /// The client's hardware address.
    pub mac: MacAddress,
    /// Its address (in the subnet; in the range or not).
    pub address: Ipv4Addr,
}

impl FromStr for StaticHost {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<StaticHost, ConfigError> {
        let bad = |why: &str| ConfigError::Host(text.to_string(), why.to_string());
        let (mac, address) = text
            .split_once('=')
            .ok_or_else(|| bad("expected MAC=IP, such as 02:00:00:00:00:05=10.0.0.5"))?;
        let mac: MacAddress = mac
            .trim()
            .parse()
            .map_err(|_| bad("the MAC is not of the form 02:00:00:00:00:05"))?;
        if !mac.is_unicast() || mac.is_zero() {
            return Err(bad("the MAC is not a unicast address"));
        }
        let address = address
            .trim()
            .parse()
            .map_err(|_| bad("the address is not an IPv4 address"))?;
        Ok(StaticHost { mac, address })
    }
}

/// Parses a lease time: seconds, or a number with `s`, `m`, `h` or `d` (`90s`, `30m`,
/// `12h`, `1d`).
pub fn parse_lease_time(text: &str) -> Result<Duration, ConfigError> {
    let bad = |why: &str| ConfigError::LeaseTime(text.to_string(), why.to_string());
    let trimmed = text.trim();
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => trimmed.split_at(at),
        None => (trimmed, "s"),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| bad("expected a number of seconds, or one such as 30m, 12h, 1d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad("the unit is none of s, m, h, d")),
    };
    let seconds = number.checked_mul(scale).ok_or_else(|| bad("too long"))?;
    let time = Duration::from_secs(seconds);
    if time < MIN_LEASE_TIME || time > MAX_LEASE_TIME {
        return Err(bad("a lease lasts between 60 s and 365 days"));
    }
    Ok(time)
}

/// Checks a domain name for `--domain` and returns it lower-case, without a final dot.
pub fn parse_domain(text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::Domain(text.to_string(), why.to_string());
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 200 {
        return Err(bad(
            "longer than 200 characters, leaving no room for host names",
        ));
    }
    for label in name.split('.') {
        if !is_host_label(label) {
            return Err(bad(
                "each label must be 1 to 63 letters, digits or inner hyphens (RFC 1123)",
            ));
        }
    }
    if name.ends_with("in-addr.arpa") || name == "arpa" || name.ends_with(".arpa") {
        return Err(bad("the reverse tree is not a domain for host names"));
    }
    Ok(name)
}

/// Whether `label` is a host name label (RFC 1123): 1 to 63 ASCII letters, digits and
/// hyphens, neither starting nor ending with a hyphen.
pub fn is_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The options as given, before they are checked against each other.
#[derive(Debug, Clone, Default)]
pub struct ConfigOptions {
    /// `--subnet`.
    pub subnet: String,
    /// `--range`.
    pub range: String,
    /// `--router`.
    pub router: Option<Ipv4Addr>,
    /// `--dns`, repeated.
    pub dns: Vec<Ipv4Addr>,
    /// `--lease-time`.
    pub lease_time: Option<String>,
    /// `--host`, repeated.
    pub hosts: Vec<String>,
    /// `--address`.
    pub address: Option<Ipv4Addr>,
    /// `--domain`.
    pub domain: Option<String>,
}

/// The checked configuration of a DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The subnet the clients live in.
    pub subnet: Ipv4Net,
    /// The addresses handed out dynamically.
    pub range: AddressRange,
    /// The default gateway given to clients (option 3), if any.
    pub router: Option<Ipv4Addr>,
    /// The name servers given to clients (option 6): `--dns`, else the server itself
    /// when it serves a domain, else none.
    pub dns: Vec<Ipv4Addr>,
    /// How long a lease lasts.
    pub lease_time: Duration,
    /// Fixed addresses by MAC.
    pub hosts: Vec<StaticHost>,
    /// The server's own address.
    pub address: Ipv4Addr,
    /// The domain whose names the server answers for, lower-case, no final dot.
    pub domain: Option<String>,
}

/// The default lease time: an hour, as dnsmasq gives.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);

impl Config {
    /// Checks the options against each other.
    pub fn new(options: &ConfigOptions) -> Result<Config, ConfigError> {
        let subnet: Ipv4Net = options.subnet.trim().parse().map_err(|_| {
            ConfigError::Subnet(
                options.subnet.clone(),
                "expected an IPv4 CIDR block such as 10.0.0.0/24",
            )
        })?;
        if subnet.prefix_len() > 29 {
            return Err(ConfigError::Subnet(
                options.subnet.clone(),
                "too small: at most /29 leaves room for a server and clients",
            ));
        }
        if subnet.network() != subnet.addr() {
            return Err(ConfigError::Subnet(
                options.subnet.clone(),
                "host bits are set; give the network address, such as 10.0.0.0/24",
            ));
        }
        let usable = |address: Ipv4Addr| {
            subnet.contains(&address)
                && address != subnet.network()
                && address != subnet.broadcast()
        };
        let range: AddressRange = options.range.parse()?;
        if !usable(range.first) || !usable(range.last) {
            return Err(ConfigError::Range(
                options.range.clone(),
                format!(
                    "not inside {subnet} without its network and broadcast addresses ({} to {})",
                    Ipv4Addr::from(u32::from(subnet.network()) + 1),
                    Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)
                ),
            ));
        }
        let address_error =
            |option: &'static str, value: Ipv4Addr, why: String| ConfigError::Address {
                option,
                value: value.to_string(),
                why,
            };
        if let Some(router) = options.router {
            if !usable(router) {
                return Err(address_error(
                    "router",
                    router,
                    format!("not a host address of {subnet}"),
                ));
            }
            if range.contains(router) {
                return Err(address_error(
                    "router",
                    router,
                    format!("inside the range {}", options.range),
                ));
            }
        }
        let address = match options.address {
            Some(address) => {
                if !usable(address) {
                    return Err(address_error(
                        "address",
                        address,
                        format!("not a host address of {subnet}"),
                    ));
                }
                if range.contains(address) {
                    return Err(address_error(
                        "address",
                        address,
                        format!("inside the range {}", options.range),
                    ));
                }
                if Some(address) == options.router {
                    return Err(address_error(
                        "address",
                        address,
                        "the router's address; the server needs its own".to_string(),
                    ));
                }
                address
            }
            None => default_address(subnet, range, options.router).ok_or_else(|| {
                ConfigError::Range(
                    options.range.clone(),
                    format!(
                        "leaves no address of {subnet} for the server; shrink it or give --address"
                    ),
                )
            })?,
        };
        for dns in &options.dns {
            if dns.is_unspecified() || dns.is_broadcast() || dns.is_multicast() {
                return Err(address_error(
                    "dns",
                    *dns,
                    "not a name server's address".to_string(),
                ));
            }
        }
        let lease_time = match &options.lease_time {
            Some(text) => parse_lease_time(text)?,
            None => DEFAULT_LEASE_TIME,
        };
        let mut hosts: Vec<StaticHost> = Vec::new();
        for text in &options.hosts {
            let host: StaticHost = text.parse()?;
            let bad = |why: String| ConfigError::Host(text.clone(), why);
            if !usable(host.address) {
                return Err(bad(format!(
                    "{} is not a host address of {subnet}",
                    host.address
                )));
            }
            if host.address == address || Some(host.address) == options.router {
                return Err(bad(format!(
                    "{} is the server's or the router's address",
                    host.address
                )));
            }
            if hosts.iter().any(|h| h.mac == host.mac) {
                return Err(bad(format!("{} is given twice", host.mac)));
            }
            if hosts.iter().any(|h| h.address == host.address) {
                return Err(bad(format!("{} is given to two hosts", host.address)));
            }
            hosts.push(host);
        }
        let domain = options.domain.as_deref().map(parse_domain).transpose()?;
        let dns = if options.dns.is_empty() && domain.is_some() {
            vec![address]
        } else {
            options.dns.clone()
        };
        Ok(Config {
            subnet,
            range,
            router: options.router,
            dns,
            lease_time,
            hosts,
            address,
            domain,
        })
    }

    /// The fixed address of `mac`, if it has one.
    pub fn static_address(&self, mac: MacAddress) -> Option<Ipv4Addr> {
        self.hosts.iter().find(|h| h.mac == mac).map(|h| h.address)
    }

    /// Whether `address` is fixed for a client other than `mac`.
    pub fn is_static_for_another(&self, address: Ipv4Addr, mac: MacAddress) -> bool {
        self.hosts
            .iter()
            .any(|h| h.address == address && h.mac != mac)
    }
}

/// The server's default address: the last host address of the subnet that is neither
/// the router's nor in the range.
fn default_address(
    subnet: Ipv4Net,
    range: AddressRange,
    router: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .rev()
        .map(Ipv4Addr::from)
        .find(|&a| !range.contains(a) && Some(a) != router)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(subnet: &str, range: &str) -> ConfigOptions {
        ConfigOptions {
            subnet: subnet.into(),
            range: range.into(),
            ..ConfigOptions::default()
        }
    }

    #[test]
    fn the_server_takes_the_last_host_address_not_the_routers_nor_the_ranges() {
        let mut o = options("10.0.0.0/24", "10.0.0.10-10.0.0.99");
        assert_eq!(
            Config::new(&o).unwrap().address,
            Ipv4Addr::new(10, 0, 0, 254)
        );
        o.router = Some(Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(
            Config::new(&o).unwrap().address,
            Ipv4Addr::new(10, 0, 0, 253)
        );
        o.range = "10.0.0.200-10.0.0.253".into();
        assert_eq!(
            Config::new(&o).unwrap().address,
            Ipv4Addr::new(10, 0, 0, 199)
        );
        let full = options("10.0.0.0/29", "10.0.0.1-10.0.0.6");
        let error = Config::new(&full).unwrap_err().to_string();
        assert!(error.contains("leaves no address"), "{error}");
    }

    #[test]
    fn the_domain_makes_the_server_its_clients_name_server_unless_dns_is_given() {
        let mut o = options("10.0.0.0/24", "10.0.0.10-10.0.0.99");
        o.domain = Some("Lab.Internal.".into());
        let config = Config::new(&o).unwrap();
        assert_eq!(config.domain.as_deref(), Some("lab.internal"));
        assert_eq!(config.dns, vec![config.address]);
        o.dns = vec![Ipv4Addr::new(9, 9, 9, 9)];
        assert_eq!(
            Config::new(&o).unwrap().dns,
            vec![Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn bad_options_are_refused_naming_the_option_and_why() {
        let cases: Vec<(ConfigOptions, &str)> = vec![
            (
                options("10.0.0.0", "10.0.0.10-10.0.0.99"),
                "--subnet 10.0.0.0: expected an IPv4 CIDR",
            ),
            (
                options("10.0.0.1/24", "10.0.0.10-10.0.0.99"),
                "host bits are set",
            ),
            (options("10.0.0.0/30", "10.0.0.1-10.0.0.1"), "too small"),
            (
                options("10.0.0.0/24", "10.0.0.10"),
                "--range 10.0.0.10: expected FIRST-LAST",
            ),
            (
                options("10.0.0.0/24", "10.0.0.99-10.0.0.10"),
                "above the last",
            ),
            (
                options("10.0.0.0/24", "10.0.0.0-10.0.0.10"),
                "not inside 10.0.0.0/24",
            ),
            (
                options("10.0.0.0/24", "10.0.0.10-10.0.1.10"),
                "not inside 10.0.0.0/24",
            ),
            (
                ConfigOptions {
                    router: Some(Ipv4Addr::new(10, 0, 0, 50)),
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "--router 10.0.0.50: inside the range",
            ),
            (
                ConfigOptions {
                    address: Some(Ipv4Addr::new(10, 0, 0, 1)),
                    router: Some(Ipv4Addr::new(10, 0, 0, 1)),
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "--address 10.0.0.1: the router's address",
            ),
            (
                ConfigOptions {
                    lease_time: Some("5s".into()),
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "--lease-time 5s: a lease lasts between",
            ),
            (
                ConfigOptions {
                    lease_time: Some("1w".into()),
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "the unit is none of",
            ),
            (
                ConfigOptions {
                    hosts: vec!["02:00:00:00:00:05".into()],
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "expected MAC=IP",
            ),
            (
                ConfigOptions {
                    hosts: vec!["02:00:00:00:00:05=10.0.0.254".into()],
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "the server's or the router's address",
            ),
            (
                ConfigOptions {
                    hosts: vec![
                        "02:00:00:00:00:05=10.0.0.5".into(),
                        "02:00:00:00:00:06=10.0.0.5".into(),
                    ],
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "given to two hosts",
            ),
            (
                ConfigOptions {
                    domain: Some("lab_internal".into()),
                    ..options("10.0.0.0/24", "10.0.0.10-10.0.0.99")
                },
                "--domain lab_internal: each label",
            ),
        ];
        for (o, expected) in cases {
            let error = Config::new(&o).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn lease_times_take_units() {
        assert_eq!(parse_lease_time("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_lease_time("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_lease_time("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_lease_time("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_lease_time("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_lease_time("h").is_err());
        assert!(parse_lease_time("99999999999999999999d").is_err());
    }
}

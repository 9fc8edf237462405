//! `vxlan`: join a network to the same network on other hosts over VXLAN (RFC 7348).
//!
//! The port's counters live in its process; so that `guestnet status` can show them, the
//! command writes them every second to a status file ([`super::port_status`]).
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::port_status::{StatusFile, StatusKind};
use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::vxlan::{
    DEFAULT_AGEING, DEFAULT_MAX_LEARNED, MulticastGroup, Segments, VniMap, VxlanOptions, VxlanPort,
    check_vni,
};
use crate::wire::vxlan::DEFAULT_PORT;

/// How often the status file is rewritten.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `vxlan`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The port is one uplink peer standing for every host behind the remotes. Frames for
addresses learned behind a remote go to it alone; broadcast, multicast and unknown unicast
go to every remote, or once to a multicast group (`--group 239.1.1.1 --dev eth0`, as the
Linux device's `group ... dev ...`). With remotes, datagrams from other addresses are
dropped and counted; on a group, every sender becomes a remote until it has been silent
for the ageing time. Prints `ready slot N local ADDR inner-mtu M` once it serves. Example,
with the Linux kernel on the other side (`ip link add vx0 type vxlan id 42 local 10.99.0.2 remote 10.99.0.1 dstport 4789`):
  guestnet vxlan lab --vni 42 --local 10.99.0.1 --remote 10.99.0.2
With --vni-map, one port carries several VLANs, each in its own VNI: a frame of VLAN 10
crosses untagged in VNI 1010 and comes out of the other end tagged 10 again, so guests on
access ports of VLAN 10 on both hosts share one segment, apart from VLAN 20's:
  guestnet vxlan lab --vni-map 10=1010,20=1020 --local 10.99.0.1 --remote 10.99.0.2")]
pub struct VxlanArgs {
    /// Network name.
    pub name: String,
    /// VXLAN network identifier (0..=16777215): the one segment the port carries. Frames
    /// cross as they are, in the port's VLAN (--vlan) or with their tags.
    #[arg(long, value_parser = parse_vni, required_unless_present = "vni_map")]
    pub vni: Option<u32>,
    /// Carry several 802.1Q VLANs, each in a VNI of its own, instead of one --vni: the port
    /// is a trunk of exactly these VLANs; a frame of VLAN VID leaves untagged in its VNI,
    /// and one arriving in that VNI enters the network tagged VID. Datagrams of other VNIs
    /// are dropped (`rx_foreign_vni`), and so are inner frames that carry a tag of their
    /// own (`rx_tagged_inner`). Each VLAN (1-4094) and each VNI (0-16777215) once. Example:
    /// `--vni-map 10=1010,20=1020`.
    #[arg(long, value_name = "VID=VNI,…", value_parser = parse_vni_map,
          conflicts_with_all = ["vni", "vlan"])]
    pub vni_map: Option<VniMap>,
    /// Local address to bind, with an optional UDP port [default port: 4789].
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_endpoint)]
    pub local: SocketAddr,
    /// A remote endpoint (repeat for several; head-end replication).
    #[arg(long = "remote", value_name = "ADDR[:PORT]", value_parser = parse_endpoint,
          required_unless_present = "group")]
    pub remotes: Vec<SocketAddr>,
    /// IPv4 multicast group to send broadcast and unknown unicast to, instead of remotes.
    #[arg(
        long,
        value_name = "MCAST",
        requires = "dev",
        conflicts_with = "remotes"
    )]
    pub group: Option<Ipv4Addr>,
    /// Interface to join the multicast group on.
    #[arg(long, value_name = "IF", requires = "group")]
    pub dev: Option<String>,
    /// The underlay's MTU; frames that would not fit after the overhead are dropped.
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: usize,
    /// Most inner addresses learned behind the remotes; frames from further new source
    /// addresses are dropped and counted. The default is as many as the network learns
    /// behind one uplink peer: past that, the network would not learn the extra addresses
    /// and would flood every frame sent to them.
    #[arg(long, default_value_t = DEFAULT_MAX_LEARNED)]
    pub max_learned: usize,
    /// Seconds a learned address lives without traffic; on a group, also how long a
    /// sender stays a remote without a datagram.
    #[arg(long, default_value_t = DEFAULT_AGEING.as_secs())]
    pub ageing: u64,
    /// Make the tunnel an access port of 802.1Q VLAN VID (1-4094): frames cross it
    /// untagged and belong to VLAN VID here. Without it, tagged frames cross with their
    /// tags and untagged ones are VLAN 1. Example: `--vlan 10`.
    #[arg(long, value_name = "VID", value_parser = crate::network::vlan::parse_vid)]
    pub vlan: Option<u16>,
}

/// A VNI of 24 bits.
fn parse_vni(text: &str) -> Result<u32, String> {
    let vni: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a VNI (a number from 0 to 16777215)"))?;
    check_vni(vni)
}

/// `VID=VNI,VID=VNI…`.
fn parse_vni_map(text: &str) -> Result<VniMap, String> {
    text.parse()
}

/// `ADDR` or `ADDR:PORT`, IPv6 as `[ADDR]:PORT`; the port defaults to 4789.
fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    // An IPv6 address may come bracketed without a port, as in `[fd00::1]`.
    let bare = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| format!("{text:?} is not an address or address:port"))
}

/// Runs `vxlan` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: VxlanArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let segments = match (args.vni_map, args.vni) {
        (Some(map), _) => Segments::Map(map),
        (None, Some(vni)) => Segments::One(vni),
        // clap requires one of the two.
        (None, None) => anyhow::bail!("give --vni or --vni-map"),
    };
    let options = VxlanOptions {
        segments,
        local: args.local,
        remotes: args.remotes,
        group: match (args.group, args.dev) {
            (Some(address), Some(interface)) => Some(MulticastGroup { address, interface }),
            _ => None,
        },
        underlay_mtu: args.underlay_mtu,
        max_learned: args.max_learned,
        ageing: Duration::from_secs(args.ageing),
        vlan: args.vlan,
    };
    let port = VxlanPort::open(&network, options).context("VXLAN port")?;
    let handle = port.status_handle();
    let file = StatusFile::create(dir, StatusKind::Vxlan, &args.name)?;
    file.write(&handle.status())
        .context("write the status file")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready slot {} local {} inner-mtu {}",
        port.index(),
        port.local(),
        port.inner_mtu()
    )?;
    stdout.flush()?;
    drop(stdout);
    std::thread::scope(|scope| {
        let stop = &stop;
        let file = &file;
        scope.spawn(move || {
            // Ends when the bell rings: it stays rung, so every loop that waits on it sees it.
            while !stop.wait(STATUS_INTERVAL) {
                if let Err(e) = file.write(&handle.status()) {
                    tracing::warn!(error = %e, "cannot write the status file");
                }
            }
        });
        port.serve(stop)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_vxlan_port_by_default() {
        assert_eq!(
            parse_endpoint("10.99.0.1").unwrap(),
            "10.99.0.1:4789".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("10.99.0.1:8472").unwrap(),
            "10.99.0.1:8472".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("fd00::1").unwrap(),
            "[fd00::1]:4789".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("[fd00::1]").unwrap(),
            "[fd00::1]:4789".parse().unwrap()
        );
        assert!(parse_endpoint("host").is_err());
        assert!(parse_endpoint("[10.0.0.1").is_err());
    }

    /// `vxlan`'s arguments as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: VxlanArgs,
    }

    #[test]
    fn the_learned_address_bound_defaults_to_what_the_network_learns_behind_an_uplink() {
        use clap::{CommandFactory, Parser};
        let parsed = Command::try_parse_from([
            "vxlan", "lab", "--vni", "42", "--local", "10.0.0.1", "--remote", "10.0.0.2",
        ])
        .unwrap();
        assert_eq!(
            parsed.args.max_learned,
            crate::network::send::UPLINK_LEARN_QUOTA
        );
        let help = Command::command().render_long_help().to_string();
        let option = help
            .split("--max-learned")
            .nth(1)
            .and_then(|rest| rest.split("--ageing").next())
            .unwrap_or_default();
        assert!(option.contains("[default: 1024]"), "{option}");
        assert!(option.contains("learns behind one uplink"), "{option}");
    }

    #[test]
    fn a_vni_map_replaces_the_vni_and_the_vlan() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "vxlan", "lab", "--local", "10.0.0.1", "--remote", "10.0.0.2",
            ];
            args.extend_from_slice(extra);
            Command::try_parse_from(args)
        };
        use clap::Parser;
        let parsed = parse(&["--vni-map", "20=1020,10=1010"]).unwrap();
        let map = parsed.args.vni_map.unwrap();
        assert_eq!(map.pairs(), &[(10, 1010), (20, 1020)]);
        assert_eq!(parsed.args.vni, None);
        assert_eq!(parse(&["--vni", "42"]).unwrap().args.vni, Some(42));
        // One of the two, never both, and the map names the VLANs itself.
        let error = |extra: &[&str]| parse(extra).unwrap_err().to_string();
        assert!(error(&[]).contains("--vni"), "{}", error(&[]));
        let both = error(&["--vni", "42", "--vni-map", "10=1010"]);
        assert!(both.contains("cannot be used with"), "{both}");
        let vlan = error(&["--vlan", "10", "--vni-map", "10=1010"]);
        assert!(vlan.contains("cannot be used with"), "{vlan}");
        // Bad maps and VNIs say what is wrong.
        assert!(error(&["--vni", "16777216"]).contains("24 bits"));
        assert!(error(&["--vni-map", "10=1010,10=1020"]).contains("mapped twice"));
        assert!(error(&["--vni-map", "10=7,20=7"]).contains("VNI 7 is given to VLANs"));
        assert!(error(&["--vni-map", "0=7"]).contains("priority"));
        assert!(error(&["--vni-map", "10:7"]).contains("VID=VNI"));
    }
}

//! Fuzz target `rtnetlink`: any datagram a TAP port's link monitor may read.
//!
//! The kernel writes these messages, but any process in the namespace can send a datagram
//! to the monitor's socket, so they are parsed as untrusted bytes: whatever the lengths
//! say, parsing never panics, a datagram from anyone but the kernel yields no event at
//! all, and one from the kernel yields exactly one event per whole link message about the
//! watched interface, in order, with the flags that message carries.
//!
//! Input: `[sender][ifindex][datagram]`. `sender` picks the netlink port id the datagram
//! came from: 0 and 1 the kernel's, 2 no netlink address, others a process's port id.
#![no_main]

use guestnet::ports::rtnetlink::{KERNEL_PORT_ID, LinkEvent, parse, parse_from};
use libfuzzer_sys::fuzz_target;

const NLMSG_HEADER_LEN: usize = 16;
const IFINFO_LEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;

/// What each event should be, found by walking the messages by their headers alone:
/// `Some(flags)` for a new-link message, `None` for a deleted link.
fn expected(datagram: &[u8], ifindex: u32) -> Vec<Option<u32>> {
    let u16_at = |at: usize| u16::from_ne_bytes([datagram[at], datagram[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_ne_bytes([
            datagram[at],
            datagram[at + 1],
            datagram[at + 2],
            datagram[at + 3],
        ])
    };
    let mut events = Vec::new();
    let mut offset = 0;
    while offset + 4 <= datagram.len() {
        let len = u32_at(offset) as usize;
        if len < NLMSG_HEADER_LEN || len > datagram.len() - offset {
            break;
        }
        let kind = u16_at(offset + 4);
        let info = offset + NLMSG_HEADER_LEN;
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK)
            && len >= NLMSG_HEADER_LEN + IFINFO_LEN
            && u32_at(info + 4) == ifindex
        {
            events.push((kind == RTM_NEWLINK).then(|| u32_at(info + 8)));
        }
        // Messages are 4-byte aligned.
        offset += len.div_ceil(4) * 4;
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let [sender, ifindex, datagram @ ..] = data else {
        return;
    };
    let sender = match sender {
        0 | 1 => Some(KERNEL_PORT_ID),
        2 => None,
        other => Some(u32::from(*other)),
    };
    let ifindex = u32::from(*ifindex);
    let mut events = Vec::new();
    let believed = parse_from(sender, datagram, ifindex, &mut events);
    if sender != Some(KERNEL_PORT_ID) {
        assert!(!believed, "believed port {sender:?}");
        assert!(events.is_empty(), "events from port {sender:?}: {events:?}");
        return;
    }
    assert!(believed);
    let mut unchecked = Vec::new();
    parse(datagram, ifindex, &mut unchecked);
    assert_eq!(events, unchecked);
    let kinds: Vec<Option<u32>> = events
        .iter()
        .map(|event| match event {
            LinkEvent::Changed(state) => Some(state.flags),
            LinkEvent::Removed => None,
        })
        .collect();
    assert_eq!(kinds, expected(datagram, ifindex));
});

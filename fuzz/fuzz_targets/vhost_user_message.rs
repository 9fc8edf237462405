//! Fuzz target `vhost_user_message`: any bytes a vhost-user frontend sends as a message.
//!
//! The frontend is untrusted. Whatever the header says, parsing it either fails with an
//! error (the connection is closed) or yields a header whose payload size is within the
//! limit; whatever the payload and however many descriptors came with it, the request
//! either parses or fails with an error, never a panic, and a parsed memory table has one
//! descriptor per region.
//!
//! Input: the first byte is the number of descriptors that came with the message (0–15),
//! then the 12-byte header, then the payload.
#![no_main]

use guestnet::wire::vhost_user::{HEADER_LEN, MAX_PAYLOAD, MessageHeader, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, rest)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds & 0x0f);
    let Ok(header) = MessageHeader::parse(rest) else {
        return;
    };
    assert!(header.size <= MAX_PAYLOAD);
    let payload = &rest[HEADER_LEN..];
    let payload = &payload[..payload.len().min(header.size as usize)];
    if let Ok(Request::SetMemTable(regions)) = Request::parse(&header, payload, fds) {
        assert_eq!(regions.len(), fds);
    }
});

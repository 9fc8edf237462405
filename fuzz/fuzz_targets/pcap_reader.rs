//! Fuzz target `pcap_reader`: a capture file from anywhere.
//!
//! The reader must turn any bytes into records or an error, never a panic or an allocation
//! larger than its record bound, and what it reads must survive a round trip through the
//! writer unchanged.
#![no_main]

use std::io::Cursor;

use guestnet::wire::pcap::{MAX_SNAPLEN, PcapReader, PcapWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = PcapReader::new(Cursor::new(data)) else {
        return;
    };
    let mut records = Vec::new();
    // Each record takes at least 16 bytes of input, so this ends with the input.
    while let Ok(Some(record)) = reader.next_record() {
        assert!(record.data.len() <= MAX_SNAPLEN as usize);
        records.push(record);
    }
    let mut writer = PcapWriter::new(Vec::new(), MAX_SNAPLEN).expect("write to memory");
    for record in &records {
        writer
            .write_frame(record.timestamp_ns, &record.data)
            .expect("write to memory");
    }
    let written = writer.into_inner();
    let mut again = PcapReader::new(Cursor::new(&written)).expect("read back our own header");
    for record in &records {
        let back = again
            .next_record()
            .expect("read back our own record")
            .expect("as many records as written");
        assert_eq!(back.data, record.data);
    }
    assert!(matches!(again.next_record(), Ok(None)));
});

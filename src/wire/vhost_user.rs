//! vhost-user messages: how a VMM (QEMU, cloud-hypervisor) hands a virtio device's rings
//! to a backend process over a unix socket.
//!
//! Every message is a 12-byte header — request code, flags, payload size, all little
//! endian — then the payload; file descriptors (guest memory, eventfds) travel beside the
//! header as `SCM_RIGHTS`. The flags carry the protocol version (1, in the low two bits),
//! the reply bit (set on the backend's answers) and the need-reply bit (the frontend wants a
//! `REPLY_ACK` status for a message that has no answer of its own).
//!
//! The frontend is untrusted: a VM's owner may run any program there. So a message is
//! read in two steps, as everything else on the wire here: [`MessageHeader::parse`] checks
//! the header alone (version, a payload size under [`MAX_PAYLOAD`]) so the reader knows how
//! much to read, and [`Request::parse`] turns the whole payload into a typed request,
//! checking its length against what that request carries and the number of descriptors
//! that came with it. Neither panics on any input; codes this backend does not implement
//! parse to [`Request::Unknown`] so the caller can answer them and carry on.
//!
//! The numbers are the vhost-user specification's (QEMU's `docs/interop/vhost-user.rst`).

use thiserror::Error;

/// Length of the message header.
pub const HEADER_LEN: usize = 12;

/// The protocol version this backend speaks, in the low two bits of the flags.
pub const VERSION: u32 = 0x1;
/// Mask of the version bits.
pub const VERSION_MASK: u32 = 0x3;
/// Set on every message the backend sends in answer.
pub const FLAG_REPLY: u32 = 0x4;
/// The frontend asks for a `REPLY_ACK` status (when that protocol feature was acked).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Largest payload accepted. The largest message a net backend takes is `SET_MEM_TABLE`
/// with eight regions (264 bytes); anything far beyond that is not a message we can use.
pub const MAX_PAYLOAD: u32 = 4096;

/// Most regions a `SET_MEM_TABLE` may carry (one descriptor each).
pub const MAX_MEM_TABLE_REGIONS: usize = 8;

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = MAX_MEM_TABLE_REGIONS;

/// Bit 8 of a vring kick/call/err payload: no descriptor comes with the message.
pub const VRING_NOFD_MASK: u64 = 0x100;
/// Bits 0–7 of that payload: the queue index.
pub const VRING_INDEX_MASK: u64 = 0xff;

/// Request codes (front-end → back-end), as the specification numbers them.
pub mod code {
    /// `VHOST_USER_GET_FEATURES`
    pub const GET_FEATURES: u32 = 1;
    /// `VHOST_USER_SET_FEATURES`
    pub const SET_FEATURES: u32 = 2;
    /// `VHOST_USER_SET_OWNER`
    pub const SET_OWNER: u32 = 3;
    /// `VHOST_USER_RESET_OWNER`
    pub const RESET_OWNER: u32 = 4;
    /// `VHOST_USER_SET_MEM_TABLE`
    pub const SET_MEM_TABLE: u32 = 5;
    /// `VHOST_USER_SET_VRING_NUM`
    pub const SET_VRING_NUM: u32 = 8;
    /// `VHOST_USER_SET_VRING_ADDR`
    pub const SET_VRING_ADDR: u32 = 9;
    /// `VHOST_USER_SET_VRING_BASE`
    pub const SET_VRING_BASE: u32 = 10;
    /// `VHOST_USER_GET_VRING_BASE`
    pub const GET_VRING_BASE: u32 = 11;
    /// `VHOST_USER_SET_VRING_KICK`
    pub const SET_VRING_KICK: u32 = 12;
    /// `VHOST_USER_SET_VRING_CALL`
    pub const SET_VRING_CALL: u32 = 13;
    /// `VHOST_USER_SET_VRING_ERR`
    pub const SET_VRING_ERR: u32 = 14;
    /// `VHOST_USER_GET_PROTOCOL_FEATURES`
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// `VHOST_USER_SET_PROTOCOL_FEATURES`
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// `VHOST_USER_GET_QUEUE_NUM`
    pub const GET_QUEUE_NUM: u32 = 17;
    /// `VHOST_USER_SET_VRING_ENABLE`
    pub const SET_VRING_ENABLE: u32 = 18;
    /// `VHOST_USER_GET_MAX_MEM_SLOTS`
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    /// `VHOST_USER_ADD_MEM_REG`
    pub const ADD_MEM_REG: u32 = 37;
    /// `VHOST_USER_REM_MEM_REG`
    pub const REM_MEM_REG: u32 = 38;
}

/// Protocol feature bits (`GET_PROTOCOL_FEATURES`).
pub mod protocol {
    /// `VHOST_USER_PROTOCOL_F_MQ`: `GET_QUEUE_NUM` is answered.
    pub const MQ: u64 = 1 << 0;
    /// `VHOST_USER_PROTOCOL_F_REPLY_ACK`: the need-reply flag is honoured.
    pub const REPLY_ACK: u64 = 1 << 3;
    /// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`: memory comes region by region.
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
}

/// Why a message could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("truncated header")]
    Truncated,
    /// A protocol version other than 1.
    #[error("protocol version {0}, not 1")]
    BadVersion(u32),
    /// A message from the backend's side (reply bit set) arriving at the backend.
    #[error("a reply sent to the backend")]
    UnexpectedReply,
    /// A payload size over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the limit")]
    Oversized(u32),
    /// A payload whose length is not what the request carries.
    #[error("request {request}: payload of {len} bytes")]
    BadPayload {
        /// The request code.
        request: u32,
        /// The payload length that came.
        len: usize,
    },
    /// The wrong number of file descriptors for the request.
    #[error("request {request}: {fds} file descriptors")]
    BadFds {
        /// The request code.
        request: u32,
        /// How many came.
        fds: usize,
    },
}

/// A checked message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Request code.
    pub request: u32,
    /// Flags (version, reply, need-reply).
    pub flags: u32,
    /// Payload size in bytes, at most [`MAX_PAYLOAD`].
    pub size: u32,
}

impl MessageHeader {
    /// Parses and checks the first [`HEADER_LEN`] bytes of a message from a frontend.
    pub fn parse(bytes: &[u8]) -> Result<MessageHeader, MessageError> {
        let word = |i: usize| -> Result<u32, MessageError> {
            bytes
                .get(i * 4..i * 4 + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or(MessageError::Truncated)
        };
        let header = MessageHeader {
            request: word(0)?,
            flags: word(1)?,
            size: word(2)?,
        };
        if header.flags & VERSION_MASK != VERSION {
            return Err(MessageError::BadVersion(header.flags & VERSION_MASK));
        }
        if header.flags & FLAG_REPLY != 0 {
            return Err(MessageError::UnexpectedReply);
        }
        if header.size > MAX_PAYLOAD {
            return Err(MessageError::Oversized(header.size));
        }
        Ok(header)
    }

    /// Whether the frontend asked for a `REPLY_ACK` status.
    pub fn needs_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// The header as sent.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[0..4].copy_from_slice(&self.request.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.flags.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.size.to_le_bytes());
        bytes
    }
}

/// One guest memory region as `SET_MEM_TABLE` and `ADD_MEM_REG` describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub memory_size: u64,
    /// Where the frontend maps it in its own address space (ring addresses use these).
    pub userspace_addr: u64,
    /// Offset of the region in the file descriptor that comes with it.
    pub mmap_offset: u64,
}

/// Length of one region in the payload.
pub const MEMORY_REGION_LEN: usize = 32;

impl MemoryRegion {
    fn parse(bytes: &[u8]) -> Option<MemoryRegion> {
        Some(MemoryRegion {
            guest_phys_addr: u64_at(bytes, 0)?,
            memory_size: u64_at(bytes, 8)?,
            userspace_addr: u64_at(bytes, 16)?,
            mmap_offset: u64_at(bytes, 24)?,
        })
    }

    /// The region as a payload carries it.
    pub fn to_bytes(&self) -> [u8; MEMORY_REGION_LEN] {
        let mut bytes = [0; MEMORY_REGION_LEN];
        for (i, value) in [
            self.guest_phys_addr,
            self.memory_size,
            self.userspace_addr,
            self.mmap_offset,
        ]
        .into_iter()
        .enumerate()
        {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

/// `SET_VRING_ADDR`'s payload: where a ring's three parts are, in the frontend's address
/// space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddr {
    /// Queue index.
    pub index: u32,
    /// Flags (bit 0: log the used ring, which this backend does not offer).
    pub flags: u32,
    /// Descriptor table.
    pub desc: u64,
    /// Used ring.
    pub used: u64,
    /// Available ring.
    pub avail: u64,
    /// Log address (unused).
    pub log: u64,
}

/// Which eventfd a `SET_VRING_KICK`/`CALL`/`ERR` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringFd {
    /// Queue index.
    pub index: u32,
    /// The message carries a descriptor (else the ring is polled / not signalled).
    pub has_fd: bool,
}

/// A request from the frontend, checked against its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET_FEATURES`.
    GetFeatures,
    /// `SET_FEATURES`.
    SetFeatures(u64),
    /// `SET_OWNER`.
    SetOwner,
    /// `RESET_OWNER`.
    ResetOwner,
    /// `SET_MEM_TABLE`: the whole guest memory, one descriptor per region.
    SetMemTable(Vec<MemoryRegion>),
    /// `SET_VRING_NUM`.
    SetVringNum {
        /// Queue index.
        index: u32,
        /// Ring size.
        num: u32,
    },
    /// `SET_VRING_ADDR`.
    SetVringAddr(VringAddr),
    /// `SET_VRING_BASE`.
    SetVringBase {
        /// Queue index.
        index: u32,
        /// Next available index.
        num: u32,
    },
    /// `GET_VRING_BASE`: stops the ring.
    GetVringBase {
        /// Queue index.
        index: u32,
    },
    /// `SET_VRING_KICK`.
    SetVringKick(VringFd),
    /// `SET_VRING_CALL`.
    SetVringCall(VringFd),
    /// `SET_VRING_ERR`.
    SetVringErr(VringFd),
    /// `GET_PROTOCOL_FEATURES`.
    GetProtocolFeatures,
    /// `SET_PROTOCOL_FEATURES`.
    SetProtocolFeatures(u64),
    /// `GET_QUEUE_NUM`.
    GetQueueNum,
    /// `SET_VRING_ENABLE`.
    SetVringEnable {
        /// Queue index.
        index: u32,
        /// Enable (else disable).
        enable: bool,
    },
    /// `GET_MAX_MEM_SLOTS`.
    GetMaxMemSlots,
    /// `ADD_MEM_REG`: one more region, with its descriptor.
    AddMemReg(MemoryRegion),
    /// `REM_MEM_REG`.
    RemMemReg(MemoryRegion),
    /// A request this backend does not implement (its payload is ignored).
    Unknown(u32),
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

impl Request {
    /// Parses the payload of a message with `header`, which came with `fds` descriptors.
    pub fn parse(
        header: &MessageHeader,
        payload: &[u8],
        fds: usize,
    ) -> Result<Request, MessageError> {
        let request = header.request;
        let bad_payload = MessageError::BadPayload {
            request,
            len: payload.len(),
        };
        let exact = |len: usize| {
            if payload.len() == len {
                Ok(())
            } else {
                Err(bad_payload)
            }
        };
        let fd_count = |wanted: usize| {
            if fds == wanted {
                Ok(())
            } else {
                Err(MessageError::BadFds { request, fds })
            }
        };
        let u64_payload = || {
            exact(8)?;
            u64_at(payload, 0).ok_or(bad_payload)
        };
        // The vring state payload is two u32: index and number.
        let state = || {
            exact(8)?;
            Ok::<_, MessageError>((
                u32_at(payload, 0).ok_or(bad_payload)?,
                u32_at(payload, 4).ok_or(bad_payload)?,
            ))
        };
        let vring_fd = || {
            let word = u64_payload()?;
            let has_fd = word & VRING_NOFD_MASK == 0;
            fd_count(usize::from(has_fd))?;
            Ok::<_, MessageError>(VringFd {
                index: (word & VRING_INDEX_MASK) as u32,
                has_fd,
            })
        };
        let no_payload = || {
            // QEMU sends some of these with an 8-byte zero payload; accept either.
            if payload.is_empty() || payload.len() == 8 {
                fd_count(0)
            } else {
                Err(bad_payload)
            }
        };
        // ADD/REM_MEM_REG: a u64 of padding, then one region.
        let single_region = || {
            exact(8 + MEMORY_REGION_LEN)?;
            MemoryRegion::parse(&payload[8..]).ok_or(bad_payload)
        };
        Ok(match request {
            code::GET_FEATURES => no_payload().map(|()| Request::GetFeatures)?,
            code::SET_FEATURES => {
                fd_count(0)?;
                Request::SetFeatures(u64_payload()?)
            }
            code::SET_OWNER => no_payload().map(|()| Request::SetOwner)?,
            code::RESET_OWNER => no_payload().map(|()| Request::ResetOwner)?,
            code::SET_MEM_TABLE => {
                let count = u32_at(payload, 0).ok_or(bad_payload)? as usize;
                if count == 0 || count > MAX_MEM_TABLE_REGIONS {
                    return Err(bad_payload);
                }
                exact(8 + count * MEMORY_REGION_LEN)?;
                fd_count(count)?;
                let regions = payload[8..]
                    .chunks_exact(MEMORY_REGION_LEN)
                    .filter_map(MemoryRegion::parse)
                    .collect();
                Request::SetMemTable(regions)
            }
            code::SET_VRING_NUM => {
                fd_count(0)?;
                let (index, num) = state()?;
                Request::SetVringNum { index, num }
            }
            code::SET_VRING_ADDR => {
                fd_count(0)?;
                exact(40)?;
                let addr = || -> Option<VringAddr> {
                    Some(VringAddr {
                        index: u32_at(payload, 0)?,
                        flags: u32_at(payload, 4)?,
                        desc: u64_at(payload, 8)?,
                        used: u64_at(payload, 16)?,
                        avail: u64_at(payload, 24)?,
                        log: u64_at(payload, 32)?,
                    })
                };
                Request::SetVringAddr(addr().ok_or(bad_payload)?)
            }
            code::SET_VRING_BASE => {
                fd_count(0)?;
                let (index, num) = state()?;
                Request::SetVringBase { index, num }
            }
            code::GET_VRING_BASE => {
                fd_count(0)?;
                let (index, _) = state()?;
                Request::GetVringBase { index }
            }
            code::SET_VRING_KICK => Request::SetVringKick(vring_fd()?),
            code::SET_VRING_CALL => Request::SetVringCall(vring_fd()?),
            code::SET_VRING_ERR => Request::SetVringErr(vring_fd()?),
            code::GET_PROTOCOL_FEATURES => no_payload().map(|()| Request::GetProtocolFeatures)?,
            code::SET_PROTOCOL_FEATURES => {
                fd_count(0)?;
                Request::SetProtocolFeatures(u64_payload()?)
            }
            code::GET_QUEUE_NUM => no_payload().map(|()| Request::GetQueueNum)?,
            code::SET_VRING_ENABLE => {
                fd_count(0)?;
                let (index, num) = state()?;
                Request::SetVringEnable {
                    index,
                    enable: num != 0,
                }
            }
            code::GET_MAX_MEM_SLOTS => no_payload().map(|()| Request::GetMaxMemSlots)?,
            code::ADD_MEM_REG => {
                fd_count(1)?;
                Request::AddMemReg(single_region()?)
            }
            // The specification lets a frontend send the region's descriptor along; it is
            // not needed to find the region.
            code::REM_MEM_REG => Request::RemMemReg(single_region()?),
            other => Request::Unknown(other),
        })
    }
}

/// Builds a reply to `request` carrying `payload`.
pub fn reply(request: u32, payload: &[u8]) -> Vec<u8> {
    let header = MessageHeader {
        request,
        flags: VERSION | FLAG_REPLY,
        size: payload.len() as u32,
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A reply carrying one u64 (features, queue count, a `REPLY_ACK` status: 0 is success).
pub fn reply_u64(request: u32, value: u64) -> Vec<u8> {
    reply(request, &value.to_le_bytes())
}

/// A reply carrying a vring state (`GET_VRING_BASE`).
pub fn reply_state(request: u32, index: u32, num: u32) -> Vec<u8> {
    let mut payload = [0; 8];
    payload[0..4].copy_from_slice(&index.to_le_bytes());
    payload[4..8].copy_from_slice(&num.to_le_bytes());
    reply(request, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
        MessageHeader {
            request,
            flags,
            size,
        }
        .to_bytes()
        .to_vec()
    }

    #[test]
    fn header_is_three_little_endian_words() {
        let bytes = [2, 0, 0, 0, 0x09, 0, 0, 0, 8, 0, 0, 0];
        let parsed = MessageHeader::parse(&bytes).unwrap();
        assert_eq!(parsed.request, code::SET_FEATURES);
        assert_eq!(parsed.size, 8);
        assert!(parsed.needs_reply());
        assert_eq!(parsed.to_bytes(), bytes);
    }

    #[test]
    fn header_checks_version_reply_bit_and_size() {
        assert_eq!(
            MessageHeader::parse(&header(1, 0x2, 0)),
            Err(MessageError::BadVersion(2))
        );
        assert_eq!(
            MessageHeader::parse(&header(1, 0x5, 0)),
            Err(MessageError::UnexpectedReply)
        );
        assert_eq!(
            MessageHeader::parse(&header(1, 0x1, MAX_PAYLOAD + 1)),
            Err(MessageError::Oversized(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            MessageHeader::parse(&[1, 0, 0]),
            Err(MessageError::Truncated)
        );
    }

    fn parse(request: u32, payload: &[u8], fds: usize) -> Result<Request, MessageError> {
        let header = MessageHeader {
            request,
            flags: VERSION,
            size: payload.len() as u32,
        };
        Request::parse(&header, payload, fds)
    }

    #[test]
    fn mem_table_needs_one_descriptor_per_region() {
        let region = MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 0x1000_0000,
            userspace_addr: 0x7f00_0000_0000,
            mmap_offset: 0,
        };
        let mut payload = vec![1, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&region.to_bytes());
        assert_eq!(
            parse(code::SET_MEM_TABLE, &payload, 1),
            Ok(Request::SetMemTable(vec![region]))
        );
        assert_eq!(
            parse(code::SET_MEM_TABLE, &payload, 0),
            Err(MessageError::BadFds {
                request: code::SET_MEM_TABLE,
                fds: 0
            })
        );
        // A count the payload does not back.
        payload[0] = 2;
        assert!(matches!(
            parse(code::SET_MEM_TABLE, &payload, 2),
            Err(MessageError::BadPayload { .. })
        ));
        payload[0] = 9;
        assert!(parse(code::SET_MEM_TABLE, &payload, 9).is_err());
    }

    #[test]
    fn vring_fd_payload_names_queue_and_whether_a_descriptor_came() {
        let with = 3u64.to_le_bytes();
        assert_eq!(
            parse(code::SET_VRING_KICK, &with, 1),
            Ok(Request::SetVringKick(VringFd {
                index: 3,
                has_fd: true
            }))
        );
        let without = (3u64 | VRING_NOFD_MASK).to_le_bytes();
        assert_eq!(
            parse(code::SET_VRING_CALL, &without, 0),
            Ok(Request::SetVringCall(VringFd {
                index: 3,
                has_fd: false
            }))
        );
        assert!(parse(code::SET_VRING_KICK, &with, 0).is_err());
    }

    #[test]
    fn vring_addr_is_index_flags_and_four_addresses() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        for value in [0x1000u64, 0x3000, 0x2000, 0] {
            payload.extend_from_slice(&value.to_le_bytes());
        }
        assert_eq!(
            parse(code::SET_VRING_ADDR, &payload, 0),
            Ok(Request::SetVringAddr(VringAddr {
                index: 1,
                flags: 0,
                desc: 0x1000,
                used: 0x3000,
                avail: 0x2000,
                log: 0
            }))
        );
        assert!(parse(code::SET_VRING_ADDR, &payload[..39], 0).is_err());
    }

    #[test]
    fn unknown_codes_parse_to_unknown() {
        assert_eq!(parse(99, &[1, 2, 3], 0), Ok(Request::Unknown(99)));
    }

    #[test]
    fn replies_carry_the_reply_bit() {
        let bytes = reply_u64(code::GET_FEATURES, 1 << 32);
        let header = [1, 0, 0, 0, 0x5, 0, 0, 0, 8, 0, 0, 0];
        assert_eq!(&bytes[..12], &header);
        assert_eq!(&bytes[12..], &(1u64 << 32).to_le_bytes());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(request in 0u32..64, payload in proptest::collection::vec(0u8.., 0..300), fds in 0usize..10) {
            let _ = parse(request, &payload, fds);
        }
    }
}

//! The message handler: one method per vhost-user request.
//!
//! [`RequestHandler::handle`] is the dispatcher, one line per request; each method checks
//! what the frontend asks against what was offered and what guest memory holds, then
//! changes the connection's [`Shared`] state. A request that makes no sense now is
//! refused and changes nothing; the connection reads on. The handler runs on the
//! connection thread, between polls; the connection tells the data path after each
//! message that the state may have changed.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;

use super::datapath::{self, Vring, feature};
use super::memory::{GuestMemory, MAX_MEM_SLOTS};
use super::refusal::Refusal;
use super::state::{Shared, is_eventfd, lock};
use crate::wire::vhost_user::{self as protocol, MemoryRegion, Request, VringAddr, VringFd, code};

/// What a request amounts to, unless it was refused.
pub enum Answer {
    /// A reply of the request's own.
    Reply(Vec<u8>),
    /// Done; a `REPLY_ACK` status 0 if asked for.
    Done,
}

/// Applies the frontend's requests to a connection's state.
pub struct RequestHandler<'s, 'a> {
    shared: &'s Shared<'a>,
    /// Features offered in `GET_FEATURES`.
    offered: u64,
    /// Protocol features offered in `GET_PROTOCOL_FEATURES`.
    offered_protocol: u64,
    queue_pairs: u16,
    /// Offloads were offered (`--offload`).
    offload: bool,
    /// Port label for logs.
    label: String,
    /// The unsealed-memory warning was given.
    warned_unsealed: bool,
}

impl<'s, 'a> RequestHandler<'s, 'a> {
    /// A handler offering `queue_pairs` queue pairs, and offloads if `offload`.
    pub fn new(
        shared: &'s Shared<'a>,
        queue_pairs: u16,
        offload: bool,
        label: String,
    ) -> RequestHandler<'s, 'a> {
        let mut offered = feature::VERSION_1
            | feature::MRG_RXBUF
            | feature::EVENT_IDX
            | feature::INDIRECT_DESC
            | feature::IN_ORDER
            | feature::PROTOCOL_FEATURES;
        if offload {
            offered |= feature::CSUM
                | feature::GUEST_CSUM
                | feature::GUEST_TSO4
                | feature::GUEST_TSO6
                | feature::HOST_TSO4
                | feature::HOST_TSO6;
        }
        if queue_pairs > 1 {
            offered |= feature::MQ;
        }
        RequestHandler {
            shared,
            offered,
            offered_protocol: protocol::protocol::MQ
                | protocol::protocol::REPLY_ACK
                | protocol::protocol::CONFIGURE_MEM_SLOTS,
            queue_pairs,
            offload,
            label,
            warned_unsealed: false,
        }
    }

    /// Applies one request, with the descriptors its message carried.
    pub fn handle(&mut self, request: Request, fds: Vec<OwnedFd>) -> Result<Answer, Refusal> {
        match request {
            Request::GetFeatures => self.get_features(),
            Request::SetFeatures(features) => self.set_features(features),
            Request::SetOwner => Ok(Answer::Done),
            Request::ResetOwner => self.reset_owner(),
            Request::SetMemTable(regions) => self.set_mem_table(&regions, fds),
            Request::GetMaxMemSlots => self.get_max_mem_slots(),
            Request::AddMemReg(region) => self.add_mem_reg(region, fds),
            Request::RemMemReg(region) => self.rem_mem_reg(region),
            Request::SetVringNum { index, num } => self.set_vring_num(index, num),
            Request::SetVringAddr(addr) => self.set_vring_addr(addr),
            Request::SetVringBase { index, num } => self.set_vring_base(index, num),
            Request::GetVringBase { index } => self.get_vring_base(index),
            Request::SetVringKick(which) => self.set_vring_kick(which, fds),
            Request::SetVringCall(which) => self.set_vring_call(which, fds),
            Request::SetVringErr(which) => self.set_vring_err(which),
            Request::GetProtocolFeatures => self.get_protocol_features(),
            Request::SetProtocolFeatures(features) => self.set_protocol_features(features),
            Request::GetQueueNum => self.get_queue_num(),
            Request::SetVringEnable { index, enable } => self.set_vring_enable(index, enable),
            Request::Unknown(request) => Err(Refusal::NotImplemented(request)),
        }
    }

    /// `GET_FEATURES`: what this port offers.
    fn get_features(&self) -> Result<Answer, Refusal> {
        Ok(Answer::Reply(protocol::reply_u64(
            code::GET_FEATURES,
            self.offered,
        )))
    }

    /// `SET_FEATURES`: the features the driver acked; sets the rings' notification
    /// suppression and the peer's offloads.
    fn set_features(&mut self, features: u64) -> Result<Answer, Refusal> {
        if features & !self.offered != 0 {
            return Err(Refusal::FeaturesNotOffered(features & !self.offered));
        }
        let shared = self.shared;
        shared.set_features(features);
        for vring in &shared.vrings {
            lock(vring)
                .queue
                .set_event_idx(features & feature::EVENT_IDX != 0);
        }
        let offloads = if self.offload {
            datapath::guest_offloads(features)
        } else {
            0
        };
        if let Err(e) = shared.control.set_offloads(offloads) {
            tracing::warn!(error = %e, "cannot set the peer's offloads");
        }
        Ok(Answer::Done)
    }

    /// `RESET_OWNER`: back to a fresh connection's state.
    fn reset_owner(&mut self) -> Result<Answer, Refusal> {
        let shared = self.shared;
        for vring in &shared.vrings {
            *lock(vring) = Vring::new().map_err(Refusal::QueueNotReset)?;
        }
        shared.set_memory(None);
        shared.forget_negotiation();
        Ok(Answer::Done)
    }

    /// `SET_MEM_TABLE`: the whole guest memory, replacing what was mapped.
    fn set_mem_table(
        &mut self,
        regions: &[MemoryRegion],
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, Refusal> {
        let memory = GuestMemory::from_table(regions, fds).map_err(Refusal::BadMemoryTable)?;
        self.warn_if_unsealed(&memory);
        self.shared.set_memory(Some(memory));
        Ok(Answer::Done)
    }

    /// `GET_MAX_MEM_SLOTS`: how many regions `ADD_MEM_REG` may add.
    fn get_max_mem_slots(&self) -> Result<Answer, Refusal> {
        Ok(Answer::Reply(protocol::reply_u64(
            code::GET_MAX_MEM_SLOTS,
            MAX_MEM_SLOTS as u64,
        )))
    }

    /// `ADD_MEM_REG`: one more region of guest memory.
    fn add_mem_reg(
        &mut self,
        region: MemoryRegion,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Answer, Refusal> {
        let Some(fd) = fds.pop() else {
            return Err(Refusal::RegionWithoutDescriptor);
        };
        let added = match self.shared.memory() {
            Some(memory) => memory.with_region(region, fd),
            None => GuestMemory::single(region, fd),
        };
        let memory = added.map_err(Refusal::BadAddedRegion)?;
        self.warn_if_unsealed(&memory);
        self.shared.set_memory(Some(memory));
        Ok(Answer::Done)
    }

    /// `REM_MEM_REG`: one region of guest memory less.
    fn rem_mem_reg(&mut self, region: MemoryRegion) -> Result<Answer, Refusal> {
        let Some(current) = self.shared.memory() else {
            return Err(Refusal::RemoveWithoutMemory);
        };
        let memory = current
            .without_region(region)
            .map_err(Refusal::BadRemovedRegion)?;
        self.shared.set_memory(memory);
        Ok(Answer::Done)
    }

    /// `SET_VRING_NUM`: a ring's size.
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<Answer, Refusal> {
        let vring = self.vring(index)?;
        let size = u16::try_from(num).unwrap_or(0);
        let mut vring = lock(vring);
        vring.reconfigured();
        vring
            .queue
            .try_set_size(size)
            .map_err(|_| Refusal::BadRingSize(num))?;
        Ok(Answer::Done)
    }

    /// `SET_VRING_ADDR`: where a ring's three parts lie, in the frontend's addresses.
    fn set_vring_addr(&mut self, addr: VringAddr) -> Result<Answer, Refusal> {
        let vring = self.vring(addr.index)?;
        let Some(memory) = self.shared.memory() else {
            return Err(Refusal::RingBeforeMemory);
        };
        let mut vring = lock(vring);
        vring.reconfigured();
        let size = u64::from(vring.queue.size());
        // The ring's three parts, each with its length, must lie in guest memory.
        let parts = [
            (addr.desc, 16 * size),
            (addr.avail, 6 + 2 * size),
            (addr.used, 6 + 8 * size),
        ];
        let mut guest = [vm_memory::GuestAddress(0); 3];
        for (slot, (address, len)) in guest.iter_mut().zip(parts) {
            *slot = memory
                .frontend_to_guest(address, len)
                .ok_or(Refusal::RingOutsideMemory { address, len })?;
        }
        let set = vring
            .queue
            .try_set_desc_table_address(guest[0])
            .and_then(|()| vring.queue.try_set_avail_ring_address(guest[1]))
            .and_then(|()| vring.queue.try_set_used_ring_address(guest[2]));
        vring.addressed = set.is_ok();
        set.map_err(Refusal::MisalignedRing)?;
        Ok(Answer::Done)
    }

    /// `SET_VRING_BASE`: where a ring starts (or resumes, after a reconnect).
    fn set_vring_base(&mut self, index: u32, num: u32) -> Result<Answer, Refusal> {
        let mut vring = lock(self.vring(index)?);
        vring.reconfigured();
        // Split rings: the low 16 bits are the next available index.
        vring.queue.set_next_avail(num as u16);
        vring.queue.set_next_used(num as u16);
        Ok(Answer::Done)
    }

    /// `GET_VRING_BASE`: stops a ring and says where it stopped.
    fn get_vring_base(&mut self, index: u32) -> Result<Answer, Refusal> {
        let next = {
            let mut vring = lock(self.vring(index)?);
            vring.reconfigured();
            vring.started = false;
            vring.queue.set_ready(false);
            vring.queue.next_avail()
        };
        Ok(Answer::Reply(protocol::reply_state(
            code::GET_VRING_BASE,
            index,
            u32::from(next),
        )))
    }

    /// `SET_VRING_KICK`: the eventfd the guest kicks; starts the ring.
    fn set_vring_kick(&mut self, which: VringFd, mut fds: Vec<OwnedFd>) -> Result<Answer, Refusal> {
        let vring = self.vring(which.index)?;
        let Some(kick) = fds.pop().filter(|_| which.has_fd) else {
            return Err(Refusal::PolledRing);
        };
        if !is_eventfd(&kick) {
            return Err(Refusal::KickNotAnEventfd);
        }
        let mut vring = lock(vring);
        vring.reconfigured();
        vring.kick = Some(Arc::new(kick));
        vring.started = true;
        vring.queue.set_ready(true);
        Ok(Answer::Done)
    }

    /// `SET_VRING_CALL`: the eventfd we signal when we used buffers (none: the guest
    /// polls).
    fn set_vring_call(&mut self, which: VringFd, mut fds: Vec<OwnedFd>) -> Result<Answer, Refusal> {
        let vring = self.vring(which.index)?;
        let call = fds.pop().filter(|_| which.has_fd);
        if call.as_ref().is_some_and(|fd| !is_eventfd(fd)) {
            return Err(Refusal::CallNotAnEventfd);
        }
        lock(vring).call = call;
        Ok(Answer::Done)
    }

    /// `SET_VRING_ERR`: errors are reported in the counters; the descriptor is not kept.
    fn set_vring_err(&mut self, which: VringFd) -> Result<Answer, Refusal> {
        self.vring(which.index)?;
        Ok(Answer::Done)
    }

    /// `GET_PROTOCOL_FEATURES`: what this port offers of the protocol's extensions.
    fn get_protocol_features(&self) -> Result<Answer, Refusal> {
        Ok(Answer::Reply(protocol::reply_u64(
            code::GET_PROTOCOL_FEATURES,
            self.offered_protocol,
        )))
    }

    /// `SET_PROTOCOL_FEATURES`: the extensions the frontend acked.
    fn set_protocol_features(&mut self, features: u64) -> Result<Answer, Refusal> {
        if features & !self.offered_protocol != 0 {
            return Err(Refusal::ProtocolFeaturesNotOffered(
                features & !self.offered_protocol,
            ));
        }
        self.shared.set_protocol_features(features);
        Ok(Answer::Done)
    }

    /// `GET_QUEUE_NUM`: virtqueues, not pairs, as the specification counts them
    /// (cloud-hypervisor compares its queue count with this; QEMU compares pairs, which are
    /// fewer).
    fn get_queue_num(&self) -> Result<Answer, Refusal> {
        Ok(Answer::Reply(protocol::reply_u64(
            code::GET_QUEUE_NUM,
            u64::from(self.queue_pairs) * 2,
        )))
    }

    /// `SET_VRING_ENABLE`: accepted whenever it comes, since QEMU sends it before
    /// `SET_FEATURES`.
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<Answer, Refusal> {
        lock(self.vring(index)?).enabled = enable;
        Ok(Answer::Done)
    }

    /// The vring `index`, if the frontend may use it.
    fn vring(&self, index: u32) -> Result<&'s Mutex<Vring>, Refusal> {
        self.shared
            .vrings
            .get(index as usize)
            .ok_or(Refusal::QueueOutOfRange {
                index,
                queue_pairs: self.queue_pairs,
            })
    }

    /// Says once per connection that the frontend could crash this process by shrinking
    /// the guest's memory file under it.
    fn warn_if_unsealed(&mut self, memory: &GuestMemory) {
        if !memory.sealed() && !self.warned_unsealed {
            self.warned_unsealed = true;
            tracing::warn!(
                target: super::UNSEALED_MEMORY,
                port = %self.label,
                "the guest's memory file is not sealed against shrinking: the frontend could \
                 make this process fault, and every VM it serves lose its network; QEMU's \
                 memfd backend seals by default, or run one port process per VM"
            );
        }
    }
}

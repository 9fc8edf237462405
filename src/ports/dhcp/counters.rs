//! What the DHCP port did and refused, one counter per reason.
//!
//! Every frame the port takes from the network is either answered, used (an ARP reply
//! that ends a probe), ignored because it is not for the server (counted in `ignored`), or
//! dropped under exactly one of the other reasons below. `status` and `/metrics` show them.

use crate::ports::counters::counters;

counters! {
    /// The DHCP port's counters.
    pub struct DhcpCounters;
    /// Frames not for the server: another destination, another EtherType, another UDP
    /// port, ARP about other addresses. A normal sight on a shared segment.
    ignored,
    /// Dropped: a frame whose Ethernet, ARP, IPv4 or UDP headers do not hold together
    /// (lengths, versions, checksums), or an IPv4 fragment.
    bad_headers,
    /// Dropped: a DHCP payload the message crate cannot decode.
    undecodable,
    /// Dropped: a BOOTREPLY sent to the server's port.
    not_a_request,
    /// Dropped: another hardware type or length than Ethernet's, or a multicast or zero
    /// client hardware address.
    not_ethernet,
    /// Dropped: the client hardware address is not the frame's source (a guest asking
    /// in another's name).
    chaddr_mismatch,
    /// Dropped: through a relay agent (giaddr set); this server serves its own segment.
    relayed,
    /// Dropped: no or an unknown DHCP message type.
    unknown_message_type,
    /// Dropped: a message lacking what its type needs (an address to request, decline or
    /// inform about).
    malformed,
    /// DISCOVERs, REQUESTs, RELEASEs, DECLINEs and INFORMs handled.
    discovers,
    /// REQUESTs handled.
    requests,
    /// RELEASEs handled.
    releases,
    /// DECLINEs handled: each sets an address aside.
    declines,
    /// INFORMs handled.
    informs,
    /// OFFERs sent.
    offers,
    /// ACKs sent.
    acks,
    /// NAKs sent: a request for an address that is another's or not this server's.
    naks,
    /// Not answered: no free address for a DISCOVER.
    no_free_address,
    /// Not answered now: too many probes already running.
    too_many_probes,
    /// Probes answered by another station: the address was set aside.
    probe_conflicts,
    /// Addresses of the range found in use (by ARP) by a station without a lease on
    /// them: set aside.
    claimed_without_lease,
    /// RELEASE or DECLINE of a lease the server does not know.
    unknown_lease,
    /// Host names refused (not an RFC 1123 label); the lease is given without a name.
    bad_host_names,
    /// ARP requests for the server's address answered.
    arp_replies,
    /// ICMP echo requests to the server answered.
    echo_replies,
    /// DNS queries answered with data or an empty authoritative answer.
    dns_answers,
    /// DNS queries for a name in the domain that does not exist (NXDOMAIN).
    dns_nxdomain,
    /// DNS queries refused: outside the domain and its reverse zone (no forwarding).
    dns_refused,
    /// DNS messages that do not decode, or are not a single standard query (FORMERR,
    /// NOTIMP, or dropped when not even the header is there).
    dns_malformed,
    /// Dropped: a DNS message for the server while it serves no domain.
    dns_disabled,
    /// Frames sent that reached nobody: refused by the network or dropped at every
    /// receiver (the peers' counters say why).
    send_failures,
}

//! Names for guests: an authoritative DNS server for one domain and its reverse zone,
//! and for nothing else.
//!
//! A guest that sent a host name in its DHCP request (option 12, or the first label of
//! option 81) is `NAME.DOMAIN` while its lease is active: A queries get its address, PTR
//! queries for its address in `in-addr.arpa` get the name back. The answers follow RFC
//! 1034/2308 as an authoritative server gives them: AA set; a name that exists without
//! data of the type asked (AAAA: guests get no IPv6 address from this server) is NOERROR
//! with no answer and the zone's SOA in the authority section; a name that does not
//! exist is NXDOMAIN with the same SOA. Anything outside the domain and the subnet's
//! reverse names is REFUSED: the server forwards nothing and resolves nothing else, so
//! it cannot serve as an open resolver or an amplifier. Recursion is never available.
//!
//! Queries are decoded by `hickory-proto`; a message that does not decode gets FORMERR
//! when at least its header is there and it claims to be a query, and nothing otherwise;
//! a response is never answered (two servers must not be able to ping-pong).

use core::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::{IpNet, Ipv4Net};

/// Time to live of the answers: short, as leases come and go.
pub const ANSWER_TTL: u32 = 60;

/// The DNS header's length; shorter is not a DNS message.
const HEADER_LEN: usize = 12;

/// The zones the server answers for.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    subnet: Ipv4Net,
    reverse: Name,
}

/// What became of a query, for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer, with data or an authoritative empty one.
    Answered(Vec<u8>),
    /// NXDOMAIN.
    NoSuchName(Vec<u8>),
    /// REFUSED: not this server's zone.
    Refused(Vec<u8>),
    /// FORMERR or NOTIMP; `None` when not even a reply can be made.
    Malformed(Option<Vec<u8>>),
}

impl Zone {
    /// The zones for `domain` (checked by the configuration) and `subnet`.
    pub fn new(domain: &str, subnet: Ipv4Net) -> Result<Zone, String> {
        let domain = Name::from_ascii(format!("{domain}."))
            .map_err(|e| format!("{domain} is not a domain name: {e}"))?
            .to_lowercase();
        let octets = subnet.network().octets();
        let whole = usize::from(subnet.prefix_len() / 8);
        let mut labels: Vec<String> = octets[..whole].iter().rev().map(u8::to_string).collect();
        labels.push("in-addr".into());
        labels.push("arpa".into());
        let reverse = Name::from_ascii(format!("{}.", labels.join(".")))
            .map_err(|e| format!("reverse zone of {subnet}: {e}"))?;
        Ok(Zone {
            domain,
            subnet,
            reverse,
        })
    }

    /// Answers the query in `bytes` from `names` (host label, address).
    pub fn answer(&self, bytes: &[u8], names: &[(String, Ipv4Addr)]) -> Outcome {
        if bytes.len() < HEADER_LEN {
            return Outcome::Malformed(None);
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let is_query = bytes[2] & 0x80 == 0;
        let request = match Message::from_vec(bytes) {
            Ok(message) => message,
            Err(_) if is_query => {
                return Outcome::Malformed(encode(&Message::error_msg(
                    id,
                    OpCode::Query,
                    ResponseCode::FormErr,
                )));
            }
            Err(_) => return Outcome::Malformed(None),
        };
        if request.metadata.message_type != MessageType::Query {
            return Outcome::Malformed(None);
        }
        if request.metadata.op_code != OpCode::Query {
            let reply = Message::error_msg(id, request.metadata.op_code, ResponseCode::NotImp);
            return Outcome::Malformed(encode(&reply));
        }
        let [query] = &request.queries[..] else {
            let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return Outcome::Malformed(encode(&reply));
        };
        let mut reply = Message::response(id, OpCode::Query);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.add_query(query.clone());
        if request.edns.is_some() {
            reply.set_edns(Edns::new());
        }
        let outcome = self.resolve(query, names, &mut reply);
        // One question and at most one record and an SOA, their names compressed against
        // the question's: always within the 512 bytes of plain UDP (RFC 1035), so no
        // answer needs truncating (a test holds the longest one to it).
        let Some(encoded) = encode(&reply) else {
            return Outcome::Malformed(None);
        };
        match outcome {
            ResponseCode::NoError => Outcome::Answered(encoded),
            ResponseCode::NXDomain => Outcome::NoSuchName(encoded),
            _ => Outcome::Refused(encoded),
        }
    }

    /// Fills `reply` for `query`; returns its response code.
    fn resolve(
        &self,
        query: &Query,
        names: &[(String, Ipv4Addr)],
        reply: &mut Message,
    ) -> ResponseCode {
        let name = query.name().to_lowercase();
        let refuse = |reply: &mut Message| {
            reply.metadata.response_code = ResponseCode::Refused;
            ResponseCode::Refused
        };
        if query.query_class() != DNSClass::IN || !name.is_fqdn() {
            return refuse(reply);
        }
        let wants =
            |kind: RecordType| query.query_type() == kind || query.query_type() == RecordType::ANY;
        if self.domain.zone_of(&name) {
            reply.metadata.authoritative = true;
            if name == self.domain {
                if wants(RecordType::SOA) {
                    reply.add_answer(self.soa(&self.domain));
                } else {
                    reply.add_authority(self.soa(&self.domain));
                }
                return ResponseCode::NoError;
            }
            let found = (name.num_labels() == self.domain.num_labels() + 1)
                .then(|| name.iter().next())
                .flatten()
                .and_then(|label| names.iter().find(|(n, _)| n.as_bytes() == label));
            return match found {
                Some(&(_, address)) => {
                    if wants(RecordType::A) {
                        reply.add_answer(Record::from_rdata(
                            name,
                            ANSWER_TTL,
                            RData::A(A(address)),
                        ));
                    } else {
                        reply.add_authority(self.soa(&self.domain));
                    }
                    ResponseCode::NoError
                }
                None => self.no_such_name(reply, &self.domain),
            };
        }
        if self.reverse.zone_of(&name) {
            let Ok(IpNet::V4(net)) = name.parse_arpa_name() else {
                return refuse(reply);
            };
            if !self.subnet.contains(&net) {
                return refuse(reply);
            }
            reply.metadata.authoritative = true;
            if net.prefix_len() < 32 {
                // A name above the addresses (the zone's apex or an inner label): it exists.
                if wants(RecordType::SOA) && name == self.reverse {
                    reply.add_answer(self.soa(&self.reverse));
                } else {
                    reply.add_authority(self.soa(&self.reverse));
                }
                return ResponseCode::NoError;
            }
            let found = names.iter().find(|(_, address)| *address == net.addr());
            return match found {
                Some((host, _)) => {
                    if wants(RecordType::PTR) {
                        let Ok(target) =
                            Name::from_ascii(host).and_then(|h| h.append_domain(&self.domain))
                        else {
                            return self.no_such_name(reply, &self.reverse);
                        };
                        reply.add_answer(Record::from_rdata(
                            name,
                            ANSWER_TTL,
                            RData::PTR(PTR(target)),
                        ));
                    } else {
                        reply.add_authority(self.soa(&self.reverse));
                    }
                    ResponseCode::NoError
                }
                None => self.no_such_name(reply, &self.reverse),
            };
        }
        refuse(reply)
    }

    fn no_such_name(&self, reply: &mut Message, zone: &Name) -> ResponseCode {
        reply.metadata.response_code = ResponseCode::NXDomain;
        reply.add_authority(self.soa(zone));
        ResponseCode::NXDomain
    }

    /// The zone's SOA: this server is its only source; its minimum is the time
    /// resolvers may remember a negative answer (RFC 2308).
    fn soa(&self, zone: &Name) -> Record {
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        let soa = SOA::new(
            self.domain.clone(),
            hostmaster,
            1,
            3600,
            600,
            86400,
            ANSWER_TTL,
        );
        Record::from_rdata(zone.clone(), ANSWER_TTL, RData::SOA(soa))
    }
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone::new("lab.internal", "10.0.0.0/24".parse().unwrap()).unwrap()
    }

    fn names() -> Vec<(String, Ipv4Addr)> {
        vec![("vm1".into(), Ipv4Addr::new(10, 0, 0, 10))]
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn decode(outcome: &Outcome) -> Message {
        let bytes = match outcome {
            Outcome::Answered(b) | Outcome::NoSuchName(b) | Outcome::Refused(b) => b,
            Outcome::Malformed(Some(b)) => b,
            Outcome::Malformed(None) => panic!("no reply"),
        };
        Message::from_vec(bytes).unwrap()
    }

    #[test]
    fn a_guest_name_resolves_to_its_address_case_insensitively() {
        let outcome = zone().answer(&query("VM1.Lab.Internal.", RecordType::A), &names());
        assert!(matches!(outcome, Outcome::Answered(_)), "{outcome:?}");
        let reply = decode(&outcome);
        assert_eq!(reply.metadata.id, 0x1234);
        assert!(reply.metadata.authoritative);
        assert!(reply.metadata.recursion_desired);
        assert!(!reply.metadata.recursion_available);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            &reply.answers[0].data,
            &RData::A(A(Ipv4Addr::new(10, 0, 0, 10)))
        );
    }

    #[test]
    fn an_address_resolves_back_to_the_guest_name() {
        let outcome = zone().answer(&query("10.0.0.10.in-addr.arpa.", RecordType::PTR), &names());
        let reply = decode(&outcome);
        assert_eq!(
            &reply.answers[0].data,
            &RData::PTR(PTR(Name::from_ascii("vm1.lab.internal.").unwrap()))
        );
    }

    #[test]
    fn a_name_without_an_address_of_that_type_is_an_empty_authoritative_answer() {
        let outcome = zone().answer(&query("vm1.lab.internal.", RecordType::AAAA), &names());
        assert!(matches!(outcome, Outcome::Answered(_)));
        let reply = decode(&outcome);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn an_unknown_guest_or_address_is_nxdomain_with_the_soa() {
        for (name, kind) in [
            ("vm2.lab.internal.", RecordType::A),
            ("a.vm1.lab.internal.", RecordType::A),
            ("11.0.0.10.in-addr.arpa.", RecordType::PTR),
        ] {
            let outcome = zone().answer(&query(name, kind), &names());
            assert!(
                matches!(outcome, Outcome::NoSuchName(_)),
                "{name}: {outcome:?}"
            );
            let reply = decode(&outcome);
            assert!(reply.metadata.authoritative);
            assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
        }
    }

    #[test]
    fn names_outside_the_domain_and_the_subnet_are_refused() {
        for (name, kind) in [
            ("example.com.", RecordType::A),
            ("internal.", RecordType::A),
            ("1.1.1.1.in-addr.arpa.", RecordType::PTR),
            ("1.0.1.10.in-addr.arpa.", RecordType::PTR),
        ] {
            let outcome = zone().answer(&query(name, kind), &names());
            assert!(
                matches!(outcome, Outcome::Refused(_)),
                "{name}: {outcome:?}"
            );
            let reply = decode(&outcome);
            assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
            assert!(reply.answers.is_empty());
        }
    }

    #[test]
    fn the_apex_answers_its_soa() {
        let outcome = zone().answer(&query("lab.internal.", RecordType::SOA), &names());
        assert_eq!(decode(&outcome).answers[0].record_type(), RecordType::SOA);
        let outcome = zone().answer(&query("0.0.10.in-addr.arpa.", RecordType::SOA), &names());
        assert_eq!(decode(&outcome).answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn the_longest_answers_fit_plain_udp() {
        // A 63-byte host label, a domain filling the rest of 255 bytes.
        let label = "h".repeat(63);
        let domain = format!("{}.{}.{}", "d".repeat(63), "e".repeat(63), "f".repeat(52));
        let zone = Zone::new(&domain, "10.0.0.0/24".parse().unwrap()).unwrap();
        let names = vec![(label.clone(), Ipv4Addr::new(10, 0, 0, 10))];
        for (name, kind) in [
            (format!("{label}.{domain}."), RecordType::A),
            (format!("{label}.{domain}."), RecordType::AAAA),
            (format!("x.{domain}."), RecordType::A),
            ("10.0.0.10.in-addr.arpa.".to_string(), RecordType::PTR),
        ] {
            let outcome = zone.answer(&query(&name, kind), &names);
            let (Outcome::Answered(bytes) | Outcome::NoSuchName(bytes)) = &outcome else {
                panic!("{name}: {outcome:?}")
            };
            assert!(bytes.len() <= 512, "{name} {kind}: {} bytes", bytes.len());
        }
    }

    #[test]
    fn garbage_gets_formerr_a_response_gets_nothing() {
        assert_eq!(
            zone().answer(&[1, 2, 3], &names()),
            Outcome::Malformed(None)
        );
        let mut bytes = query("vm1.lab.internal.", RecordType::A);
        bytes.truncate(20);
        let outcome = zone().answer(&bytes, &names());
        assert_eq!(
            decode(&outcome).metadata.response_code,
            ResponseCode::FormErr
        );
        let mut response = query("vm1.lab.internal.", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(zone().answer(&response, &names()), Outcome::Malformed(None));
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_server_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = zone().answer(&bytes, &names());
        }
    }
}

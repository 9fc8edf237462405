#!/usr/bin/env python3
"""Writes the fuzz targets' seed files: real frames, in each target's input format.

Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. The outputs are committed; this
script says how they were made. Frames (checksums computed, as a host would send them):
  arp_request   who-has 192.168.1.1 tell 192.168.1.10, broadcast, padded to 60 bytes
  ipv6_nd       ICMPv6 neighbour solicitation for fe80::1 to its solicited-node group
  tcp_syn       IPv4 TCP SYN 10.0.2.15:40000 -> 10.0.2.2:22 with MSS and window scale
  vlan_tagged   the ARP request behind an 802.1Q tag (VLAN 100)
Offload seeds are super-frames as a Linux guest with TSO/USO hands them over: one
virtio-net header, then one frame whose TCP/UDP checksum field holds only the
pseudo-header sum (NEEDS_CSUM), to be cut into segments:
  tso4          TCP/IPv4, 4000 bytes of payload, gso_size 1448
  tso6          TCP/IPv6, 3000 bytes of payload, gso_size 1428
  uso4          UDP/IPv4, 3000 bytes of payload, gso_size 1400
  csum_only     a small TCP/IPv4 segment with only its checksum left to do
VXLAN seeds carry the frames above in a VXLAN header (I flag, VNI 42), alone or behind
the outer IPv4 and UDP headers a VTEP sends (192.0.2.1 -> 192.0.2.2, port 4789, DF):
  <frame>             the UDP payload alone
  <frame>_ipv4        the whole IPv4 packet, UDP checksum 0 as RFC 7348 recommends
  <frame>_ipv4_csum   the same with the UDP checksum computed, as some VTEPs send it
rtnetlink seeds are `[sender 0 = the kernel][ifindex][datagram]`:
  lo_newlink        captured from a kernel (6.x): its RTM_NEWLINK answer to RTM_GETLINK for
                    lo (index 1), with every attribute it sends; `--capture-rtnetlink`
                    captures it again on this machine
  tap_newlink       RTM_NEWLINK for index 7: up, promiscuous, name, address, promiscuity
  forged_newlink    the same from port id 146 (a process, not the kernel)
  changed_then_gone RTM_NEWLINK then RTM_DELLINK for index 7 in one datagram
vhost_user_sequence seeds are `[image length: u16 LE][guest memory image][message]...`: a
QEMU 10 start-up over a guest whose memory (one 256 KiB region at guest address 0) holds
a receive ring (queue 0) with four 2 KiB buffers posted and a transmit ring (queue 1) with
one ARP request queued, both of eight entries:
  qemu_startup        SET_MEM_TABLE, both rings set up and enabled, REPLY_ACK on
  add_mem_reg_startup the same with the memory added by ADD_MEM_REG (CONFIGURE_MEM_SLOTS)
  startup_then_stop   qemu_startup, then both rings stopped (GET_VRING_BASE), the memory
                      replaced, and RESET_OWNER
dhcp_station seeds are `[how][bytes]` (see the target): messages as busybox udhcpc and
ISC dhclient send them, from 52:54:00:12:34:56, host names alpha and beta:
  udhcpc_discover   DISCOVER with client id, host name, parameter list, max size
  dhclient_request  REQUEST (SELECTING) for 10.0.0.10 from server 10.0.0.254, with
                    host name and parameter list
  dns_a             a DNS query, recursion desired, for the A record of alpha.lab.internal
  dns_ptr           the same for the PTR record of 10.0.0.10 (10.0.0.10.in-addr.arpa)
  arp_request       the ARP request above, as the payload of a broadcast ARP frame
"""
import os
import socket
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = bytes.fromhex("525400123456")
DST = bytes.fromhex("525400abcdef")


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def arp_request():
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    arp += SRC + bytes([192, 168, 1, 10]) + b"\0" * 6 + bytes([192, 168, 1, 1])
    frame = b"\xff" * 6 + SRC + b"\x08\x06" + arp
    return frame.ljust(60, b"\0")


def ipv6_nd():
    src_ip = bytes.fromhex("fe800000000000005054" "00fffe123456")
    target = bytes.fromhex("fe800000000000000000000000000001")
    dst_ip = bytes.fromhex("ff0200000000000000000001ff000001")
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + target + bytes([1, 1]) + SRC
    pseudo = src_ip + dst_ip + struct.pack("!IxxxB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + src_ip + dst_ip
    return bytes.fromhex("3333ff000001") + SRC + b"\x86\xdd" + ip6 + icmp


def tcp_syn():
    src_ip, dst_ip = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
    options = bytes([2, 4, 0x05, 0xB4, 1, 3, 3, 7])  # MSS 1460, NOP, window scale 7
    tcp = struct.pack("!HHIIBBHHH", 40000, 22, 0x12345678, 0, (5 + 2) << 4, 0x02, 64240, 0, 0)
    tcp += options
    pseudo = src_ip + dst_ip + struct.pack("!xBH", 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0) + src_ip + dst_ip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return DST + SRC + b"\x08\x00" + ip + tcp


def vlan_tagged():
    arp = arp_request()
    return arp[:12] + b"\x81\x00" + struct.pack("!H", 100) + arp[12:]


def virtio_net_header(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def pseudo_sum(pseudo):
    """The folded, uncomplemented sum Linux leaves in a NEEDS_CSUM checksum field."""
    return (~checksum(pseudo)) & 0xFFFF


def payload(n):
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


def tcp_header(seq, csum):
    # 40000 -> 5201, ACK|PSH, window 64000.
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, 0x18, 64000, csum, 0)


def tso4(n=4000):
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    data = payload(n)
    tcp_len = 20 + len(data)
    csum = pseudo_sum(src_ip + dst_ip + struct.pack("!xBH", 6, tcp_len))
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 1, 0x4000, 64, 6, 0) + src_ip + dst_ip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    frame = DST + SRC + b"\x08\x00" + ip + tcp_header(1000, csum) + data
    return virtio_net_header(1, 1, 54, 1448, 34, 16) + frame


def tso6(n=3000):
    src_ip = bytes.fromhex("20010db8000000000000000000000001")
    dst_ip = bytes.fromhex("20010db8000000000000000000000002")
    data = payload(n)
    tcp_len = 20 + len(data)
    csum = pseudo_sum(src_ip + dst_ip + struct.pack("!IxxxB", tcp_len, 6))
    ip6 = struct.pack("!IHBB", 0x60000000, tcp_len, 6, 64) + src_ip + dst_ip
    frame = DST + SRC + b"\x86\xdd" + ip6 + tcp_header(1000, csum) + data
    return virtio_net_header(1, 4, 74, 1428, 54, 16) + frame


def uso4(n=3000):
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    data = payload(n)
    udp_len = 8 + len(data)
    csum = pseudo_sum(src_ip + dst_ip + struct.pack("!xBH", 17, udp_len))
    udp = struct.pack("!HHHH", 40000, 5201, udp_len, csum)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0) + src_ip + dst_ip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    frame = DST + SRC + b"\x08\x00" + ip + udp + data
    return virtio_net_header(1, 5, 42, 1400, 34, 6) + frame


def csum_only():
    # The TSO frame's header with no segmentation, over a payload that fits the MTU.
    seeded = tso4(100)
    return virtio_net_header(1, 0, 0, 0, 34, 16) + seeded[12:]


def vxlan_payload(frame, vni=42):
    return struct.pack("!B3xI", 0x08, vni << 8) + frame


def vxlan_ipv4(frame, with_checksum):
    src_ip, dst_ip = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    payload = vxlan_payload(frame)
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", 49152 + len(frame), 4789, udp_len, 0) + payload
    if with_checksum:
        pseudo = src_ip + dst_ip + struct.pack("!xBH", 17, udp_len)
        udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0) + src_ip + dst_ip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def netlink_attribute(kind, payload):
    attribute = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attribute + b"\0" * (-len(attribute) % 4)


def link_message(kind, ifindex, flags, attributes=b""):
    # ifinfomsg: family, pad, type (ARPHRD_ETHER), index, flags, change.
    body = struct.pack("=BxHiII", 0, 1, ifindex, flags, 0xFFFFFFFF) + attributes
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def tap_newlink():
    attributes = (
        netlink_attribute(3, b"gn0\0")  # IFLA_IFNAME
        + netlink_attribute(1, bytes.fromhex("021122334455"))  # IFLA_ADDRESS
        + netlink_attribute(30, struct.pack("=I", 1))  # IFLA_PROMISCUITY
    )
    return link_message(16, 7, 0x1 | 0x100 | 0x1000, attributes)  # UP, PROMISC, MULTICAST


def capture_lo_newlink():
    """The kernel's answer to RTM_GETLINK for lo (index 1)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    sock.bind((0, 0))
    request = struct.pack("=IHHII", 32, 18, 1, 1, 0) + struct.pack("=BxHiII", 0, 0, 1, 0, 0)
    sock.sendto(request, (0, 0))
    answer, (port_id, _) = sock.recvfrom(65536)
    assert port_id == 0, "not from the kernel"
    return answer


VHOST_USER_ADDRESS = 0x7F00_0000_0000  # where the frontend has the guest's memory
RING_SIZE = 8
# Guest-physical layout: per queue, descriptor table, available ring, used ring.
RINGS = {0: (0x000, 0x080, 0x100), 1: (0x200, 0x280, 0x300)}
RX_BUFFERS = [0x400 + i * 0x800 for i in range(4)]
TX_FRAME = 0x2400


def descriptor(addr, length, flags=0, next_index=0):
    return struct.pack("<QIHH", addr, length, flags, next_index)


def guest_memory_image():
    """Rings and buffers as a virtio-net driver leaves them before its first kick."""
    image = bytearray(TX_FRAME + 12 + 60)
    rx_desc, rx_avail, _ = RINGS[0]
    for i, buffer in enumerate(RX_BUFFERS):
        image[rx_desc + 16 * i : rx_desc + 16 * (i + 1)] = descriptor(buffer, 2048, flags=2)
    image[rx_avail : rx_avail + 12] = struct.pack("<HH4H", 0, 4, 0, 1, 2, 3)
    tx_desc, tx_avail, _ = RINGS[1]
    image[tx_desc : tx_desc + 16] = descriptor(TX_FRAME, 12 + 60)
    image[tx_avail : tx_avail + 6] = struct.pack("<HHH", 0, 1, 0)
    # A 12-byte virtio-net header with nothing to do, then the frame.
    image[TX_FRAME + 12 :] = arp_request()
    return bytes(image)


def vhost_message(request, payload=b"", need_reply=False):
    return struct.pack("<III", request, 1 | (8 if need_reply else 0), len(payload)) + payload


def u64_message(request, value, need_reply=False):
    return vhost_message(request, struct.pack("<Q", value), need_reply)


def region(size=256 * 1024):
    return struct.pack("<QQQQ", 0, size, VHOST_USER_ADDRESS, 0)


def ring_setup(index):
    desc, avail, used = RINGS[index]
    to_frontend = lambda address: VHOST_USER_ADDRESS + address  # noqa: E731
    return (
        vhost_message(8, struct.pack("<II", index, RING_SIZE), True)  # SET_VRING_NUM
        + vhost_message(10, struct.pack("<II", index, 0), True)  # SET_VRING_BASE
        + vhost_message(  # SET_VRING_ADDR
            9,
            struct.pack(
                "<IIQQQQ", index, 0, to_frontend(desc), to_frontend(used), to_frontend(avail), 0
            ),
            True,
        )
        + u64_message(12, index)  # SET_VRING_KICK, with an eventfd
        + u64_message(13, index)  # SET_VRING_CALL, with an eventfd
    )


VERSION_1, MRG_RXBUF, PROTOCOL_FEATURES = 1 << 32, 1 << 15, 1 << 30
PROTOCOL_MQ, PROTOCOL_REPLY_ACK, PROTOCOL_MEM_SLOTS = 1, 1 << 3, 1 << 15


def vhost_startup(memory):
    """QEMU 10's order: features, protocol features, owner, memory, rings, enable."""
    return (
        vhost_message(1)  # GET_FEATURES
        + vhost_message(15)  # GET_PROTOCOL_FEATURES
        + u64_message(16, PROTOCOL_MQ | PROTOCOL_REPLY_ACK | PROTOCOL_MEM_SLOTS)
        + vhost_message(17)  # GET_QUEUE_NUM
        + vhost_message(3)  # SET_OWNER
        + u64_message(2, VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES, True)  # SET_FEATURES
        + memory
        + ring_setup(0)
        + ring_setup(1)
        + vhost_message(18, struct.pack("<II", 0, 1), True)  # SET_VRING_ENABLE
        + vhost_message(18, struct.pack("<II", 1, 1), True)
    )


def vhost_sequence(messages):
    image = guest_memory_image()
    return struct.pack("<H", len(image)) + image + messages


SET_MEM_TABLE = vhost_message(5, struct.pack("<II", 1, 0) + region(), True)
ADD_MEM_REG = vhost_message(37, struct.pack("<Q", 0) + region(), True)


FRAMES = {
    "arp_request": arp_request(),
    "ipv6_nd": ipv6_nd(),
    "tcp_syn": tcp_syn(),
    "vlan_tagged": vlan_tagged(),
}


def pcap(frames):
    out = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + i, 123_456_789, len(f), len(f)) + f
    return out


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


for name, frame in FRAMES.items():
    write("frame", name, b"\x00" + frame)  # destination kept as it is
    write("frame", name + "_to_peer", b"\x05" + frame)  # to the second peer, own source
    # max_frame 1518, cut seed 7, then the frame twice, a runt and a giant prefix.
    stream = b"".join(struct.pack("!I", len(frame)) + frame for _ in range(2))
    write("stream_decoder", name, struct.pack("!HB", 1518, 7) + stream)
    # vxlan_datagram: `how` 0x00 is a UDP payload from remote 0, 0x01 a whole IPv4 packet.
    write("vxlan_datagram", name, b"\x00" + vxlan_payload(frame))
    write("vxlan_datagram", name + "_ipv4", b"\x01" + vxlan_ipv4(frame, False))
    write("vxlan_datagram", name + "_ipv4_csum", b"\x01" + vxlan_ipv4(frame, True))
    # 0x40: the port maps VLAN 10 to VNI 42 and VLAN 20 to VNI 43.
    write("vxlan_datagram", name + "_mapped", b"\x40" + vxlan_payload(frame))
    write("vxlan_datagram", name + "_mapped_vni43", b"\x40" + vxlan_payload(frame, 43))
# A runt, then a length beyond any frame (70000 > 64 KiB + tagged header): out of step.
write(
    "stream_decoder",
    "runt_then_out_of_step",
    struct.pack("!HB", 1518, 3) + struct.pack("!I", 3) + b"abc" + struct.pack("!I", 70000),
)
# Offload: `how` 0xf0 keeps the destination and cuts the direct segmentation to an MTU of
# 1508; 0xf1 sends to the plain receiver, 0x53 broadcasts and cuts to an MTU of 548.
write("offload", "tso4", b"\xf0" + tso4())
write("offload", "tso4_to_plain", b"\xf1" + tso4())
write("offload", "tso6", b"\xf0" + tso6())
write("offload", "uso4_broadcast", b"\x53" + uso4())
write("offload", "csum_only", b"\xf2" + csum_only())
# rtnetlink: sender 0 is the kernel, then the interface index the monitor watches.
if "--capture-rtnetlink" in sys.argv:
    write("rtnetlink", "lo_newlink", b"\x00\x01" + capture_lo_newlink())
write("rtnetlink", "tap_newlink", b"\x00\x07" + tap_newlink())
write("rtnetlink", "forged_newlink", bytes([146, 7]) + tap_newlink())
write("rtnetlink", "changed_then_gone", b"\x00\x07" + tap_newlink() + link_message(17, 7, 0))
write("vhost_user_sequence", "qemu_startup", vhost_sequence(vhost_startup(SET_MEM_TABLE)))
write(
    "vhost_user_sequence",
    "add_mem_reg_startup",
    vhost_sequence(vhost_message(36) + vhost_startup(ADD_MEM_REG)),  # GET_MAX_MEM_SLOTS first
)
write(
    "vhost_user_sequence",
    "startup_then_stop",
    vhost_sequence(
        vhost_startup(SET_MEM_TABLE)
        + vhost_message(11, struct.pack("<II", 0, 0))  # GET_VRING_BASE
        + vhost_message(11, struct.pack("<II", 1, 0))
        + SET_MEM_TABLE
        + vhost_message(38, struct.pack("<Q", 0) + region(), True)  # REM_MEM_REG
        + vhost_message(4)  # RESET_OWNER
    ),
)
# A guest with MTU 1500 on a network of MTU 1000: a 1514-byte frame, skipped in pieces,
# then a frame that fits.
arp = FRAMES["arp_request"]
jumbo = arp + b"\x5a" * (1514 - len(arp))
write(
    "stream_decoder",
    "giant_then_frame",
    struct.pack("!HB", 1018, 5)
    + struct.pack("!I", len(jumbo)) + jumbo
    + struct.pack("!I", len(arp)) + arp,
)
write("pcap_reader", "three_frames", pcap(FRAMES.values()))
write("pcap_reader", "truncated", pcap(FRAMES.values())[:-7])
# Region: mode 1 with no patches is the real template region; "patched" overwrites eight
# bytes of peer 0's table entry; "raw_header" is a bare header with no body (mode 0).
write("region", "template", b"\x01")
write("region", "patched", b"\x01" + struct.pack("<IB", 4096 + 64, 8) + b"\x01" * 8)
write("region", "raw_header", b"\x00" + b"GUESTNET" + struct.pack("<IIII", 1, 2, 8, 128))


def dhcp_message(kind, options):
    fixed = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x5EED, 0, 0x8000 if kind == 1 else 0)
    fixed += b"\0" * 16 + SRC + b"\0" * 10 + b"\0" * 192 + bytes([99, 130, 83, 99])
    body = bytes([53, 1, kind])
    for code, value in options:
        body += bytes([code, len(value)]) + value
    return fixed + body + b"\xff"


def dns_query(name, qtype):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


write("dhcp_station", "udhcpc_discover", b"\x05" + dhcp_message(1, [
    (61, b"\x01" + SRC), (12, b"alpha"), (55, bytes([1, 3, 6, 12, 15, 28, 42])), (57, struct.pack("!H", 576)),
]))
write("dhcp_station", "dhclient_request", b"\x01" + dhcp_message(3, [
    (50, bytes([10, 0, 0, 10])), (54, bytes([10, 0, 0, 254])), (12, b"beta"),
    (55, bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])),
]))
write("dhcp_station", "dns_a", b"\x02" + dns_query("alpha.lab.internal", 1))
write("dhcp_station", "dns_ptr", b"\x02" + dns_query("10.0.0.10.in-addr.arpa", 12))
write("dhcp_station", "arp_request", b"\x03" + FRAMES["arp_request"][14:42])

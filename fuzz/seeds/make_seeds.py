#!/usr/bin/env python3
"""Writes the fuzz targets' seed files: real frames, in each target's input format.

Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. The outputs are committed; this
script says how they were made. Frames (checksums computed, as a host would send them):
  arp_request   who-has 192.168.1.1 tell 192.168.1.10, broadcast, padded to 60 bytes
  ipv6_nd       ICMPv6 neighbour solicitation for fe80::1 to its solicited-node group
  tcp_syn       IPv4 TCP SYN 10.0.2.15:40000 -> 10.0.2.2:22 with MSS and window scale
  vlan_tagged   the ARP request behind an 802.1Q tag (VLAN 100)
"""
import os
import struct

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
# A runt, then a length beyond any frame (70000 > 64 KiB + tagged header): out of step.
write(
    "stream_decoder",
    "runt_then_out_of_step",
    struct.pack("!HB", 1518, 3) + struct.pack("!I", 3) + b"abc" + struct.pack("!I", 70000),
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

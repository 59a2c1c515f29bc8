use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;

/// First two bytes of every MAC this crate derives: locally administered
/// (bit 1 set) unicast (bit 0 clear), so it never clashes with a vendor MAC.
pub const MAC_PREFIX: [u8; 2] = [0x0a, 0x4c];

/// MAC for a pod address: [`MAC_PREFIX`] followed by the IPv4 bytes. An IP
/// that moves to a new pod keeps its MAC, so switches and neighbours never
/// hold a stale entry for it.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [MAC_PREFIX[0], MAC_PREFIX[1], o[0], o[1], o[2], o[3]]
}

/// Host-side veth name for an attachment: `le` + 13 hex digits of
/// SHA-256(container id, ifname). Deterministic, so DEL finds it without
/// state; 15 characters, the kernel's limit (IFNAMSIZ - 1).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = hex::encode(h.finalize());
    format!("le{}", &digest[..13])
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive); `None` if malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_embeds_the_ip_and_is_local_unicast() {
        let mac = mac_from_ipv4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(mac, [0x0a, 0x4c, 10, 1, 2, 3]);
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
    }

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("le"));
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert_ne!(a, host_veth_name("abc123", "net1"));
        assert_ne!(a, host_veth_name("abc124", "eth0"));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0A:4c:00:01:ff:10"),
            Some([0x0a, 0x4c, 0, 1, 0xff, 0x10])
        );
        for bad in [
            "",
            "0a:4c:00:01:ff",
            "0a:4c:00:01:ff:10:11",
            "0a:4c:0:01:ff:10",
            "zz:4c:00:01:ff:10",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}

//! IPv4 and IPv6 ranges in CIDR notation (kept for address checks; the run's
//! NetworkPolicy no longer lists ranges).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 range in CIDR notation, held in canonical form (the bits
/// after the prefix cleared, so `10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CidrError {
    /// No `/prefix`.
    #[error("missing /prefix")]
    MissingPrefix,
    /// The address does not parse (IPv4 octets with leading zeros included).
    #[error("invalid IP address")]
    InvalidAddress,
    /// The prefix is not a number, or longer than the address.
    #[error("invalid prefix length")]
    InvalidPrefix,
}

impl Cidr {
    /// The range of `prefix` bits at `addr` (bits after the prefix cleared).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let width = width(&addr);
        if prefix > width {
            return Err(CidrError::InvalidPrefix);
        }
        let bits = to_bits(&addr) & mask(width, prefix);
        Ok(Self {
            addr: from_bits(&addr, bits),
            prefix,
        })
    }

    /// The first address of the range.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `other` lies wholly inside this range (equal included).
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.prefix >= self.prefix
            && other.bits() & mask(width(&self.addr), self.prefix) == self.bits()
    }

    fn bits(&self) -> u128 {
        to_bits(&self.addr)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError::MissingPrefix)?;
        let addr = IpAddr::from_str(addr).map_err(|_| CidrError::InvalidAddress)?;
        let canonical_number = !prefix.is_empty()
            && prefix.len() <= 3
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        if !canonical_number {
            return Err(CidrError::InvalidPrefix);
        }
        let prefix = prefix.parse().map_err(|_| CidrError::InvalidPrefix)?;
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn width(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(width: u8, prefix: u8) -> u128 {
    let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    if prefix == 0 {
        0
    } else {
        all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
    }
}

fn to_bits(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_bits(family: &IpAddr, bits: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing() {
        for (input, want) in [
            ("10.0.0.0/8", Ok("10.0.0.0/8")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("1.2.3.4/32", Ok("1.2.3.4/32")),
            ("1.2.3.4/31", Ok("1.2.3.4/31")),
            ("1.2.3.5/31", Ok("1.2.3.4/31")),
            ("255.255.255.255/1", Ok("128.0.0.0/1")),
            ("::/0", Ok("::/0")),
            ("2001:DB8::1/32", Ok("2001:db8::/32")),
            ("ffff:ffff::/128", Ok("ffff:ffff::/128")),
            ("ffff::ffff/127", Ok("ffff::fffe/127")),
            ("10.0.0.0", Err(CidrError::MissingPrefix)),
            ("10.0.0/8", Err(CidrError::InvalidAddress)),
            ("010.0.0.0/8", Err(CidrError::InvalidAddress)),
            ("10.0.0.0/33", Err(CidrError::InvalidPrefix)),
            ("::/129", Err(CidrError::InvalidPrefix)),
            ("10.0.0.0/08", Err(CidrError::InvalidPrefix)),
            ("10.0.0.0/+8", Err(CidrError::InvalidPrefix)),
            ("10.0.0.0/", Err(CidrError::InvalidPrefix)),
            ("10.0.0.0/8/8", Err(CidrError::InvalidPrefix)),
            (" 10.0.0.0/8", Err(CidrError::InvalidAddress)),
        ] {
            assert_eq!(
                Cidr::from_str(input).map(|c| c.to_string()),
                want.map(String::from),
                "{input}"
            );
        }
    }

    #[test]
    fn containment_is_per_family() {
        assert!(cidr("0.0.0.0/0").contains(&cidr("10.0.0.0/8")));
        assert!(cidr("10.0.0.0/8").contains(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.0.0.0/8").contains(&cidr("0.0.0.0/0")));
        assert!(!cidr("10.0.0.0/8").contains(&cidr("11.0.0.0/8")));
        assert!(!cidr("::/0").contains(&cidr("10.0.0.0/8")));
        assert!(!cidr("0.0.0.0/0").contains(&cidr("::/128")));
        assert!(cidr("::/0").contains(&cidr("fe80::1/128")));
    }
}

//! How access lists travel: a [`Cidr`] as its text, an [`Acl`] as its
//! entries (rebuilt into lookup form on the way in), and [`Networks`],
//! one list for a yes/no question (`--accept-proxy`).

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Acl, Cidr, List};

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How an [`Acl`] is written out: its entries.
#[derive(Serialize, Deserialize)]
pub(super) struct AclEntries {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl From<Acl> for AclEntries {
    fn from(acl: Acl) -> AclEntries {
        AclEntries {
            allow: acl.allow.cidrs,
            deny: acl.deny.cidrs,
        }
    }
}

impl From<AclEntries> for Acl {
    fn from(e: AclEntries) -> Acl {
        Acl::new(e.allow, e.deny)
    }
}

impl PartialEq for Acl {
    fn eq(&self, other: &Acl) -> bool {
        self.allow.cidrs == other.allow.cidrs && self.deny.cidrs == other.deny.cidrs
    }
}

/// One list of networks, for a yes/no question (`--accept-proxy`: is this
/// source trusted to send a PROXY header?). Equal when the entries are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "Vec<Cidr>", from = "Vec<Cidr>")]
pub struct Networks(List);

impl Networks {
    pub fn new(cidrs: impl IntoIterator<Item = Cidr>) -> Networks {
        Networks(List::new(cidrs.into_iter().collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.cidrs.is_empty()
    }

    /// Is `ip` in one of the networks? (IPv4-mapped counts as IPv4.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        !self.is_empty() && self.0.ranges.contains(ip)
    }

    /// The entries, sorted.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.0.cidrs
    }
}

impl From<Networks> for Vec<Cidr> {
    fn from(n: Networks) -> Vec<Cidr> {
        n.0.cidrs
    }
}

impl From<Vec<Cidr>> for Networks {
    fn from(cidrs: Vec<Cidr>) -> Networks {
        Networks::new(cidrs)
    }
}

impl PartialEq for Networks {
    fn eq(&self, other: &Networks) -> bool {
        self.0.cidrs == other.0.cidrs
    }
}

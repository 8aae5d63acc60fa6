//! The run's NetworkPolicy: the runner pod accepts no connections and may
//! open only DNS (to the cluster DNS pods) and the policy's egress allowlist.
//!
//! An allowlisted range never silently opens the cluster itself: every
//! private, link-local (cloud metadata), shared (CGNAT) and cluster range
//! that falls inside an allowed CIDR is cut out of it with `except`. A range
//! that lies wholly inside one of those is taken as deliberately allowed and
//! gets no exceptions (Kubernetes only accepts an `except` strictly inside
//! its `cidr` anyway).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Error, Result, network_policy_name, run_labels, run_owner, run_selector};
use crate::api::{ClaudeRun, ClaudeRunPolicySpec};

/// The port an egress rule without ports allows.
const DEFAULT_EGRESS_PORT: i32 = 443;

/// Ranges that are never reachable through an allowlisted CIDR containing
/// them: RFC 1918, link-local (cloud metadata at 169.254.169.254), shared
/// address space (RFC 6598), and their IPv6 counterparts (unique local, which
/// holds AWS's fd00:ec2::254, and link-local).
const ALWAYS_EXCEPTED: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
];

/// Where the cluster's DNS servers run: the pods labelled `pod_labels` in the
/// namespace `namespace` (matched by its `kubernetes.io/metadata.name` label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTarget {
    /// Namespace of the DNS pods.
    pub namespace: String,
    /// Labels of the DNS pods.
    pub pod_labels: BTreeMap<String, String>,
    /// Port the DNS pods listen on (UDP and TCP).
    pub port: i32,
}

impl Default for DnsTarget {
    /// CoreDNS or kube-dns as kubeadm and most distributions deploy it.
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            port: 53,
        }
    }
}

/// The cluster's own address ranges, cut out of allowlisted CIDRs that hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRanges {
    /// Pod ranges (the CNI's, or `--cluster-cidr`).
    pub pod_cidrs: Vec<Cidr>,
    /// Service ranges (`--service-cluster-ip-range`).
    pub service_cidrs: Vec<Cidr>,
}

impl Default for ClusterRanges {
    /// The common defaults (flannel's pod range, kubeadm's service range).
    /// Both lie in 10.0.0.0/8, which is always excepted; clusters using
    /// public or other ranges must say so.
    fn default() -> Self {
        Self {
            pod_cidrs: vec![Cidr::from_str("10.244.0.0/16").expect("valid")],
            service_cidrs: vec![Cidr::from_str("10.96.0.0/12").expect("valid")],
        }
    }
}

/// The run's NetworkPolicy, named [`network_policy_name`] of the run: selects
/// the run's pod by its run label, denies all ingress, and allows egress to
/// DNS and to each `network.egress` entry (TCP, its ports or 443), minus the
/// cluster's, private and metadata ranges inside it.
pub fn run_network_policy(
    policy: &ClaudeRunPolicySpec,
    run: &ClaudeRun,
    dns: &DnsTarget,
    cluster: &ClusterRanges,
) -> Result<NetworkPolicy> {
    let (name, namespace, owner) = run_owner(run)?;
    let blocked = blocked_ranges(cluster);
    let mut egress = vec![dns_rule(dns)];
    for (index, rule) in policy.network.egress.iter().enumerate() {
        let cidr = Cidr::from_str(&rule.cidr).map_err(|source| Error::InvalidEgressCidr {
            index,
            cidr: rule.cidr.clone(),
            source,
        })?;
        let except: Vec<String> = excepts(cidr, &blocked).iter().map(Cidr::to_string).collect();
        let ports = if rule.ports.is_empty() {
            vec![DEFAULT_EGRESS_PORT]
        } else {
            rule.ports.clone()
        };
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.to_string(),
                    except: (!except.is_empty()).then_some(except),
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(ports.into_iter().map(|p| port("TCP", p)).collect()),
        });
    }
    Ok(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network_policy_name(&name)),
            namespace: Some(namespace),
            labels: Some(run_labels(run)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(run_selector(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: Some(egress),
        }),
    })
}

fn dns_rule(dns: &DnsTarget) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    dns.namespace.clone(),
                )])),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(dns.pod_labels.clone()),
                ..LabelSelector::default()
            }),
            ip_block: None,
        }]),
        ports: Some(vec![port("UDP", dns.port), port("TCP", dns.port)]),
    }
}

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

/// The cluster's ranges and the always-excepted ones.
fn blocked_ranges(cluster: &ClusterRanges) -> Vec<Cidr> {
    let mut blocked: Vec<Cidr> = cluster
        .pod_cidrs
        .iter()
        .chain(&cluster.service_cidrs)
        .copied()
        .collect();
    blocked.extend(ALWAYS_EXCEPTED.iter().map(|c| Cidr::from_str(c).expect("valid")));
    blocked
}

/// The exceptions of an allowed CIDR: none when it lies inside a blocked
/// range (explicitly allowed); else every blocked range strictly inside it,
/// leaving out those inside another exception, in address order.
fn excepts(allowed: Cidr, blocked: &[Cidr]) -> Vec<Cidr> {
    if blocked.iter().any(|b| b.contains(&allowed)) {
        return vec![];
    }
    let inside: Vec<Cidr> = blocked
        .iter()
        .copied()
        .filter(|b| allowed.contains(b) && b.prefix > allowed.prefix)
        .collect();
    let mut out: Vec<Cidr> = inside
        .iter()
        .copied()
        .filter(|b| !inside.iter().any(|other| other != b && other.contains(b)))
        .collect();
    out.sort_by_key(|c| (c.bits(), c.prefix));
    out.dedup();
    out
}

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
mod tests {
    use super::super::fixtures;
    use super::*;
    use crate::api::EgressRule;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn allow(rules: &[(&str, &[i32])]) -> ClaudeRunPolicySpec {
        let mut spec = fixtures::policy().spec;
        spec.network.egress = rules
            .iter()
            .map(|(c, ports)| EgressRule {
                cidr: (*c).into(),
                ports: ports.to_vec(),
                description: None,
            })
            .collect();
        spec
    }

    fn ip_blocks(np: &NetworkPolicy) -> serde_json::Value {
        let egress = serde_json::to_value(&np.spec.as_ref().unwrap().egress).unwrap();
        json!(
            egress.as_array().unwrap()[1..]
                .iter()
                .map(|r| r["to"][0]["ipBlock"].clone())
                .collect::<Vec<_>>()
        )
    }

    fn build(spec: &ClaudeRunPolicySpec, cluster: &ClusterRanges) -> NetworkPolicy {
        run_network_policy(spec, &fixtures::run(), &DnsTarget::default(), cluster).unwrap()
    }

    #[test]
    fn sample_policy_fences_the_pod_to_dns_github_and_anthropic() {
        let np = build(&fixtures::policy().spec, &ClusterRanges::default());
        fixtures::assert_owned_by_run(&np.metadata);
        let mut value = serde_json::to_value(&np).unwrap();
        value["metadata"].as_object_mut().unwrap().remove("ownerReferences");
        let https = json!([{"protocol": "TCP", "port": 443}]);
        assert_eq!(
            value,
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": "gh-3f1c2a9d0b7e4c61-egress",
                    "namespace": "claude-runs",
                    "labels": {
                        "app.kubernetes.io/managed-by": "claude-operator",
                        "app.kubernetes.io/name": "claude-runner",
                        "claude-operator.dev/policy": "acme-backend",
                        "claude-operator.dev/run": "gh-3f1c2a9d0b7e4c61",
                    },
                },
                "spec": {
                    "podSelector": {"matchLabels": {"claude-operator.dev/run": "gh-3f1c2a9d0b7e4c61"}},
                    "policyTypes": ["Ingress", "Egress"],
                    "egress": [
                        {
                            "to": [{
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }],
                            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                        },
                        {"to": [{"ipBlock": {"cidr": "140.82.112.0/20"}}], "ports": https},
                        {"to": [{"ipBlock": {"cidr": "192.30.252.0/22"}}], "ports": https},
                        {"to": [{"ipBlock": {"cidr": "185.199.108.0/22"}}], "ports": https},
                        {"to": [{"ipBlock": {"cidr": "160.79.104.0/23"}}], "ports": https},
                    ],
                },
            })
        );
    }

    #[test]
    fn the_whole_internet_gets_every_exception() {
        let cluster = ClusterRanges {
            pod_cidrs: vec![cidr("198.18.0.0/16"), cidr("fd00:10::/56")],
            service_cidrs: vec![cidr("198.19.0.0/20"), cidr("10.96.0.0/12")],
        };
        let np = build(&allow(&[("0.0.0.0/0", &[]), ("::/0", &[443, 22])]), &cluster);
        assert_eq!(
            ip_blocks(&np),
            json!([
                {"cidr": "0.0.0.0/0", "except": [
                    "10.0.0.0/8",
                    "100.64.0.0/10",
                    "169.254.0.0/16",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "198.18.0.0/16",
                    "198.19.0.0/20",
                ]},
                {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]},
            ])
        );
        let egress = np.spec.unwrap().egress.unwrap();
        assert_eq!(
            serde_json::to_value(&egress[2].ports).unwrap(),
            json!([{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 22}])
        );
    }

    #[test]
    fn exceptions_follow_containment() {
        let cluster = ClusterRanges::default();
        for (allowed, want) in [
            // Explicitly allowlisted private or cluster ranges get no exceptions.
            ("10.1.2.0/24", json!({"cidr": "10.1.2.0/24"})),
            ("10.0.0.0/8", json!({"cidr": "10.0.0.0/8"})),
            ("10.244.3.0/24", json!({"cidr": "10.244.3.0/24"})),
            ("169.254.169.254/32", json!({"cidr": "169.254.169.254/32"})),
            ("fd00:ec2::254/128", json!({"cidr": "fd00:ec2::254/128"})),
            // Public ranges disjoint from every blocked one get none either.
            ("8.8.8.0/24", json!({"cidr": "8.8.8.0/24"})),
            ("2606:4700::/32", json!({"cidr": "2606:4700::/32"})),
            // Ranges holding blocked ones get exactly those inside them.
            ("10.0.0.0/7", json!({"cidr": "10.0.0.0/7", "except": ["10.0.0.0/8"]})),
            (
                "172.0.0.0/8",
                json!({"cidr": "172.0.0.0/8", "except": ["172.16.0.0/12"]}),
            ),
            (
                "160.0.0.0/4",
                json!({"cidr": "160.0.0.0/4", "except": ["169.254.0.0/16", "172.16.0.0/12"]}),
            ),
            ("64.0.0.0/2", json!({"cidr": "64.0.0.0/2", "except": ["100.64.0.0/10"]})),
            (
                "fc00::/6",
                json!({"cidr": "fc00::/6", "except": ["fc00::/7", "fe80::/10"]}),
            ),
            ("f800::/6", json!({"cidr": "f800::/6"})),
            // Host bits are cleared: the apiserver wants canonical CIDRs.
            ("140.82.112.7/20", json!({"cidr": "140.82.112.0/20"})),
        ] {
            let np = build(&allow(&[(allowed, &[443])]), &cluster);
            assert_eq!(ip_blocks(&np), json!([want]), "{allowed}");
        }
    }

    #[test]
    fn every_exception_is_strictly_inside_its_cidr() {
        let cluster = ClusterRanges::default();
        let blocked = blocked_ranges(&cluster);
        for prefix in 0..=32u8 {
            for base in [
                "0.0.0.0",
                "10.0.0.0",
                "172.16.0.0",
                "100.64.0.0",
                "169.254.0.0",
                "192.168.0.0",
            ] {
                let allowed = Cidr::new(base.parse().unwrap(), prefix).unwrap();
                for e in excepts(allowed, &blocked) {
                    assert!(
                        allowed.contains(&e) && e.prefix > allowed.prefix,
                        "{allowed} except {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_bad_cidr_fails_the_whole_policy() {
        let err = run_network_policy(
            &allow(&[("8.8.8.0/24", &[]), ("300.1.1.1/8", &[])]),
            &fixtures::run(),
            &DnsTarget::default(),
            &ClusterRanges::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::InvalidEgressCidr {
                index: 1,
                cidr: "300.1.1.1/8".into(),
                source: CidrError::InvalidAddress
            }
        );
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

//! Service cluster IP and node port allocation, done by the API server at create and update
//! time as kube-apiserver's service registry does.
//!
//! Every allocated IP or port is reserved by a key created atomically in the store
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`), so two
//! concurrent creates, or two API servers on one etcd, can never hand out the same value, and a
//! restart sees every reservation. Reservations are released when the service is deleted or
//! stops needing them, and rolled back when the write of the service fails.
//!
//! # Caveats
//! - IPv4 and IPv6 ranges work; dual-stack services get one family (the range's).
//! - A crash between reserving and writing the service leaks the reservation (kube-apiserver
//!   repairs such leaks with a periodic repair loop; there is none yet).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::errors::{ApiError, Cause};
use super::objects;
use super::ApiState;
use crate::server::store::{RangeRequest, StoreError};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Random picks tried before falling back to scanning the reservations.
const RANDOM_ATTEMPTS: usize = 32;

/// The address range of Service cluster IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: u128,
    /// 32 for IPv4, 128 for IPv6.
    bits: u32,
    prefix: u32,
    text: String,
}

impl Cidr {
    /// Parses `10.43.0.0/16` (host bits are cleared).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = text.trim().split_once('/')?;
        let ip: IpAddr = ip.parse().ok()?;
        let prefix: u32 = prefix.parse().ok()?;
        let (value, bits) = match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        if prefix > bits {
            return None;
        }
        let host_bits = bits - prefix;
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        Some(Cidr {
            base: value & mask,
            bits,
            prefix,
            text: text.trim().to_string(),
        })
    }

    /// How many addresses the range holds (capped for huge IPv6 ranges).
    pub fn size(&self) -> u128 {
        let host_bits = self.bits - self.prefix;
        if host_bits >= 64 {
            1u128 << 64
        } else {
            1u128 << host_bits
        }
    }

    /// The address at `offset` from the network address.
    pub fn nth(&self, offset: u128) -> IpAddr {
        let value = self.base + offset;
        if self.bits == 32 {
            IpAddr::V4(std::net::Ipv4Addr::from(value as u32))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(value))
        }
    }

    /// The offset of `ip` in the range, if it is in it.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        let value = match (ip, self.bits) {
            (IpAddr::V4(v4), 32) => u128::from(u32::from(v4)),
            (IpAddr::V6(v6), 128) => u128::from(v6),
            _ => return None,
        };
        let offset = value.checked_sub(self.base)?;
        (offset < self.size()).then_some(offset)
    }

    /// Offsets a service may get: not the network address and, for IPv4, not the broadcast.
    fn usable(&self) -> (u128, u128) {
        let size = self.size();
        let last = if self.bits == 32 {
            size.saturating_sub(2)
        } else {
            size - 1
        };
        (1, last.max(1))
    }

    /// The first usable address (the `kubernetes` Service's).
    pub fn first(&self) -> IpAddr {
        self.nth(1)
    }

    /// Where dynamic allocation starts: kube-apiserver keeps the lower band
    /// (min(max(16, size/16), 256) addresses) for explicitly requested IPs such as DNS's.
    fn dynamic_start(&self) -> u128 {
        let (first, last) = self.usable();
        let band = (self.size() / 16).clamp(16, 256);
        if last > band * 2 {
            band
        } else {
            first
        }
    }
}

/// The ranges the allocators hand values out of.
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    pub cidr: Cidr,
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> ServiceRanges {
        ServiceRanges {
            cidr: Cidr::parse("10.43.0.0/16").unwrap_or(Cidr {
                base: 0x0a2b_0000,
                bits: 32,
                prefix: 16,
                text: "10.43.0.0/16".into(),
            }),
            node_ports: (30000, 32767),
        }
    }
}

/// Keys reserved for one write, to roll back if the write fails.
#[derive(Debug, Default)]
pub struct Reserved(Vec<Vec<u8>>);

fn ip_key(ip: &IpAddr) -> Vec<u8> {
    format!("{IP_PREFIX}{ip}").into_bytes()
}

fn port_key(port: i64) -> Vec<u8> {
    format!("{PORT_PREFIX}{port}").into_bytes()
}

/// The cluster IP a service holds, if any (headless and ExternalName hold none).
fn held_ip(service: &Value) -> Option<IpAddr> {
    if service["spec"]["type"] == "ExternalName" {
        return None;
    }
    service["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
}

/// The node ports a service holds.
fn held_ports(service: &Value) -> BTreeSet<i64> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_i64())
        .filter(|p| *p != 0)
        .chain(service["spec"]["healthCheckNodePort"].as_i64())
        .filter(|p| *p != 0)
        .collect()
}

fn wants_node_ports(service: &Value) -> bool {
    match service["spec"]["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => service["spec"]["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

fn invalid(service: &Value, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        "services",
        objects::name_of(service),
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        }],
    )
}

async fn reserve(state: &ApiState, key: &[u8], owner: &str) -> Result<bool, ApiError> {
    match state.store.create(key, owner.as_bytes()).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Every reserved value under a prefix (the last path segment of each key).
async fn reserved_under(state: &ApiState, prefix: &str) -> Result<BTreeSet<String>, ApiError> {
    let mut out = BTreeSet::new();
    let mut start = None;
    loop {
        let page = state
            .store
            .range(RangeRequest {
                prefix: prefix.as_bytes().to_vec(),
                start,
                limit: 0,
                revision: None,
            })
            .await?;
        for kv in &page.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            out.insert(key.trim_start_matches(prefix).to_string());
        }
        match page.next {
            Some(next) => start = Some(next),
            None => return Ok(out),
        }
    }
}

/// Reserves a free IP: random picks in the dynamic band, then a scan.
async fn allocate_ip(
    state: &ApiState,
    ranges: &ServiceRanges,
    owner: &str,
) -> Result<IpAddr, ApiError> {
    use rand::Rng;
    let cidr = &ranges.cidr;
    let (first, last) = cidr.usable();
    let start = cidr.dynamic_start();
    for _ in 0..RANDOM_ATTEMPTS {
        let offset = rand::rng().random_range(start..=last);
        let ip = cidr.nth(offset);
        if reserve(state, &ip_key(&ip), owner).await? {
            return Ok(ip);
        }
    }
    let taken = reserved_under(state, IP_PREFIX).await?;
    // The dynamic band first, then the lower band, as kube-apiserver does.
    let scan = (start..=last).chain(first..start).take(1 << 20);
    for offset in scan {
        let ip = cidr.nth(offset);
        if taken.contains(&ip.to_string()) {
            continue;
        }
        if reserve(state, &ip_key(&ip), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(format!(
        "failed to allocate a serviceIP: range is full (the range of valid IPs is {})",
        cidr.text
    )))
}

async fn allocate_port(
    state: &ApiState,
    ranges: &ServiceRanges,
    owner: &str,
) -> Result<i64, ApiError> {
    use rand::Rng;
    let (low, high) = ranges.node_ports;
    for _ in 0..RANDOM_ATTEMPTS {
        let port = i64::from(rand::rng().random_range(low..=high));
        if reserve(state, &port_key(port), owner).await? {
            return Ok(port);
        }
    }
    let taken = reserved_under(state, PORT_PREFIX).await?;
    for port in low..=high {
        let port = i64::from(port);
        if taken.contains(&port.to_string()) {
            continue;
        }
        if reserve(state, &port_key(port), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal(format!(
        "failed to allocate a nodePort: range is full (the range of valid ports is {low}-{high})"
    )))
}

/// Allocates what `service` needs and does not hold in `old` (a create has no `old`), and
/// writes the values into it. On error nothing stays reserved.
pub async fn allocate(
    state: &ApiState,
    service: &mut Value,
    old: Option<&Value>,
) -> Result<Reserved, ApiError> {
    let mut reserved = Reserved::default();
    match allocate_into(state, service, old, &mut reserved).await {
        Ok(()) => Ok(reserved),
        Err(err) => {
            rollback(state, reserved).await;
            Err(err)
        }
    }
}

async fn allocate_into(
    state: &ApiState,
    service: &mut Value,
    old: Option<&Value>,
    reserved: &mut Reserved,
) -> Result<(), ApiError> {
    let ranges = state.service_ranges();
    let owner = format!(
        "{}/{}",
        objects::meta_str(service, "namespace").unwrap_or_default(),
        objects::name_of(service)
    );
    let old_ip = old.and_then(held_ip);
    let old_ports = old.map(held_ports).unwrap_or_default();
    if service["spec"]["type"] != "ExternalName" {
        let requested = service["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if requested.is_empty() {
            let ip = allocate_ip(state, &ranges, &owner).await?;
            reserved.0.push(ip_key(&ip));
            service["spec"]["clusterIP"] = json!(ip.to_string());
            service["spec"]["clusterIPs"] = json!([ip.to_string()]);
        } else if requested != "None" {
            let ip: IpAddr = requested.parse().map_err(|_| {
                invalid(
                    service,
                    "spec.clusterIPs[0]",
                    format!("Invalid value: {requested:?}: must be a valid IP address"),
                )
            })?;
            if old_ip != Some(ip) {
                if ranges.cidr.offset_of(ip).is_none() {
                    return Err(invalid(service, "spec.clusterIPs", format!(
                        "Invalid value: [{requested:?}]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                        ranges.cidr.text
                    )));
                }
                if !reserve(state, &ip_key(&ip), &owner).await? {
                    return Err(invalid(
                        service,
                        "spec.clusterIPs",
                        format!("Invalid value: [{requested:?}]: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                }
                reserved.0.push(ip_key(&ip));
            }
            if service["spec"]["clusterIPs"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                service["spec"]["clusterIPs"] = json!([requested]);
            }
        }
    }
    if wants_node_ports(service) {
        let (low, high) = ranges.node_ports;
        let count = service["spec"]["ports"].as_array().map_or(0, Vec::len);
        let mut held_now: BTreeSet<i64> = BTreeSet::new();
        for i in 0..count {
            let requested = service["spec"]["ports"][i]["nodePort"]
                .as_i64()
                .unwrap_or(0);
            let field = format!("spec.ports[{i}].nodePort");
            if requested == 0 {
                let port = allocate_port(state, &ranges, &owner).await?;
                reserved.0.push(port_key(port));
                service["spec"]["ports"][i]["nodePort"] = json!(port);
                held_now.insert(port);
                continue;
            }
            if old_ports.contains(&requested) || held_now.contains(&requested) {
                held_now.insert(requested);
                continue;
            }
            if requested < i64::from(low) || requested > i64::from(high) {
                return Err(invalid(service, &field, format!(
                    "Invalid value: {requested}: provided port is not in the valid range. The range of valid ports is {low}-{high}"
                )));
            }
            if !reserve(state, &port_key(requested), &owner).await? {
                return Err(invalid(
                    service,
                    &field,
                    format!("Invalid value: {requested}: provided port is already allocated"),
                ));
            }
            reserved.0.push(port_key(requested));
            held_now.insert(requested);
        }
    } else if let Some(ports) = service["spec"]["ports"].as_array_mut() {
        // ClusterIP and headless services hold no node ports.
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    Ok(())
}

/// Releases what a failed write had reserved.
pub async fn rollback(state: &ApiState, reserved: Reserved) {
    for key in reserved.0 {
        release_key(state, &key).await;
    }
}

async fn release_key(state: &ApiState, key: &[u8]) {
    match state.store.delete(key, None).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(err) => tracing::warn!(
            key = %String::from_utf8_lossy(key),
            error = %err,
            "releasing a service allocation failed"
        ),
    }
}

/// Releases what `old` held and `new` (the service after an update; `None`: deleted) no
/// longer holds.
pub async fn release(state: &ApiState, old: &Value, new: Option<&Value>) {
    let new_ip = new.and_then(held_ip);
    if let Some(ip) = held_ip(old) {
        if new_ip != Some(ip) {
            release_key(state, &ip_key(&ip)).await;
        }
    }
    let new_ports = new.map(held_ports).unwrap_or_default();
    for port in held_ports(old).difference(&new_ports) {
        release_key(state, &port_key(*port)).await;
    }
}

/// True for the core `services` resource.
pub fn is_service(group: &str, plural: &str) -> bool {
    group.is_empty() && plural == "services"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let cidr = Cidr::parse("10.43.0.0/16").expect("cidr");
        assert_eq!(cidr.size(), 65536);
        assert_eq!(cidr.first().to_string(), "10.43.0.1");
        assert_eq!(cidr.nth(10).to_string(), "10.43.0.10");
        assert_eq!(cidr.offset_of("10.43.1.0".parse().expect("ip")), Some(256));
        assert_eq!(cidr.offset_of("10.44.0.0".parse().expect("ip")), None);
        assert_eq!(cidr.usable(), (1, 65534));
        assert_eq!(cidr.dynamic_start(), 256);
        let small = Cidr::parse("10.0.0.0/28").expect("cidr");
        assert_eq!(small.dynamic_start(), 1);
        let v6 = Cidr::parse("fd00::/112").expect("cidr");
        assert_eq!(v6.first().to_string(), "fd00::1");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert_eq!(
            Cidr::parse("10.43.7.9/16")
                .expect("cidr")
                .first()
                .to_string(),
            "10.43.0.1"
        );
    }

    #[test]
    fn held_values() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30001}, {"port": 81}]}});
        assert_eq!(held_ip(&svc), Some("10.43.0.5".parse().expect("ip")));
        assert_eq!(held_ports(&svc), BTreeSet::from([30001]));
        assert!(wants_node_ports(&svc));
        let headless = json!({"spec": {"clusterIP": "None"}});
        assert_eq!(held_ip(&headless), None);
        let lb = json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}});
        assert!(!wants_node_ports(&lb));
    }
}

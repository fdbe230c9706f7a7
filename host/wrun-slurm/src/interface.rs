//! Which address to listen on and advertise.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};

/// The IPv4 address of a network interface (`--interface ib0`), as
/// dask-jobqueue's `interface` option picks it.
pub fn address_of_interface(name: &str) -> Result<IpAddr, String> {
    let addresses =
        nix::ifaddrs::getifaddrs().map_err(|e| format!("listing network interfaces: {e}"))?;
    let mut seen = Vec::new();
    for ifaddr in addresses {
        if !seen.contains(&ifaddr.interface_name) {
            seen.push(ifaddr.interface_name.clone());
        }
        if ifaddr.interface_name != name {
            continue;
        }
        if let Some(ip) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip())
        {
            return Ok(IpAddr::V4(ip));
        }
    }
    Err(format!(
        "no network interface {name} with an IPv4 address (interfaces here: {})",
        seen.join(", ")
    ))
}

/// An address other nodes can reach this one on: the host name's first
/// non-loopback IPv4 address, else the first non-loopback interface's,
/// else 127.0.0.1 (a one-machine cluster).
pub fn default_address() -> IpAddr {
    let from_name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|host| (host.as_str(), 0).to_socket_addrs().ok())
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    if let Some(ip) = from_name {
        return ip;
    }
    nix::ifaddrs::getifaddrs()
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|a| a.ip())))
        .find(|ip| !ip.is_loopback())
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_address_and_a_missing_interface_is_named() {
        assert_eq!(
            address_of_interface("lo").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        let error = address_of_interface("nosuch0").unwrap_err();
        assert!(error.contains("nosuch0") && error.contains("lo"), "{error}");
    }
}

//! Hosts with their own addresses for tests that need them (root): network namespaces joined
//! by veth pairs in a star, made by the test and removed when the value is dropped, pass or
//! fail. The hub namespace (`srv`) routes between the hosts; each host `i` (1-based) has
//! `10.<net>.<i>.2/24`, reached from the hub at `10.<net>.<i>.1`. Processes run inside with
//! [`Star::wrapper`] (`ip netns exec NAME`); Unix sockets are files, so the test reaches them
//! from its own namespace.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::process::Command;

/// A hub and `hosts` host namespaces.
#[derive(Debug)]
pub struct Star {
    prefix: String,
    net: u8,
    hosts: usize,
    made: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Star {
    /// Makes the namespaces and links. `tag` (a few letters) keeps concurrent tests apart.
    pub fn new(tag: &str, hosts: usize) -> Self {
        let pid = std::process::id();
        let prefix = format!("mt{tag}{}", pid % 10_000);
        // A /16 of its own per test process and tag, so two star tests never share a subnet
        // (the namespaces are private anyway; this keeps the logs unambiguous).
        let net = u8::try_from(100 + (pid as usize + tag.len() * 7) % 100).unwrap();
        let mut star = Self {
            prefix,
            net,
            hosts,
            made: Vec::new(),
        };
        let hub = star.hub();
        star.add_ns(&hub);
        ip(&[
            "netns",
            "exec",
            &hub,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for i in 1..=hosts {
            let host = star.host(i);
            star.add_ns(&host);
            let (hub_end, host_end) = (star.hub_link(i), format!("{}h{i}", star.prefix));
            ip(&[
                "link", "add", &hub_end, "type", "veth", "peer", "name", &host_end,
            ]);
            ip(&["link", "set", &hub_end, "netns", &hub]);
            ip(&["link", "set", &host_end, "netns", &host]);
            let n = star.net.to_string();
            let hub_ip = format!("10.{n}.{i}.1/24");
            let host_ip = format!("10.{n}.{i}.2/24");
            ip(&["-n", &hub, "addr", "add", &hub_ip, "dev", &hub_end]);
            ip(&["-n", &hub, "link", "set", &hub_end, "up"]);
            ip(&["-n", &host, "addr", "add", &host_ip, "dev", &host_end]);
            ip(&["-n", &host, "link", "set", &host_end, "up"]);
            ip(&[
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{n}.{i}.1"),
            ]);
        }
        star
    }

    fn add_ns(&mut self, name: &str) {
        // A leftover of a crashed run with the same pid: remove it first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        self.made.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}srv", self.prefix)
    }

    /// Host `i`'s namespace name.
    pub fn host(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn hub_link(&self, i: usize) -> String {
        format!("{}s{i}", self.prefix)
    }

    /// The hub's address on host `i`'s link.
    pub fn hub_ip(&self, i: usize) -> String {
        format!("10.{}.{i}.1", self.net)
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> String {
        format!("10.{}.{i}.2", self.net)
    }

    /// The command prefix that runs a program in namespace `ns`.
    pub fn wrapper(ns: &str) -> [&str; 4] {
        ["ip", "netns", "exec", ns]
    }

    /// Cuts (`up = false`) or restores host `i`'s link to the hub.
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub(), "link", "set", &self.hub_link(i), state]);
    }

    /// How many hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers.
        for name in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

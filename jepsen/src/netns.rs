//! Test hosts in network namespaces, so that partitions cut real traffic.
//!
//! Each node runs in its own namespace with its own address on a private
//! /24. The namespaces hang off a bridge that lives in one more namespace,
//! the *hub*; the harness's own namespace joins the bridge with a veth, so
//! clients reach every node directly. The nemesis drops packets with
//! iptables rules in a node's namespace (its INPUT chain), which cuts the
//! node's peer traffic in the kernel, connections already open included.
//!
//! Why namespaces and not a TCP proxy: an Atoll node serves clients and
//! peers on one address, so a proxy would have to tell peer connections from
//! client connections; and a proxy cannot drop packets of a connection that
//! is already open without closing it. Why a hub namespace: on a host that
//! runs Docker, bridged traffic goes through the host's iptables FORWARD
//! chain, whose policy is DROP; a fresh namespace has no such rules, so the
//! harness changes nothing in the host's own firewall.
//!
//! Needs root, `ip` (iproute2) and `iptables`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// For each node (by index), the nodes whose packets it drops.
pub type Grudge = BTreeMap<usize, BTreeSet<usize>>;

/// One node's namespace and address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub namespace: String,
    /// The node's address, reachable from the harness and the other nodes.
    pub address: Ipv4Addr,
}

/// The namespaces of one cluster. Dropping it deletes them.
#[derive(Debug)]
pub struct Net {
    hub: String,
    /// The harness's end of the link to the bridge.
    uplink: String,
    hosts: Vec<Host>,
}

/// Namespaces of this process get `atoll-<pid>-<n>-...` names.
static NEXT: AtomicU32 = AtomicU32::new(0);
/// Serializes subnet choice between clusters of this process.
static SUBNETS: Mutex<()> = Mutex::new(());

fn run(args: &[&str]) -> io::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args[0])))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the namespaces of harness processes that no longer run (a run
/// that was killed cannot clean up after itself).
fn remove_orphans() -> io::Result<()> {
    for line in run(&["ip", "netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("atoll-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "delete", name]);
        }
    }
    Ok(())
}

/// A /24 under 10.0.0.0/8 that no interface of this host uses: `10.x.y.`.
fn free_subnet(seed: u32) -> io::Result<String> {
    let used = run(&["ip", "-4", "-o", "addr", "show"])?;
    (0..40_000u32)
        .map(|k| {
            let n = (seed.wrapping_mul(7919) + k) % 40_000;
            format!("10.{}.{}.", 100 + n / 256 % 150, n % 256)
        })
        .find(|prefix| !used.contains(&format!(" {prefix}")))
        .ok_or_else(|| io::Error::other("no free 10.x.y.0/24 subnet"))
}

impl Net {
    /// Creates `nodes` namespaces joined by a bridge, and links this
    /// namespace to it.
    pub fn create(nodes: usize) -> io::Result<Net> {
        let _guard = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
        remove_orphans().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespaces need root and iproute2: {e}"),
            )
        })?;
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = free_subnet(pid.wrapping_mul(64) + n)?;
        let hub = format!("atoll-{pid}-{n}-hub");
        // Interface names are at most 15 bytes.
        let uplink = format!("atl{:x}", (pid << 6 | (n & 63)) & 0xff_ffff);
        let mut net = Net {
            hub: hub.clone(),
            uplink: uplink.clone(),
            hosts: Vec::new(),
        };
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        run(&[
            "ip", "link", "add", &uplink, "type", "veth", "peer", "name", "up0", "netns", &hub,
        ])?;
        run(&[
            "ip", "-n", &hub, "link", "set", "up0", "master", "br0", "up",
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}1/24"),
            "dev",
            &uplink,
        ])?;
        run(&["ip", "link", "set", &uplink, "up"])?;
        for i in 0..nodes {
            let namespace = format!("atoll-{pid}-{n}-node{}", i + 1);
            let address: Ipv4Addr = format!("{prefix}{}", 11 + i)
                .parse()
                .map_err(|e| io::Error::other(format!("address: {e}")))?;
            let port = format!("p{}", i + 1);
            run(&["ip", "netns", "add", &namespace])?;
            net.hosts.push(Host {
                namespace: namespace.clone(),
                address,
            });
            run(&[
                "ip", "-n", &namespace, "link", "add", "eth0", "type", "veth", "peer", "name",
                &port, "netns", &hub,
            ])?;
            run(&[
                "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
            ])?;
            run(&[
                "ip",
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &namespace, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The nodes' namespaces and addresses, by index.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A command that runs `program` in node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[i].namespace])
            .arg(program);
        command
    }

    fn iptables(&self, i: usize, rule: &[&str]) -> io::Result<()> {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.hosts[i].namespace,
            "iptables",
            "-w",
        ];
        args.extend_from_slice(rule);
        run(&args).map(|_| ())
    }

    /// Replaces every rule with `grudge`: node `i` drops every packet from
    /// the nodes in `grudge[i]`. A symmetric grudge is a partition; a
    /// one-sided one cuts one direction only.
    pub fn apply(&self, grudge: &Grudge) -> io::Result<()> {
        self.heal()?;
        for (&i, from) in grudge {
            for &j in from {
                let source = self.hosts[j].address.to_string();
                self.iptables(i, &["-A", "INPUT", "-s", &source, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Node `i` drops each packet from the other nodes with probability
    /// `p` (0.0 to 1.0), on top of the rules in force.
    pub fn lossy(&self, i: usize, p: f64) -> io::Result<()> {
        let probability = format!("{:.3}", p.clamp(0.0, 1.0));
        for (j, host) in self.hosts.iter().enumerate() {
            if j != i {
                let source = host.address.to_string();
                self.iptables(
                    i,
                    &[
                        "-A",
                        "INPUT",
                        "-s",
                        &source,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &probability,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Removes every rule: all nodes reach each other again.
    pub fn heal(&self) -> io::Result<()> {
        for i in 0..self.hosts.len() {
            self.iptables(i, &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "delete", &host.namespace]);
        }
        let _ = run(&["ip", "link", "delete", &self.uplink]);
        let _ = run(&["ip", "netns", "delete", &self.hub]);
    }
}

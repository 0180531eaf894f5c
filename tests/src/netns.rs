//! A network namespace for fault tests: one "host" with its own address,
//! joined to the root namespace by a veth pair on a /30 that exists only
//! between the two (`10.201.<n>.1` root side, `10.201.<n>.2` inside).
//! Everything is removed on drop (deleting the namespace deletes its veth
//! end, and the other end with it), also when an assertion fails.
//!
//! Shared by the proxy's, the node's and the workspace's fault tests, so
//! every "host" is made and torn down the same way.
//!
//! Needs root and iproute2 (and iptables for [`Netns::block_port`]);
//! [`Netns::create`] returns `None` with a loud `SKIPPED:` line otherwise,
//! so a machine that cannot run these tests never passes them silently.
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

pub struct Netns {
    pub name: String,
    /// The root namespace's end of the /30.
    pub host_ip: IpAddr,
    /// The namespace's own address.
    pub ns_ip: IpAddr,
    host_veth: String,
    /// iptables rules added inside, deleted on drop.
    rules: Vec<Vec<String>>,
    /// Released after the namespace (fields drop after `Drop::drop`).
    claim: SubnetClaim,
}

/// Whose port a drop rule matches: a server elsewhere that processes
/// inside connect to, or one listening inside.
#[derive(Clone, Copy)]
enum Side {
    Remote,
    Served,
}

/// The third octet of this namespace's `10.201.<n>.0/30`, held through a
/// lock file `/tmp/limpet-netns-<n>.lock` with the owner's pid, so test
/// processes running at once never share a subnet. A lock whose pid is
/// gone (a killed test) is taken over.
struct SubnetClaim {
    n: u8,
    path: std::path::PathBuf,
}

impl SubnetClaim {
    fn take(start: usize) -> Option<SubnetClaim> {
        let me = std::process::id();
        for i in 0..250 {
            let n = ((start + i) % 250 + 1) as u8;
            let path = std::path::PathBuf::from(format!("/tmp/limpet-netns-{n}.lock"));
            for _ in 0..2 {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        use std::io::Write;
                        let _ = write!(f, "{me}");
                        return Some(SubnetClaim { n, path });
                    }
                    Err(_) => {
                        let owner = std::fs::read_to_string(&path).unwrap_or_default();
                        let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
                            std::path::Path::new(&format!("/proc/{pid}")).exists()
                        });
                        // An empty file may be a claim being written: leave it.
                        if alive || owner.is_empty() {
                            break;
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        None
    }
}

impl Drop for SubnetClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn skip(why: &str) -> Option<Netns> {
    eprintln!("\n*** SKIPPED: network fault test: {why} (needs root, iproute2 and iptables) ***\n");
    None
}

impl Netns {
    /// A fresh namespace `limpet-nf-<pid>-<k>`, or `None` (after a loud
    /// SKIPPED message) when this machine cannot make one.
    pub fn create(k: u8) -> Option<Netns> {
        let uid = Command::new("id").arg("-u").output();
        if !uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
            return skip("not running as root");
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return skip(&format!("`{tool}` not found"));
            }
        }
        let pid = std::process::id();
        // A /30 per namespace; 10.201.0.0/16 is only ever used between a
        // test's own namespaces. Test binaries run side by side, so the
        // third octet is claimed with a lock file rather than derived from
        // the pid (two pids could land on one subnet).
        let Some(claim) = SubnetClaim::take(pid as usize * 4 + k as usize) else {
            return skip("no free 10.201.x.0/30 subnet (250 lock files in /tmp held)");
        };
        let n = claim.n;
        let name = format!("limpet-nf-{pid}-{k}");
        let host_veth = format!("lnf{}h{k}", pid % 1_000_000);
        let ns_veth = format!("lnf{}n{k}", pid % 1_000_000);
        let host_ip = Ipv4Addr::new(10, 201, n, 1);
        let ns_ip = Ipv4Addr::new(10, 201, n, 2);
        if let Err(e) = run(&["ip", "netns", "add", &name]) {
            return skip(&e);
        }
        // From here on, drop cleans up.
        let ns = Netns {
            name: name.clone(),
            host_ip: host_ip.into(),
            ns_ip: ns_ip.into(),
            host_veth: host_veth.clone(),
            rules: Vec::new(),
            claim,
        };
        let steps: Vec<Vec<String>> = vec![
            vec![
                "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth,
            ],
            vec!["ip", "link", "set", &ns_veth, "netns", &name],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_veth,
            ],
            vec!["ip", "link", "set", &host_veth, "up"],
            vec![
                "ip",
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_veth,
            ],
            vec![
                "ip", "netns", "exec", &name, "ip", "link", "set", &ns_veth, "up",
            ],
            vec![
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = run(&args) {
                drop(ns);
                return skip(&e);
            }
        }
        Some(ns)
    }

    /// The third octet of this namespace's claimed `10.201.<n>.0/30`:
    /// unique among the namespaces of every test running now, so a test
    /// that needs more addresses (another /16 of its own) can use it too.
    pub fn subnet(&self) -> u8 {
        self.claim.n
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn iptables(&self, op: &str, rule: &[String]) -> Result<(), String> {
        let mut args = vec!["ip", "netns", "exec", &self.name, "iptables", "-w", op];
        args.extend(rule.iter().map(String::as_str));
        run(&args)
    }

    /// A silent black hole, inside the namespace, for TCP to and from
    /// `port` (e.g. the broker's): packets dropped, no RST, nothing else
    /// touched.
    pub fn block_port(&mut self, port: u16) {
        self.drop_port(port, None, Side::Remote);
    }

    /// Random loss, inside the namespace: each TCP packet to or from
    /// `port` is dropped with probability `p` (e.g. 0.05 for 5 %).
    pub fn lossy_port(&mut self, port: u16, p: f64) {
        self.drop_port(port, Some(p), Side::Remote);
    }

    /// Random loss on the connections *to* a server listening on `port`
    /// inside the namespace (e.g. a node's), with probability `p`.
    pub fn lossy_served_port(&mut self, port: u16, p: f64) {
        self.drop_port(port, Some(p), Side::Served);
    }

    fn drop_port(&mut self, port: u16, p: Option<f64>, side: Side) {
        let port = port.to_string();
        let rules = match side {
            Side::Remote => [("OUTPUT", "--dport"), ("INPUT", "--sport")],
            Side::Served => [("INPUT", "--dport"), ("OUTPUT", "--sport")],
        };
        for (chain, dir) in rules {
            let mut rule: Vec<String> = ["-p", "tcp", dir, &port]
                .iter()
                .map(|s| s.to_string())
                .collect();
            rule.insert(0, chain.to_string());
            if let Some(p) = p {
                for a in ["-m", "statistic", "--mode", "random", "--probability"] {
                    rule.push(a.to_string());
                }
                rule.push(format!("{p}"));
            }
            rule.push("-j".into());
            rule.push("DROP".into());
            self.iptables("-A", &rule).expect("add iptables rule");
            self.rules.push(rule);
        }
    }

    /// Every packet in and out of the namespace dropped (the host
    /// vanished: no RST, no ICMP), until [`Netns::heal`].
    pub fn black_hole(&mut self) {
        for (chain, iface) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let rule: Vec<String> = [chain, "!", iface, "lo", "-j", "DROP"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            self.iptables("-A", &rule).expect("add iptables rule");
            self.rules.push(rule);
        }
    }

    /// Any other iptables rule inside the namespace (e.g.
    /// `["INPUT", "-p", "tcp", "--dport", "7000", "-j", "DROP"]`), removed
    /// by [`Netns::heal`] or on drop.
    pub fn add_rule(&mut self, rule: &[&str]) {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        self.iptables("-A", &rule).expect("add iptables rule");
        self.rules.push(rule);
    }

    /// Sets the root side of the veth pair down (`false`) or up again: a
    /// silent black hole for everything to and from the namespace, with
    /// sends queued, that heals when it comes back up.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&["ip", "link", "set", &self.host_veth, state]).expect("set veth state");
    }

    /// Removes every rule this namespace's fault methods added.
    pub fn heal(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            self.iptables("-D", &rule).expect("delete iptables rule");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.iptables("-D", &rule);
        }
        // Processes still inside keep a namespace alive only while they
        // run; the tests' Logged processes are killed before this (they
        // are declared after the namespace, so dropped first).
        if let Err(e) = run(&["ip", "netns", "delete", &self.name]) {
            eprintln!("netns cleanup: {e}");
        }
        // Gone with the namespace's end; this only reports a leftover.
        let _ = run(&["ip", "link", "delete", &self.host_veth]);
    }
}

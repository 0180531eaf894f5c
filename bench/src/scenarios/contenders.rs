//! The proxy contenders and what they stand in front of: the three echo
//! backends every proxy shares, and each proxy (limpet-proxy, nginx,
//! HAProxy, or none for the direct baseline) started with an equivalent
//! sticky (client-IP) configuration, so the scenarios compare the proxies
//! and not their settings. With [`TlsFiles`] each proxy terminates TLS
//! (1.3 only) with the same certificate instead of listening in the clear.

use super::procs::{free_addr, free_port, have, wait_port, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Direct,
    Limpet,
    Nginx,
    Haproxy,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Limpet => "limpet-proxy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// The contenders installed here, baseline first.
pub(crate) fn installed() -> Vec<Kind> {
    [Kind::Direct, Kind::Limpet, Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .filter(|k| match k {
            Kind::Nginx => have("nginx"),
            Kind::Haproxy => have("haproxy"),
            _ => true,
        })
        .collect()
}

/// Three echo backends (this binary's `echo-server`), shared by every
/// proxy contender; they live as long as the returned processes.
pub(crate) async fn echo_backends(me: &Path) -> anyhow::Result<(Vec<SocketAddr>, Vec<Proc>)> {
    let mut backends = Vec::new();
    let mut backend_procs = Vec::new();
    for i in 0..3 {
        let addr = free_addr()?;
        backend_procs.push(Proc::spawn(
            &format!("echo-{i}"),
            Command::new(me).args(["echo-server", "--addr", &addr.to_string()]),
        )?);
        anyhow::ensure!(wait_port(addr).await, "echo backend {addr} did not start");
        backends.push(addr);
    }
    Ok((backends, backend_procs))
}

/// The one certificate every TLS contender serves: PEM files (HAProxy
/// wants the chain and the key in one file).
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) cert_and_key: PathBuf,
}

/// How a proxy contender picks a backend for a new connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spread {
    /// Sticky by client address, as a WebSocket deployment with polling
    /// fallback needs.
    ClientAddress,
    /// Each connection on its own (round robin, or nginx hashing address
    /// and port): for clients that need no stickiness. The load
    /// generator's thousands of clients come from eight loopback
    /// addresses, which nginx's `ip_hash` (first three octets) would send
    /// all to one backend.
    Connection,
}

/// Starts a proxy contender in front of `backends`; `None` for direct.
pub(crate) fn start_proxy(
    kind: Kind,
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
) -> anyhow::Result<Option<(Proc, SocketAddr)>> {
    start_proxy_tls(kind, backends, dir, bin, None, Spread::ClientAddress)
}

/// [`start_proxy`], terminating TLS 1.3 with `tls` when given (ALPN
/// `http/1.1` is what the bench's client asks every contender for), and
/// spreading connections as `spread` says.
pub(crate) fn start_proxy_tls(
    kind: Kind,
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
    tls: Option<&TlsFiles>,
    spread: Spread,
) -> anyhow::Result<Option<(Proc, SocketAddr)>> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let servers = |f: &dyn Fn(usize, &SocketAddr) -> String| {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| f(i, b))
            .collect::<String>()
    };
    let proc = match kind {
        Kind::Direct => return Ok(None),
        Kind::Limpet => {
            let listen_tls = tls.map_or(String::new(), |t| {
                format!(
                    "[listen.tls]\nmin_version = \"1.3\"\nwatch = false\n[[listen.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
                    t.cert.display(),
                    t.key.display()
                )
            });
            let cfg = format!(
                "[[listen]]\nbind = \"{addr}\"\n{listen_tls}[admin]\nenabled = false\n[limits]\nmax_connections = 100000\n[[pool]]\nname = \"b\"\naffinity = \"{}\"\n{}[[route]]\npool = \"b\"\n",
                if spread == Spread::Connection { "none" } else { "ip_hash" },
                servers(&|i, b| format!("[[pool.backend]]\nid = \"b{i}\"\naddress = \"{b}\"\n"))
            );
            let path = dir.join("limpet-proxy.toml");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "limpet-proxy",
                super::procs::limpet(bin, "limpet-proxy")
                    .arg("--config")
                    .arg(&path),
            )?
        }
        Kind::Nginx => {
            let d = dir.display();
            // Requests without `Upgrade` send no `Connection` header to the
            // backend (not `close`), so `keepalive 64` reuses backend
            // connections as limpet-proxy's pool and HAProxy do.
            // nginx's default for TLS 1.3 resumption: stateless tickets
            // (a key made at start, shared by the workers).
            let listen_tls = tls.map_or(String::new(), |t| {
                format!(
                    " ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    ssl_session_tickets on",
                    t.cert.display(),
                    t.key.display()
                )
            });
            let cfg = format!(
                "user root;\nworker_processes auto;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n  upstream nodes {{ {} {} keepalive 64; }}\n  server {{\n    listen {addr}{listen_tls};\n    location / {{\n      proxy_pass http://nodes;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
                if spread == Spread::Connection {
                    "hash $remote_addr$remote_port;"
                } else {
                    "ip_hash;"
                },
                servers(&|_, b| format!("server {b};"))
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "nginx",
                Command::new("nginx")
                    .arg("-c")
                    .arg(&path)
                    .args(["-g", "daemon off;"]),
            )?
        }
        Kind::Haproxy => {
            let bind_tls = tls.map_or(String::new(), |t| {
                format!(
                    " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.3",
                    t.cert_and_key.display()
                )
            });
            let cfg = format!(
                "global\n  maxconn 9600\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\nfrontend fe\n  bind {addr}{bind_tls}\n  default_backend be\nbackend be\n  balance {}\n{}",
                if spread == Spread::Connection { "roundrobin" } else { "source" },
                servers(&|i, b| format!("  server b{i} {b}\n"))
            );
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "haproxy",
                Command::new("haproxy").arg("-f").arg(&path).arg("-db"),
            )?
        }
    };
    Ok(Some((proc, addr)))
}

//! Typed TOML configuration for the Limpet binaries.
//!
//! Every binary reads one TOML file into a plain struct from this crate. The
//! structs deny unknown fields (a typo is an error, not a silently ignored
//! setting), every field has a default that runs on loopback, and semantic
//! checks run after parsing. Whatever goes wrong, the error names the file,
//! the line and column, and the dotted field path, the way `nginx -t` does.

mod broker;
mod error;
mod load;
mod node;
mod proxy;
mod units;

pub use broker::{BrokerConfig, MetricsConfig, OutputLimit, ProtocolLimits};
pub use error::{ConfigError, FieldError};
pub use load::{load_file, load_or_default, parse_str, Validate};
pub use node::{Auth, Heartbeat, History, NodeConfig, NodeLimits, Shutdown};
pub use proxy::{
    AdminConfig, Affinity, BackendConfig, Balancer, CertConfig, CookieConfig, HealthConfig,
    ListenConfig, PassiveConfig, PoolConfig, ProxyConfig, ProxyLimits, ProxyShutdown, RouteConfig,
    SameSite, Timeouts, TlsListenConfig, TlsVersion, UpstreamTls,
};
pub use units::{ByteSize, Cidr, Duration, UnitError};

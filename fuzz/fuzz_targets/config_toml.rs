//! The TOML config loader for all three binaries: any text gives a config
//! or an error that names the file and a line and column inside the text,
//! never a panic; a config that loads builds the proxy's pools and routes
//! without panicking, and loads again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_config::{parse_str, BrokerConfig, ConfigError, NodeConfig, ProxyConfig, Validate};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::Path;

fn check<T: DeserializeOwned + Validate + PartialEq + Debug>(text: &str) -> Option<T> {
    let path = Path::new("fuzz.toml");
    match parse_str::<T>(text, path) {
        Ok(cfg) => {
            let again = parse_str::<T>(text, path).expect("the same text loads twice");
            assert_eq!(cfg, again);
            Some(cfg)
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
            let location = match &e {
                ConfigError::Parse { location, .. } | ConfigError::Invalid { location, .. } => {
                    location.as_ref().map(|l| (l.line, l.column))
                }
                ConfigError::Read { .. } => panic!("nothing was read from disk"),
            };
            if let Some((line, column)) = location {
                let lines = text.split('\n').count();
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} of {lines}: {shown}"
                );
                let width = text.split('\n').nth(line - 1).unwrap().chars().count();
                assert!(
                    column >= 1 && column <= width + 1,
                    "column {column} of {width}: {shown}"
                );
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check::<BrokerConfig>(text);
    check::<NodeConfig>(text);
    if let Some(cfg) = check::<ProxyConfig>(text) {
        let mut names = Vec::new();
        for pool in cfg.pools.iter().filter(|p| !p.tls.enabled) {
            let built = limpet_proxy::select::Pool::new(pool.clone(), None)
                .expect("a pool without TLS always builds");
            assert_eq!(built.backends.len(), pool.backends.len());
            for b in &pool.backends {
                assert!(built.index_of(&b.id).is_some());
            }
            names.push(pool.name.clone());
        }
        let router =
            limpet_proxy::router::Router::new(&cfg.routes, |n| names.iter().position(|x| x == n));
        for route in &cfg.routes {
            let _ = router.find(route.host.as_deref(), &route.path_prefix);
        }
    }
});

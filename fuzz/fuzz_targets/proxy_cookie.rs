//! Sealed affinity cookies: any id seals and unseals to itself (also as
//! the Set-Cookie header round-trips through a Cookie header), any change
//! to a sealed value is refused, and no input opens without the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_config::CookieConfig;
use limpet_proxy::select::cookie::{find_cookie, set_cookie, Sealer};
use std::sync::OnceLock;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::new(b"limpet fuzz secret"))
}

fuzz_target!(|data: &[u8]| {
    // Whatever a client sends as a cookie value opens to nothing.
    let text = String::from_utf8_lossy(data);
    assert_eq!(
        sealer().open(&text),
        None,
        "opened a value that was never sealed"
    );

    if data.len() < 2 {
        return;
    }
    let (ctl, id) = data.split_at(2);
    let id = String::from_utf8_lossy(id);
    let sealed = sealer().seal(&id);
    assert!(
        sealed.bytes().all(|b| ALPHABET.contains(&b)),
        "cookie-safe characters"
    );
    assert_eq!(sealer().open(&sealed).as_deref(), Some(&*id));
    assert_eq!(Sealer::new(b"another secret").open(&sealed), None);

    // Through Set-Cookie and back in a Cookie header.
    let cfg = CookieConfig::default();
    let header = set_cookie(&cfg, &sealed);
    assert!(http::HeaderValue::from_str(&header).is_ok());
    let pair = header.split(';').next().unwrap();
    let cookie = format!("a=b; {pair}; c=d");
    let found = find_cookie(std::iter::once(cookie.as_str()), &cfg.name);
    assert_eq!(found, Some(sealed.as_str()));

    // Change one character to another of the alphabet, or cut the value.
    let mut forged = sealed.clone().into_bytes();
    let at = usize::from(ctl[0]) * forged.len() / 256;
    let old = ALPHABET.iter().position(|&c| c == forged[at]).unwrap();
    let step = 1 + usize::from(ctl[1]) % (ALPHABET.len() - 1);
    forged[at] = ALPHABET[(old + step) % ALPHABET.len()];
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(sealer().open(&forged), None, "tampered at {at}");
    assert_eq!(sealer().open(&sealed[..at]), None, "cut at {at}");
});

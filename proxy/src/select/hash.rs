//! Hashed affinity (`ip_hash`, `header`, `query`): weighted rendezvous
//! hashing with a fixed seed. Every instance computes the same winner for
//! the same key, and adding or removing one of N backends moves only the
//! keys that backend wins or loses, about 1/N of them (sozu's rendezvous
//! balancer works the same way). The hash is a fixed, documented function
//! (FNV-1a then a splitmix64 finalizer), not the std hasher, whose output
//! may change between Rust releases.

/// FNV-1a over `parts`, finished with splitmix64 so nearby keys spread.
pub fn stable_hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous hashing: the candidate with the highest
/// `-weight / ln(u)` for `u` uniform in (0,1) derived from (seed, id, key).
pub fn rendezvous<'a>(
    seed: u64,
    key: &[u8],
    candidates: impl Iterator<Item = (usize, &'a str, u32)>,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (index, id, weight) in candidates {
        let h = stable_hash(seed, &[id.as_bytes(), key]);
        // 53 random bits in (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(weight) / u.ln();
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, index));
        }
    }
    best.map(|(_, i)| i)
}

/// The value of query parameter `name` in a URI query string.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(ids: &[&str], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let key = format!("198.18.{}.{}", k / 256, k % 256);
                let i = rendezvous(
                    7,
                    key.as_bytes(),
                    ids.iter().enumerate().map(|(i, id)| (i, *id, 1)),
                )
                .unwrap();
                ids[i].to_string()
            })
            .collect()
    }

    #[test]
    fn rendezvous_moves_about_one_in_n_keys() {
        let three = owners(&["a", "b", "c"], 1000);
        let four = owners(&["a", "b", "c", "d"], 1000);
        let moved = three.iter().zip(&four).filter(|(x, y)| x != y).count();
        // Only keys that the new backend wins move: about a quarter.
        assert!((180..=320).contains(&moved), "moved {moved}");
        assert!(three.iter().zip(&four).all(|(x, y)| x == y || y == "d"));
        // Even spread over three.
        for id in ["a", "b", "c"] {
            let n = three.iter().filter(|o| *o == id).count();
            assert!((270..=400).contains(&n), "{id} owns {n}");
        }
        // Removing one moves only its keys.
        let two = owners(&["a", "c"], 1000);
        assert!(three.iter().zip(&two).all(|(x, y)| x == y || x == "b"));
    }

    #[test]
    fn weights_skew_rendezvous() {
        let heavy = (0..3000)
            .filter(|k| {
                let key = k.to_string();
                rendezvous(1, key.as_bytes(), [(0, "a", 3), (1, "b", 1)].into_iter()) == Some(0)
            })
            .count();
        assert!(
            (2050..=2450).contains(&heavy),
            "weight 3 of 4 should own ~75%: {heavy}"
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&room=x&b"), "room"), Some("x"));
        assert_eq!(query_param(Some("room="), "room"), None);
        assert_eq!(query_param(None, "room"), None);
    }
}

//! Redis glob patterns for `PSUBSCRIBE` and `PUBSUB CHANNELS`.
//!
//! Same rules as Redis's `stringmatchlen`: `*` any run, `?` one byte,
//! `[abc]`, `[a-z]` (a reversed range is swapped), `[^a]` negation, `\x` a
//! literal `x`, an unterminated `[` class closes at the end of the pattern.
//! Matching is byte-wise and case-sensitive.
//!
//! A pattern is compiled once, when it is subscribed, into the runs of
//! fixed-width tokens between its `*`s. Matching anchors the first run at
//! the start and the last at the end, and finds each middle run at its
//! leftmost place after the previous one: that greedy choice is always
//! right for globs, so nothing is ever retried (Redis recurses instead and
//! only caps the nesting, CVE-2022-36021). A run of plain bytes is found
//! with `memmem`, so the classic attack (`*aaaa…ab` against `aaaa…ac…`)
//! costs one pass over the channel. A long run holding `?` or `[…]` is
//! found with the bit-parallel shift-and algorithm: one pass over the
//! channel at one machine word per 64 tokens. Short runs are compared in
//! place. So one pattern costs about channel length × (1 + pattern
//! length / 64) steps, and both lengths are bounded by configuration
//! (`limits.max_pattern_len`, `limits.max_channel_len`).

use memchr::memmem::Finder;

/// One fixed-width element of a pattern (a `*` separates runs of these).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Any,
    Class { negate: bool, ranges: Vec<(u8, u8)> },
}

/// Runs with wildcards up to this long are searched by comparing in
/// place (at most this many steps per channel byte); longer ones get
/// shift-and tables.
const SHORT_RUN: usize = 8;

/// Tokens between two `*`s (or a pattern end), each matching one byte.
#[derive(Debug, Clone)]
struct Run {
    tokens: Vec<Token>,
    /// Set when every token is a plain byte: searched with `memmem`.
    literal: Option<Finder<'static>>,
    /// Set for long runs with wildcards.
    shift_and: Option<ShiftAnd>,
}

/// Shift-and tables for one run: bit `i` of a byte's mask says whether
/// token `i` accepts that byte. Bytes that every token treats alike share
/// one mask, so a run mentioning a few bytes keeps a few masks, not 256.
#[derive(Debug, Clone)]
struct ShiftAnd {
    /// 64-bit words per mask.
    words: usize,
    /// Byte value → which mask.
    index: Box<[u8; 256]>,
    /// The distinct masks, `words` words each.
    masks: Vec<u64>,
}

impl ShiftAnd {
    fn new(tokens: &[Token]) -> ShiftAnd {
        let words = tokens.len().div_ceil(64);
        let mut index = Box::new([0u8; 256]);
        let mut masks: Vec<u64> = Vec::new();
        let mut seen: ahash::AHashMap<Vec<u64>, u8> = ahash::AHashMap::new();
        for b in 0..=255u8 {
            let mut mask = vec![0u64; words];
            for (i, t) in tokens.iter().enumerate() {
                if single(t, b) {
                    mask[i / 64] |= 1 << (i % 64);
                }
            }
            // At most 256 distinct masks, one per byte value: fits a u8.
            let next = (masks.len() / words) as u8;
            let slot = *seen.entry(mask.clone()).or_insert_with(|| {
                masks.extend_from_slice(&mask);
                next
            });
            index[b as usize] = slot;
        }
        ShiftAnd {
            words,
            index,
            masks,
        }
    }

    /// Start of the leftmost match of a `len`-token run in `s`.
    fn find(&self, len: usize, s: &[u8]) -> Option<usize> {
        let w = self.words;
        let (last_word, last_bit) = ((len - 1) / 64, (len - 1) % 64);
        let mut state = vec![0u64; w];
        for (i, &b) in s.iter().enumerate() {
            let at = self.index[b as usize] as usize * w;
            let mask = &self.masks[at..at + w];
            let mut carry = 1u64;
            for (d, m) in state.iter_mut().zip(mask) {
                let shifted = (*d << 1) | carry;
                carry = *d >> 63;
                *d = shifted & m;
            }
            if state[last_word] >> last_bit & 1 == 1 {
                return Some(i + 1 - len);
            }
        }
        None
    }
}

impl Run {
    fn new(tokens: Vec<Token>) -> Run {
        let literal = tokens
            .iter()
            .map(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .map(|bytes| Finder::new(&bytes).into_owned());
        let shift_and =
            (literal.is_none() && tokens.len() > SHORT_RUN).then(|| ShiftAnd::new(&tokens));
        Run {
            tokens,
            literal,
            shift_and,
        }
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the run matches `s`, which must be exactly as long as the run.
    fn matches_at(&self, s: &[u8]) -> bool {
        match &self.literal {
            Some(f) => f.needle() == s,
            None => self.tokens.iter().zip(s).all(|(t, &b)| single(t, b)),
        }
    }

    /// Leftmost position where the run matches inside `s`.
    fn find(&self, s: &[u8]) -> Option<usize> {
        if let Some(f) = &self.literal {
            return f.find(s);
        }
        if let Some(sa) = &self.shift_and {
            return sa.find(self.len(), s);
        }
        let n = self.len();
        if s.len() < n {
            return None;
        }
        let last_start = s.len() - n;
        let mut at = 0;
        while at <= last_start {
            // A leading plain byte lets memchr skip to the candidates.
            if let Some(Token::Byte(first)) = self.tokens.first() {
                at += memchr::memchr(*first, &s[at..=last_start])?;
            }
            if self.matches_at(&s[at..at + n]) {
                return Some(at);
            }
            at += 1;
        }
        None
    }
}

/// A compiled pattern: `runs[0]` * `runs[1]` * … * `runs[last]`.
#[derive(Debug, Clone)]
pub struct Glob {
    /// Always at least one run; exactly one when the pattern has no `*`.
    runs: Vec<Run>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let mut runs = Vec::new();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    // `**` is one star: an empty run between them adds nothing.
                    runs.push(Run::new(std::mem::take(&mut tokens)));
                    while pattern.get(i) == Some(&b'*') {
                        i += 1;
                    }
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'\\' if i + 1 < pattern.len() => {
                    tokens.push(Token::Byte(pattern[i + 1]));
                    i += 2;
                }
                b'[' => {
                    i += 1;
                    let negate = pattern.get(i) == Some(&b'^');
                    if negate {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    while i < pattern.len() && pattern[i] != b']' {
                        if pattern[i] == b'\\' && i + 1 < pattern.len() {
                            ranges.push((pattern[i + 1], pattern[i + 1]));
                            i += 2;
                        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                            let (a, b) = (pattern[i], pattern[i + 2]);
                            ranges.push((a.min(b), a.max(b)));
                            i += 3;
                        } else {
                            ranges.push((pattern[i], pattern[i]));
                            i += 1;
                        }
                    }
                    i += 1; // the closing `]`, or past the end
                    tokens.push(Token::Class { negate, ranges });
                }
                b => {
                    tokens.push(Token::Byte(b));
                    i += 1;
                }
            }
        }
        runs.push(Run::new(tokens));
        Glob { runs }
    }

    pub fn matches(&self, s: &[u8]) -> bool {
        let (first, rest) = match self.runs.split_first() {
            Some(split) => split,
            None => return s.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            // No star: the one run is the whole channel.
            return s.len() == first.len() && first.matches_at(s);
        };
        if s.len() < first.len() + last.len() {
            return false;
        }
        let end = s.len() - last.len();
        if !first.matches_at(&s[..first.len()]) || !last.matches_at(&s[end..]) {
            return false;
        }
        let mut pos = first.len();
        for run in middle {
            match run.find(&s[pos..end]) {
                Some(at) => pos += at + run.len(),
                None => return false,
            }
        }
        true
    }
}

fn single(tok: &Token, b: u8) -> bool {
    match tok {
        Token::Byte(c) => *c == b,
        Token::Any => true,
        Token::Class { negate, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negate
        }
    }
}

/// One-off match, for `PUBSUB CHANNELS pattern` and `CONFIG GET pattern`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    Glob::new(pattern).matches(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("news.*", "news.art", true),
            ("news.*", "news.", true),
            ("news.*", "news", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hllo", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h[b-a]llo", "hallo", true), // reversed range is swapped
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("[\\]]", "]", true),
            ("[abc", "b", true), // unterminated class closes at the end
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            (
                "*a*a*a*a*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("room:*:chat", "room:42:chat", true),
            ("room:*:chat", "room:42:chat:x", false),
            ("CASE", "case", false),
            ("a\\", "a\\", true), // a trailing backslash is literal
            ("[a-]", "-", false), // `a-]` is a range, as in Redis
            ("[a-]", "^", true),
            ("??", "ab", true),
            ("??", "abc", false),
        ];
        for &(pattern, s, want) in table {
            assert_eq!(
                glob_match(pattern.as_bytes(), s.as_bytes()),
                want,
                "{pattern:?} vs {s:?}"
            );
        }
    }

    /// Redis's recursive `stringmatchlen`, transcribed: the reference the
    /// compiled matcher must agree with on every short input.
    fn redis_match(p: &[u8], s: &[u8]) -> bool {
        let (mut p, mut s) = (p, s);
        while !p.is_empty() && !s.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    for k in 0..=s.len() {
                        if redis_match(&p[1..], &s[k..]) {
                            return true;
                        }
                    }
                    return false;
                }
                b'?' => s = &s[1..],
                b'[' => {
                    p = &p[1..];
                    let not = p.first() == Some(&b'^');
                    if not {
                        p = &p[1..];
                    }
                    let mut hit = false;
                    loop {
                        if p.len() >= 2 && p[0] == b'\\' {
                            p = &p[1..];
                            if p[0] == s[0] {
                                hit = true;
                            }
                        } else if p.is_empty() || p[0] == b']' {
                            break;
                        } else if p.len() >= 3 && p[1] == b'-' {
                            let (lo, hi) = (p[0].min(p[2]), p[0].max(p[2]));
                            if lo <= s[0] && s[0] <= hi {
                                hit = true;
                            }
                            p = &p[2..];
                        } else if p[0] == s[0] {
                            hit = true;
                        }
                        p = &p[1..];
                    }
                    if hit == not {
                        return false;
                    }
                    s = &s[1..];
                    if p.is_empty() {
                        // The class ran to the end of the pattern.
                        return s.is_empty();
                    }
                }
                b'\\' if p.len() >= 2 => {
                    p = &p[1..];
                    if p[0] != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
                c => {
                    if c != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
            }
            p = &p[1..];
        }
        s.is_empty() && p.iter().all(|&c| c == b'*')
    }

    /// Our matcher and Redis's reference agree on `pattern` against `s`.
    fn assert_agrees(pattern: &[u8], s: &[u8]) {
        assert_eq!(
            Glob::new(pattern).matches(s),
            redis_match(pattern, s),
            "{:?} vs {:?}",
            String::from_utf8_lossy(pattern),
            String::from_utf8_lossy(s)
        );
    }

    /// Deterministic random numbers below `n` (xorshift, no dependency), so
    /// a failing input repeats.
    fn below(seed: u64) -> impl FnMut(usize) -> usize {
        let mut x = seed;
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        }
    }

    #[test]
    fn agrees_with_redis_on_random_inputs() {
        let mut next = below(0x9e37_79b9_7f4a_7c15);
        let pat_alphabet = b"ab*?[]^-\\c";
        let str_alphabet = b"abc-]^\\";
        for _ in 0..200_000 {
            let pattern: Vec<u8> = (0..next(9))
                .map(|_| pat_alphabet[next(pat_alphabet.len())])
                .collect();
            let s: Vec<u8> = (0..next(9))
                .map(|_| str_alphabet[next(str_alphabet.len())])
                .collect();
            assert_agrees(&pattern, &s);
        }
    }

    #[test]
    fn long_wildcard_runs_agree_with_redis() {
        // Runs longer than SHORT_RUN take the shift-and path; over 64
        // tokens, its multi-word one.
        let mut next = below(0x2545_f491_4f6c_dd1d);
        let pat_alphabet = b"ab??[]^-c*aab";
        for round in 0..20_000 {
            let max = if round % 10 == 0 { 150 } else { 40 };
            let pattern: Vec<u8> = (0..next(max))
                .map(|_| {
                    let c = pat_alphabet[next(pat_alphabet.len())];
                    // Few stars, so runs get long and the reference stays fast.
                    if c == b'*' && next(4) != 0 {
                        b'?'
                    } else {
                        c
                    }
                })
                .collect();
            let s: Vec<u8> = (0..next(max + 20)).map(|_| b"abc"[next(3)]).collect();
            assert_agrees(&pattern, &s);
        }
        let mut long = b"*".to_vec();
        long.extend(std::iter::repeat_n(b'?', 70));
        long.extend(b"[b]*");
        let mut s = vec![b'a'; 300];
        assert!(!glob_match(&long, &s));
        s[200] = b'b';
        assert!(glob_match(&long, &s));
        s[200] = b'a';
        s[50] = b'b';
        assert!(!glob_match(&long, &s), "needs 70 bytes before the b");
    }

    #[test]
    fn the_cve_2022_36021_shape_is_one_pass() {
        // Quadratic before: 10^4 pattern bytes × 10^6 channel bytes.
        let mut pattern = b"*".to_vec();
        pattern.extend(std::iter::repeat_n(b'a', 10_000));
        pattern.push(b'b');
        let channel: Vec<u8> = std::iter::repeat_n(b'a', 9_999)
            .chain(Some(b'c'))
            .cycle()
            .take(1_000_000)
            .collect();
        assert!(!glob_match(&pattern, &channel));
        let mut hit = channel.clone();
        hit.extend(std::iter::repeat_n(b'a', 10_000));
        hit.push(b'b');
        assert!(glob_match(&pattern, &hit));
    }
}

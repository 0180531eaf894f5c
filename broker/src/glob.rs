//! Redis glob patterns for `PSUBSCRIBE` and `PUBSUB CHANNELS`.
//!
//! Same rules as Redis's `stringmatchlen`: `*` any run, `?` one byte,
//! `[abc]`, `[a-z]` (a reversed range is swapped), `[^a]` negation, `\x` a
//! literal `x`, an unterminated `[` class closes at the end of the pattern.
//! Matching is byte-wise and case-sensitive.
//!
//! A pattern is compiled once, when it is subscribed, and matched with a
//! single backtracking point for `*`, so a hostile pattern costs at most
//! pattern length × channel length steps per publish (Redis recurses and
//! caps the nesting instead).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Any,
    Star,
    Class { negate: bool, ranges: Vec<(u8, u8)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
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
        Glob { tokens }
    }

    pub fn matches(&self, s: &[u8]) -> bool {
        let t = &self.tokens;
        let (mut ti, mut si) = (0, 0);
        // Where to resume after the last `*`: (token after it, next byte it may absorb).
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            let step = match t.get(ti) {
                Some(Token::Star) => {
                    star = Some((ti + 1, si));
                    ti += 1;
                    continue;
                }
                Some(tok) => single(tok, s[si]),
                None => false,
            };
            if step {
                ti += 1;
                si += 1;
            } else if let Some((after, absorbed)) = star {
                ti = after;
                si = absorbed + 1;
                star = Some((after, absorbed + 1));
            } else {
                return false;
            }
        }
        t[ti..].iter().all(|tok| *tok == Token::Star)
    }
}

fn single(tok: &Token, b: u8) -> bool {
    match tok {
        Token::Byte(c) => *c == b,
        Token::Any => true,
        Token::Class { negate, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negate
        }
        Token::Star => unreachable!("stars are handled by the matcher"),
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
}

//! A request's `id`, read without parsing the request.
//!
//! A request refused before it is parsed (over the rate limit) still gets
//! its error with its `id`, so a client waiting for the ack by id is
//! answered instead of waiting forever. Parsing it whole would cost what
//! the rate limit is there to save, so only the top level of the object
//! is walked: values are skipped by counting brackets outside strings (no
//! recursion), and the walk stops at `id`, whose value alone is parsed.

use serde_json::Value;

/// The `id` of a text request, read without parsing the rest: the
/// top-level keys are skipped over, values unparsed, until `id` (a key
/// written plainly, without escapes). For a reply to a request refused
/// before it is parsed (the rate limit), so a client waiting for its ack
/// by id is answered. No allocation but the id's own value; `None` when
/// the text is not an object or has no readable `id`.
pub fn id(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        if key == b"id" {
            // `"id": null` is no id, as for the full parse (found by the
            // `node_ws` fuzz target).
            return serde_json::from_str(text.get(i..end)?)
                .ok()
                .filter(|v: &Value| !v.is_null());
        }
        i = skip_ws(b, end);
        if b.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

/// [`id`] of a binary frame's request line.
pub fn binary_id(bytes: &[u8]) -> Option<Value> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    id(std::str::from_utf8(&bytes[..nl]).ok()?)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Just past the string that opens at `b[start]` (a `"`).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Just past the JSON value that starts at `b[start]`, found by counting
/// brackets outside strings (no recursion, so no depth limit is needed).
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = start;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_id_is_read_without_parsing_the_rest() {
        let id = |t: &str| id(t);
        assert_eq!(
            id(r#"{"op":"emit","data":{"a":[1,"]}"],"id":2},"id":7}"#),
            Some(json!(7))
        );
        assert_eq!(id(r#" { "id" : "x\"y" , "op":1}"#), Some(json!("x\"y")));
        assert_eq!(
            id(r#"{"data":"\"id\":3","id":{"n":[1]}}"#),
            Some(json!({"n":[1]}))
        );
        assert_eq!(id(r#"{"op":"ping"}"#), None);
        assert_eq!(id(r#"{"id":null}"#), None, "null is no id");
        assert_eq!(id(r#"{"op":"ping","id":"#), None);
        assert_eq!(id(r#"[{"id":1}]"#), None);
        assert_eq!(id(r#"{"op":tru"#), None);
        // Only the request line of a binary frame is read.
        assert_eq!(binary_id(b"{\"id\":5}\n\xff\"id\":6"), Some(json!(5)));
    }
}

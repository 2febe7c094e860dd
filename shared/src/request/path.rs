//! The canonical form of a request path, as an engine's HTTP server resolves it: query and
//! fragment dropped, percent-escapes decoded (`%2F` is a `/`), repeated slashes merged, `.`
//! and `..` segments resolved, no trailing slash. Routing decisions use it, so a path spelled
//! differently cannot reach an engine as unrouted "other" traffic.

use std::borrow::Cow;

/// Longest path considered (longer ones are not inference routes and are returned as is,
/// truncated to this bound before any work).
pub const MAX_PATH_BYTES: usize = 2048;

/// `path` in canonical form; borrowed when it already is.
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    let path = &path[..floor_char_boundary(path, MAX_PATH_BYTES)];
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if is_canonical(path) {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Already canonical: starts with `/`, no escapes, no empty, `.` or `..` segment, no
/// trailing slash (except the root).
fn is_canonical(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    path.starts_with('/')
        && !path.contains('%')
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Decodes `%XX` escapes (invalid ones and escapes of non-UTF-8 bytes are kept as written).
fn percent_decode(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(path),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_route_are_one_path() {
        for spelling in [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "//v1/chat/completions",
            "/v1//chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/chat%2fcompletions",
            "/%761/chat/completions",
            "/v1/chat/completions?stream=true",
            "/v1/chat/completions#x",
        ] {
            assert_eq!(
                canonical_path(spelling),
                "/v1/chat/completions",
                "{spelling}"
            );
        }
    }

    #[test]
    fn odd_inputs_stay_bounded_and_total() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/../../.."), "/");
        assert_eq!(canonical_path("/a%zz"), "/a%zz");
        assert_eq!(canonical_path("/a%2"), "/a%2");
        assert_eq!(
            canonical_path("/a%ff"),
            "/a%ff",
            "not UTF-8 once decoded: kept"
        );
        let long = format!("/{}", "é".repeat(3000));
        assert!(canonical_path(&long).len() <= MAX_PATH_BYTES);
        assert!(matches!(canonical_path("/v1/models"), Cow::Borrowed(_)));
    }
}

//! Request path normalisation: dot-segments are resolved (RFC 3986 §5.2.4) before a request is
//! matched to a pool and forwarded.
//!
//! Why: a pool's `pathPrefix` is a promise about which paths reach its members. Left alone,
//! `/shop/../secret` matches pool `/shop` and, after the prefix rewrite, reaches the member as
//! `/app/../secret`, which the member resolves to `/secret`, outside the prefix it was meant
//! to serve. routeid resolves the dot-segments first, matches the result and forwards it
//! (nginx does the same). A segment counts as a dot-segment also when its dots are
//! percent-encoded (`%2e`, `%2E`) or when a path parameter follows it (`..;x=1`: Tomcat strips
//! the parameter and then resolves the dots, a known way around prefix rules). Everything else in
//! the path (other escapes, empty segments, parameters of ordinary segments) is left as it was.

/// What one segment is, for dot-segment removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    Normal,
    /// `.`, `%2e` (or with a parameter): removed.
    Current,
    /// `..` in any spelling: removes the segment before it.
    Parent,
}

fn classify(segment: &str) -> Segment {
    let name = segment.split(';').next().unwrap_or("");
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return Segment::Normal,
        }
        dots += 1;
    }
    match dots {
        1 => Segment::Current,
        2 => Segment::Parent,
        _ => Segment::Normal,
    }
}

/// The path with its dot-segments resolved, or `None` when it has none (the common case, which
/// allocates nothing). A path that does not start with `/` (`*`) is left alone.
pub fn normalize(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    if !rest.split('/').any(|s| classify(s) != Segment::Normal) {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    // A path ending in a dot-segment names a directory: `/a/b/..` is `/a/`.
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        trailing_slash = false;
        match classify(segment) {
            Segment::Normal => out.push(segment),
            Segment::Current => trailing_slash = true,
            Segment::Parent => {
                out.pop();
                trailing_slash = true;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for segment in &out {
        s.push('/');
        s.push_str(segment);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dot_segments_in_every_spelling() {
        let cases = [
            ("/shop/../secret", "/secret"),
            ("/shop/%2e%2e/secret", "/secret"),
            ("/shop/.%2E/secret", "/secret"),
            ("/shop/%2E./secret", "/secret"),
            ("/shop/..;x=1/secret", "/secret"),
            ("/a/./b", "/a/b"),
            ("/a/b/../../c", "/c"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/%2e", "/a/"),
            ("/a//../b", "/a/b"),
            ("/a/;jsessionid=x.n1/../b", "/a/b"),
            ("/a;jsessionid=x.n1/./b", "/a;jsessionid=x.n1/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn leaves_ordinary_paths_alone() {
        for p in [
            "/",
            "/shop",
            "/shop/",
            "/a/b;jsessionid=x.n1",
            "/..x/y",
            "/a/.../b",
            "/a/%2e%2e%2e",
            "*",
            "/a//b",
            "/.well-known/x",
            "/%2F..",
        ] {
            assert_eq!(normalize(p), None, "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normalised_paths_have_no_dot_segments_and_stay_rooted(
            segs in proptest::collection::vec("(\\.|\\.\\.|%2e|%2E%2e|\\.\\.;p|[a-z]{1,3}|)", 0..8)
        ) {
            let path = format!("/{}", segs.join("/"));
            let n = normalize(&path).unwrap_or(path.clone());
            proptest::prop_assert!(n.starts_with('/'));
            proptest::prop_assert!(n[1..].split('/').all(|s| classify(s) == Segment::Normal), "{} -> {}", path, n);
            proptest::prop_assert_eq!(normalize(&n), None, "idempotent");
        }
    }
}

//! Route patterns, as on Workers: `host/path` where the host may start with `*`
//! (any prefix: `*.example.com` is every subdomain, `*example.com` the apex as
//! well) and the path may end with `*` (any suffix). A pattern without a path
//! serves every path of its host, like a Workers custom domain. Query strings
//! never take part in matching. When several patterns match, the most specific
//! wins: an exact host over a wildcard one, a longer host over a shorter one,
//! then an exact path over a prefix, a longer path over a shorter one.

/// One parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    raw: String,
    host_wildcard: bool,
    host: String,
    path: PathRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRule {
    /// No path in the pattern: every path.
    Any,
    /// `/exact`.
    Exact(String),
    /// `/prefix*`.
    Prefix(String),
}

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {pattern:?}: {reason}")]
pub struct RouteError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// How well a pattern matches, larger being more specific: exact host, host
/// length, path length, exact path.
type Specificity = (bool, usize, usize, bool);

impl RoutePattern {
    /// Parses and validates a pattern such as `shop.example.com/api/*`.
    pub fn parse(pattern: &str) -> Result<RoutePattern, RouteError> {
        let err = |reason| RouteError {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.contains("://") {
            return Err(err("omit the scheme: a route matches http and https alike"));
        }
        if pattern.is_empty() || pattern.len() > 1024 {
            return Err(err("must be 1 to 1024 characters"));
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain whitespace"));
        }
        if pattern.contains('?') || pattern.contains('#') {
            return Err(err("must not contain a query or fragment"));
        }
        let (host, path) = match pattern.find('/') {
            Some(i) => (&pattern[..i], Some(&pattern[i..])),
            None => (pattern, None),
        };
        let (host_wildcard, host) = match host.strip_prefix('*') {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(err("a host may only start with *"));
        }
        if host.contains(':') {
            return Err(err("must not name a port"));
        }
        if !host_wildcard && host.is_empty() {
            return Err(err("needs a host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(err("the host has characters a hostname cannot have"));
        }
        let path = match path {
            None => PathRule::Any,
            Some(p) => {
                let (body, prefix) = match p.strip_suffix('*') {
                    Some(b) => (b, true),
                    None => (p, false),
                };
                if body.contains('*') {
                    return Err(err("a path may only end with *"));
                }
                if prefix {
                    PathRule::Prefix(body.to_owned())
                } else {
                    PathRule::Exact(body.to_owned())
                }
            }
        };
        Ok(RoutePattern {
            raw: pattern.to_owned(),
            host_wildcard,
            host: host.to_ascii_lowercase(),
            path,
        })
    }

    /// How specifically this pattern matches `host` (lowercase, no port) and
    /// `path` (no query), or `None` when it does not match.
    fn matches(&self, host: &str, path: &str) -> Option<Specificity> {
        let host_ok = if self.host_wildcard {
            host.ends_with(&self.host)
        } else {
            host == self.host
        };
        if !host_ok {
            return None;
        }
        let (len, exact) = match &self.path {
            PathRule::Any => (0, false),
            PathRule::Prefix(p) if path.starts_with(p.as_str()) => (p.len(), false),
            PathRule::Exact(p) if path == p => (p.len(), true),
            _ => return None,
        };
        Some((!self.host_wildcard, self.host.len(), len, exact))
    }
}

/// The routes of every deployed worker.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<(RoutePattern, String)>,
}

impl RouteTable {
    /// Replaces `worker`'s routes with `routes`.
    pub fn set(&mut self, worker: &str, routes: &[RoutePattern]) {
        self.routes.retain(|(_, w)| w != worker);
        self.routes
            .extend(routes.iter().map(|r| (r.clone(), worker.to_owned())));
    }

    /// The worker that serves `pattern` exactly, if any (two workers cannot
    /// claim the same pattern).
    pub fn owner_of(&self, pattern: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(r, _)| r.raw == pattern)
            .map(|(_, w)| w.as_str())
    }

    /// The worker whose most specific route matches `host` (a `Host` header:
    /// any port is ignored) and `path` (a query is ignored).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&str> {
        let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
        let path = path.split('?').next().unwrap_or("");
        self.routes
            .iter()
            .filter_map(|(r, w)| r.matches(&host, path).map(|s| (s, w)))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, w)| w.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let mut t = RouteTable::default();
        for (pattern, worker) in routes {
            let r = RoutePattern::parse(pattern).expect("valid pattern");
            let mut mine: Vec<RoutePattern> = t
                .routes
                .iter()
                .filter(|(_, w)| w == worker)
                .map(|(r, _)| r.clone())
                .collect();
            mine.push(r);
            t.set(worker, &mine);
        }
        t
    }

    #[test]
    fn hosts_paths_and_wildcards_match_as_on_workers() {
        let t = table(&[
            ("shop.example.com/*", "shop"),
            ("*.example.com/api/*", "api"),
            ("*example.org/*", "org"),
            ("example.net/exact", "exact"),
            ("blog.example.net", "blog"),
        ]);
        assert_eq!(t.lookup("shop.example.com", "/"), Some("shop"));
        assert_eq!(t.lookup("SHOP.example.com:8080", "/x?y=1"), Some("shop"));
        assert_eq!(t.lookup("a.example.com", "/api/items"), Some("api"));
        assert_eq!(t.lookup("a.example.com", "/other"), None);
        assert_eq!(
            t.lookup("example.com", "/api/items"),
            None,
            "*. needs a subdomain"
        );
        assert_eq!(t.lookup("example.org", "/"), Some("org"));
        assert_eq!(t.lookup("www.example.org", "/"), Some("org"));
        assert_eq!(t.lookup("example.net", "/exact"), Some("exact"));
        assert_eq!(t.lookup("example.net", "/exact?q=1"), Some("exact"));
        assert_eq!(t.lookup("example.net", "/exact/more"), None);
        assert_eq!(t.lookup("blog.example.net", "/any/path"), Some("blog"));
        assert_eq!(t.lookup("other.test", "/"), None);
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(&[
            ("*.example.com/*", "wild"),
            ("shop.example.com/*", "shop"),
            ("shop.example.com/api/*", "api"),
            ("shop.example.com/api/health", "health"),
            ("*shop.example.com/api/*", "wild-api"),
        ]);
        // An exact host beats every wildcard host, whatever the path.
        assert_eq!(t.lookup("shop.example.com", "/"), Some("shop"));
        assert_eq!(t.lookup("shop.example.com", "/api/x"), Some("api"));
        assert_eq!(t.lookup("shop.example.com", "/api/health"), Some("health"));
        // Among wildcards, the longer host wins.
        assert_eq!(t.lookup("a.shop.example.com", "/api/x"), Some("wild-api"));
        assert_eq!(t.lookup("a.shop.example.com", "/"), Some("wild"));
    }

    #[test]
    fn an_exact_path_beats_a_prefix_of_the_same_length() {
        let t = table(&[("example.com/a*", "prefix"), ("example.com/a", "exact")]);
        assert_eq!(t.lookup("example.com", "/a"), Some("exact"));
        assert_eq!(t.lookup("example.com", "/ab"), Some("prefix"));
    }

    #[test]
    fn replacing_and_removing_a_workers_routes() {
        let mut t = table(&[("a.test/*", "one"), ("b.test/*", "two")]);
        assert_eq!(t.owner_of("a.test/*"), Some("one"));
        t.set("one", &[RoutePattern::parse("c.test/*").expect("valid")]);
        assert_eq!(t.lookup("a.test", "/"), None);
        assert_eq!(t.lookup("c.test", "/"), Some("one"));
        t.set("two", &[]);
        assert_eq!(t.lookup("b.test", "/"), None);
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (p, reason) in [
            ("https://shop.example.com/*", "omit the scheme"),
            ("shop.*.com/*", "only start with *"),
            ("shop.example.com/*/x", "only end with *"),
            ("shop.example.com:8080/*", "port"),
            ("/*", "needs a host"),
            ("shop.example.com/?q=1", "query"),
            ("shop example.com/*", "whitespace"),
            ("shop_example!.com/*", "characters"),
            ("", "1 to 1024"),
        ] {
            let e = RoutePattern::parse(p).expect_err(p);
            assert!(e.reason.contains(reason), "{p}: {}", e.reason);
        }
    }
}

//! Route patterns, as on Workers: `host/path` where the host may start with `*`
//! (any prefix: `*.example.com` is every subdomain, `*example.com` the apex as
//! well) and the path may end with `*` (any suffix). A pattern without a path
//! serves every path of its host, like a Workers custom domain. Query strings
//! never take part in matching. When several patterns match, the most specific
//! wins: an exact host over a wildcard one, a longer host over a shorter one,
//! then an exact path over a prefix, a longer path over a shorter one; between
//! equals, the route claimed first.
//!
//! Hosts are compared in a canonical form: ASCII lowercase, without trailing
//! dots (`SHOP.example.com.` is `shop.example.com`), both in patterns and in
//! the `Host` of requests. [`RoutePattern::hosts_overlap`] tells whether two
//! patterns can match a common host: deploys use it to keep one account's
//! hosts out of another's reach.

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
        let host = host.trim_end_matches('.');
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
        if host.contains("..") || (!host_wildcard && host.starts_with('.')) {
            return Err(err("the host has an empty label"));
        }
        // `*` or `*.com` would claim every host, or a whole top-level domain.
        if host_wildcard && host.trim_start_matches('.').split('.').count() < 2 {
            return Err(err(
                "a wildcard host needs at least two labels after the * (like *.example.com)",
            ));
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

    /// The pattern in canonical form: `*` if the host is a wildcard, the
    /// lowercase host without trailing dots, then the path as given.
    pub fn canonical(&self) -> String {
        let path = match &self.path {
            PathRule::Any => String::new(),
            PathRule::Exact(p) => p.clone(),
            PathRule::Prefix(p) => format!("{p}*"),
        };
        let star = if self.host_wildcard { "*" } else { "" };
        format!("{star}{}{path}", self.host)
    }

    /// The pattern as it was written.
    pub fn as_written(&self) -> &str {
        &self.raw
    }

    /// Whether some host matches both patterns (paths aside): then the two
    /// must belong to one account.
    pub fn hosts_overlap(&self, other: &RoutePattern) -> bool {
        match (self.host_wildcard, other.host_wildcard) {
            (false, false) => self.host == other.host,
            (true, false) => other.host.ends_with(&self.host),
            (false, true) => self.host.ends_with(&other.host),
            (true, true) => self.host.ends_with(&other.host) || other.host.ends_with(&self.host),
        }
    }

    /// Whether this pattern could match a host under `domain` (`x.<domain>`).
    pub fn matches_host_within(&self, domain: &str) -> bool {
        let suffix = format!(".{domain}");
        if self.host_wildcard {
            suffix.ends_with(&self.host) || self.host.ends_with(&suffix)
        } else {
            self.host.ends_with(&suffix)
        }
    }

    /// How specifically this pattern matches `host` (canonical, no port) and
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

/// A `Host` header in canonical form: no port, ASCII lowercase, no trailing dots.
pub fn canonical_host(host: &str) -> String {
    host.split(':')
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// One route of the table: the pattern, its worker, and when it was first
/// claimed (the earlier claim wins a tie).
#[derive(Debug, Clone)]
struct Entry {
    pattern: RoutePattern,
    worker: String,
    claimed: u64,
}

/// The routes of every deployed worker.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<Entry>,
    claims: u64,
}

impl RouteTable {
    /// Replaces `worker`'s routes with `routes`; a pattern the worker already
    /// had keeps its place in line.
    pub fn set(&mut self, worker: &str, routes: &[RoutePattern]) {
        let mut kept = std::collections::HashMap::new();
        self.routes.retain(|e| {
            if e.worker == worker {
                kept.insert(e.pattern.canonical(), e.claimed);
                false
            } else {
                true
            }
        });
        for r in routes {
            let claimed = kept.get(&r.canonical()).copied().unwrap_or_else(|| {
                self.claims += 1;
                self.claims
            });
            self.routes.push(Entry {
                pattern: r.clone(),
                worker: worker.to_owned(),
                claimed,
            });
        }
    }

    /// The worker that serves `pattern` (compared in canonical form), if any.
    pub fn owner_of(&self, pattern: &str) -> Option<&str> {
        let canonical = RoutePattern::parse(pattern).ok()?.canonical();
        self.routes
            .iter()
            .filter(|e| e.pattern.canonical() == canonical)
            .min_by_key(|e| e.claimed)
            .map(|e| e.worker.as_str())
    }

    /// The worker whose most specific route matches `host` (a `Host` header:
    /// any port, letter case and trailing dot are ignored) and `path` (a query
    /// is ignored); between equally specific routes, the one claimed first.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&str> {
        let host = canonical_host(host);
        let path = path.split('?').next().unwrap_or("");
        self.routes
            .iter()
            .filter_map(|e| e.pattern.matches(&host, path).map(|s| (s, e)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.claimed.cmp(&a.1.claimed)))
            .map(|(_, e)| e.worker.as_str())
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
                .filter(|e| e.worker == *worker)
                .map(|e| e.pattern.clone())
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
        assert_eq!(t.lookup("shop.example.com.", "/"), Some("shop"));
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
            ("shop..example.com/*", "empty label"),
            ("", "1 to 1024"),
        ] {
            let e = RoutePattern::parse(p).expect_err(p);
            assert!(e.reason.contains(reason), "{p}: {}", e.reason);
        }
    }

    #[test]
    fn patterns_compare_in_canonical_form() {
        let p = |s: &str| RoutePattern::parse(s).expect(s);
        assert_eq!(p("SHOP.Example.com./*").canonical(), "shop.example.com/*");
        assert_eq!(p("*.EXAMPLE.com").canonical(), "*.example.com");
        assert_eq!(
            p("shop.example.com/API").canonical(),
            "shop.example.com/API"
        );
        let t = table(&[("shop.example.com/*", "shop")]);
        assert_eq!(t.owner_of("Shop.Example.COM./*"), Some("shop"));
    }

    #[test]
    fn a_wildcard_cannot_claim_every_host_or_a_top_level_domain() {
        for bad in ["*/*", "*", "*.com/*", "*com/*", "*./*"] {
            let e = RoutePattern::parse(bad).expect_err(bad);
            assert!(
                e.to_string().contains("two labels") || e.to_string().contains("empty"),
                "{bad}: {e}"
            );
        }
        assert!(RoutePattern::parse("*.example.com/*").is_ok());
        assert!(RoutePattern::parse("*example.com/*").is_ok());
    }

    #[test]
    fn patterns_that_reach_into_a_domain() {
        let p = |s: &str| RoutePattern::parse(s).expect(s);
        for inside in [
            "victim.workers.localhost/*",
            "VICTIM.workers.localhost./x",
            "*.workers.localhost/*",
            "*workers.localhost/*",
        ] {
            assert!(
                p(inside).matches_host_within("workers.localhost"),
                "{inside}"
            );
        }
        for outside in [
            "shop.example.com/*",
            "workers.localhost/*",
            "*.example.com/*",
        ] {
            assert!(
                !p(outside).matches_host_within("workers.localhost"),
                "{outside}"
            );
        }
    }

    #[test]
    fn overlapping_hosts() {
        let p = |s: &str| RoutePattern::parse(s).expect(s);
        let shop = p("shop.example.com/*");
        for other in [
            "SHOP.example.com./*",
            "shop.example.com/checkout*",
            "shop.example.com",
            "*.example.com/*",
            "*example.com/x",
        ] {
            assert!(shop.hosts_overlap(&p(other)), "{other}");
            assert!(p(other).hosts_overlap(&shop), "{other}");
        }
        for other in [
            "blog.example.com/*",
            "*.shop.example.com/*",
            "example.com/*",
        ] {
            assert!(!shop.hosts_overlap(&p(other)), "{other}");
        }
        assert!(p("*.example.com/*").hosts_overlap(&p("*.a.example.com/*")));
        assert!(!p("*.example.com/*").hosts_overlap(&p("*.example.org/*")));
    }

    #[test]
    fn a_tie_goes_to_the_first_claim_even_after_a_redeploy() {
        let mut t = table(&[("a.test/*", "first"), ("A.test./*", "second")]);
        assert_eq!(t.lookup("a.test", "/"), Some("first"));
        t.set(
            "first",
            &[
                RoutePattern::parse("a.test/*").expect("valid"),
                RoutePattern::parse("b.test/*").expect("valid"),
            ],
        );
        assert_eq!(t.lookup("a.test", "/"), Some("first"));
        assert_eq!(t.owner_of("a.test/*"), Some("first"));
        t.set("first", &[]);
        assert_eq!(t.lookup("a.test", "/"), Some("second"));
    }
}

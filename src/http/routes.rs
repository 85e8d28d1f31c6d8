//! The route table type every listener uses (the public port, the admin listener, the
//! embedding service): method + path → the listener's own route, 404 for an unknown path,
//! 405 with `Allow` for a known path and the wrong method.
//!
//! Paths match exactly: no normalisation (`//v1/models`, `/a/../metrics`, `%2e%2e` and a
//! trailing slash are other paths), so no route is reached by a detour. A prefix route
//! (`/v1/models/{id}`) hands the rest of the path to the caller.

use super::error::ApiError;

/// The methods a path accepts (a set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Methods(u8);

impl Methods {
    /// `GET` and `HEAD`.
    pub const READ: Methods = Methods(1);
    pub const POST: Methods = Methods(2);
    pub const DELETE: Methods = Methods(4);

    /// Both sets.
    pub const fn and(self, other: Methods) -> Methods {
        Methods(self.0 | other.0)
    }

    fn allows(self, method: &str) -> bool {
        let bit = match method {
            "GET" | "HEAD" => Self::READ,
            "POST" => Self::POST,
            "DELETE" => Self::DELETE,
            _ => return false,
        };
        self.0 & bit.0 != 0
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> String {
        [
            (Self::READ, "GET, HEAD"),
            (Self::POST, "POST"),
            (Self::DELETE, "DELETE"),
        ]
        .iter()
        .filter(|(m, _)| self.0 & m.0 != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Exact,
    /// The path is a prefix, followed by a non-empty rest.
    Prefix,
    /// A prefix that only `POST`s reach, and only when nothing else matched: other
    /// methods on such a path are 404, not 405 (the path is not known to exist).
    PostFallback,
}

struct Entry<R> {
    path: &'static str,
    matching: Match,
    methods: Methods,
    route: R,
}

/// A listener's routes, built once at start-up.
pub struct Routes<R> {
    entries: Vec<Entry<R>>,
}

/// A matched route; `rest` is what followed a prefix route's prefix (empty otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'p, R> {
    pub route: R,
    pub rest: &'p str,
}

impl<R: Copy> Default for Routes<R> {
    fn default() -> Self {
        Routes {
            entries: Vec::new(),
        }
    }
}

impl<R: Copy> Routes<R> {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, path: &'static str, matching: Match, methods: Methods, route: R) -> Self {
        self.entries.push(Entry {
            path,
            matching,
            methods,
            route,
        });
        self
    }

    /// `GET`/`HEAD` `path`.
    pub fn read(self, path: &'static str, route: R) -> Self {
        self.add(path, Match::Exact, Methods::READ, route)
    }

    /// `POST` `path`.
    pub fn post(self, path: &'static str, route: R) -> Self {
        self.add(path, Match::Exact, Methods::POST, route)
    }

    /// `GET`/`HEAD` `prefix` + a non-empty rest (which may contain `/`).
    pub fn read_under(self, prefix: &'static str, route: R) -> Self {
        self.add(prefix, Match::Prefix, Methods::READ, route)
    }

    /// `methods` on `prefix` + a non-empty rest.
    pub fn under(self, prefix: &'static str, methods: Methods, route: R) -> Self {
        self.add(prefix, Match::Prefix, methods, route)
    }

    /// `POST` on any path under `prefix` that no other route matches.
    pub fn post_fallback(self, prefix: &'static str, route: R) -> Self {
        self.add(prefix, Match::PostFallback, Methods::POST, route)
    }

    /// The route for `method` and `path`; exact paths win over prefixes, prefixes over
    /// fallbacks.
    pub fn resolve<'p>(&self, method: &str, path: &'p str) -> Result<Found<'p, R>, ApiError> {
        let under = |e: &&Entry<R>| {
            let rest = path.strip_prefix(e.path)?;
            (!rest.is_empty()).then_some(rest)
        };
        let found = self
            .entries
            .iter()
            .find(|e| e.matching == Match::Exact && e.path == path)
            .map(|e| (e, ""))
            .or_else(|| {
                self.entries
                    .iter()
                    .filter(|e| e.matching == Match::Prefix)
                    .find_map(|e| Some((e, under(&e)?)))
            })
            .or_else(|| {
                self.entries
                    .iter()
                    .filter(|e| e.matching == Match::PostFallback && method == "POST")
                    .find_map(|e| Some((e, under(&e)?)))
            });
        let Some((entry, rest)) = found else {
            return Err(ApiError::path_not_found(path));
        };
        if !entry.methods.allows(method) {
            return Err(ApiError::method_not_allowed(
                method,
                path,
                entry.methods.allow(),
            ));
        }
        Ok(Found {
            route: entry.route,
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum R {
        Health,
        Model,
        Chat,
        Stored,
        Other,
    }

    fn table() -> Routes<R> {
        Routes::new()
            .read("/health", R::Health)
            .read_under("/v1/models/", R::Model)
            .post("/v1/chat/completions", R::Chat)
            .under(
                "/v1/responses/",
                Methods::READ.and(Methods::DELETE).and(Methods::POST),
                R::Stored,
            )
            .post_fallback("/v1/", R::Other)
    }

    fn allow(e: &crate::http::ApiError) -> Option<&str> {
        e.headers
            .iter()
            .find(|(k, _)| *k == "allow")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn exact_prefix_404_and_405() {
        let t = table();
        assert_eq!(t.resolve("HEAD", "/health").unwrap().route, R::Health);
        let m = t.resolve("GET", "/v1/models/Qwen/Qwen3-0.6B").unwrap();
        assert_eq!((m.route, m.rest), (R::Model, "Qwen/Qwen3-0.6B"));
        for detour in ["/v1/models/", "//health", "/health/", "/v1/%2e%2e/health"] {
            assert_eq!(
                t.resolve("GET", detour).unwrap_err().status,
                404,
                "{detour}"
            );
        }
        let e = t.resolve("GET", "/v1/chat/completions").unwrap_err();
        assert_eq!((e.status.as_u16(), allow(&e)), (405, Some("POST")));
        let e = t.resolve("POST", "/health").unwrap_err();
        assert_eq!((e.status.as_u16(), allow(&e)), (405, Some("GET, HEAD")));
        let e = t.resolve("PUT", "/v1/responses/r1").unwrap_err();
        assert_eq!(
            (e.status.as_u16(), allow(&e)),
            (405, Some("GET, HEAD, POST, DELETE"))
        );
        assert_eq!(t.resolve("DELETE", "/v1/responses/r1").unwrap().rest, "r1");
    }

    #[test]
    fn a_post_fallback_catches_only_unmatched_posts() {
        let t = table();
        let f = t.resolve("POST", "/v1/audio/speech").unwrap();
        assert_eq!((f.route, f.rest), (R::Other, "audio/speech"));
        // Known paths keep their routes and their 405s.
        assert_eq!(
            t.resolve("POST", "/v1/chat/completions").unwrap().route,
            R::Chat
        );
        assert_eq!(t.resolve("POST", "/v1/models/x").unwrap_err().status, 405);
        // Other methods on an unknown path: 404, not 405.
        assert_eq!(
            t.resolve("GET", "/v1/audio/speech").unwrap_err().status,
            404
        );
        assert_eq!(t.resolve("POST", "/v2/x").unwrap_err().status, 404);
        assert_eq!(t.resolve("POST", "/v1/").unwrap_err().status, 404);
    }
}

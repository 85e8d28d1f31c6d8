//! The route table type every listener uses (the public port, the admin listener, the
//! embedding service): method + path → the listener's own route, 404 for an unknown path,
//! 405 with `Allow` for a known path and the wrong method.
//!
//! Paths match exactly: no normalisation (`//v1/models`, `/a/../metrics`, `%2e%2e` and a
//! trailing slash are other paths), so no route is reached by a detour. A prefix route
//! (`/v1/models/{id}`) hands the rest of the path to the caller.

use super::error::ApiError;

/// The methods a path accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET` and `HEAD`.
    Read,
    Post,
}

impl Methods {
    fn allows(self, method: &str) -> bool {
        match self {
            Methods::Read => method == "GET" || method == "HEAD",
            Methods::Post => method == "POST",
        }
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> &'static str {
        match self {
            Methods::Read => "GET, HEAD",
            Methods::Post => "POST",
        }
    }
}

struct Entry<R> {
    path: &'static str,
    /// The path is a prefix, followed by a non-empty rest.
    prefix: bool,
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

    fn add(mut self, path: &'static str, prefix: bool, methods: Methods, route: R) -> Self {
        self.entries.push(Entry {
            path,
            prefix,
            methods,
            route,
        });
        self
    }

    /// `GET`/`HEAD` `path`.
    pub fn read(self, path: &'static str, route: R) -> Self {
        self.add(path, false, Methods::Read, route)
    }

    /// `POST` `path`.
    pub fn post(self, path: &'static str, route: R) -> Self {
        self.add(path, false, Methods::Post, route)
    }

    /// `GET`/`HEAD` `prefix` + a non-empty rest (which may contain `/`).
    pub fn read_under(self, prefix: &'static str, route: R) -> Self {
        self.add(prefix, true, Methods::Read, route)
    }

    /// The route for `method` and `path`; exact paths win over prefixes.
    pub fn resolve<'p>(&self, method: &str, path: &'p str) -> Result<Found<'p, R>, ApiError> {
        let exact = self.entries.iter().find(|e| !e.prefix && e.path == path);
        let (entry, rest) = match exact {
            Some(e) => (e, ""),
            None => self
                .entries
                .iter()
                .filter(|e| e.prefix)
                .find_map(|e| {
                    let rest = path.strip_prefix(e.path)?;
                    (!rest.is_empty()).then_some((e, rest))
                })
                .ok_or_else(|| ApiError::path_not_found(path))?,
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
    }

    fn table() -> Routes<R> {
        Routes::new()
            .read("/health", R::Health)
            .read_under("/v1/models/", R::Model)
            .post("/v1/chat/completions", R::Chat)
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
    }
}

//! Which Hub request a path is. The cache answers the few a download client makes (repo
//! info, tree, paths-info, `resolve`); everything else on the Hub (pages, login, uploads, git
//! over HTTPS, spaces) is [`Route::Relay`]: passed upstream unchanged.

use http::Method;

use super::repo::{decode, valid_path, valid_revision, Kind, RepoId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/{models,datasets}/{repo}[/revision/{rev}]`.
    Info {
        repo: RepoId,
        rev: String,
    },
    /// `GET /api/{...}/{repo}/tree/{rev}[/{path}]`; `path` may be empty.
    Tree {
        repo: RepoId,
        rev: String,
        path: String,
    },
    /// `POST /api/{...}/{repo}/paths-info/{rev}`.
    PathsInfo {
        repo: RepoId,
        rev: String,
    },
    /// `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}`.
    Resolve {
        repo: RepoId,
        rev: String,
        path: String,
    },
    Relay,
}

const OPS: [&str; 3] = ["revision", "tree", "paths-info"];

/// `path` is the request path with any `/hf` prefix removed, still percent-encoded.
pub fn parse(method: &Method, path: &str) -> Route {
    parse_inner(method, path).unwrap_or(Route::Relay)
}

fn parse_inner(method: &Method, path: &str) -> Option<Route> {
    let get = method == Method::GET || method == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = if let Some(r) = rest.strip_prefix("models/") {
            (Kind::Model, r)
        } else {
            (Kind::Dataset, rest.strip_prefix("datasets/")?)
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let n = if segs.len() >= 2 && !OPS.contains(&segs[1]) {
            2
        } else {
            1
        };
        let repo = RepoId::new(kind, &segs[..n.min(segs.len())].join("/")).ok()?;
        let tail = &segs[n.min(segs.len())..];
        let rev = |parts: &[&str]| -> Option<String> {
            let r = decode(&parts.join("/")).ok()?;
            valid_revision(&r).then_some(r)
        };
        return match tail {
            [] if get => Some(Route::Info {
                repo,
                rev: "main".into(),
            }),
            ["revision", r @ ..] if get && !r.is_empty() => {
                Some(Route::Info { repo, rev: rev(r)? })
            }
            ["tree", r, p @ ..] if get => {
                let path = decode(&p.join("/")).ok()?;
                let path = path.trim_end_matches('/').to_string();
                if !path.is_empty() && !valid_path(&path) {
                    return None;
                }
                Some(Route::Tree {
                    repo,
                    rev: rev(&[r])?,
                    path,
                })
            }
            ["paths-info", r @ ..] if method == Method::POST && !r.is_empty() => {
                Some(Route::PathsInfo { repo, rev: rev(r)? })
            }
            _ => None,
        };
    }
    if !get {
        return None;
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (Kind::Dataset, r),
        None => (Kind::Model, path.strip_prefix('/')?),
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let at = (1..=2).find(|&i| segs.get(i) == Some(&"resolve"))?;
    if segs.len() < at + 3 {
        return None;
    }
    let repo = RepoId::new(kind, &segs[..at].join("/")).ok()?;
    let rev = decode(segs[at + 1]).ok()?;
    let file = decode(&segs[at + 2..].join("/")).ok()?;
    (valid_revision(&rev) && valid_path(&file)).then_some(Route::Resolve {
        repo,
        rev,
        path: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> RepoId {
        RepoId::new(Kind::Model, id).unwrap()
    }

    #[test]
    fn the_client_requests_and_nothing_else() {
        let g = Method::GET;
        assert_eq!(
            parse(&g, "/api/models/o/n"),
            Route::Info {
                repo: m("o/n"),
                rev: "main".into()
            }
        );
        assert_eq!(
            parse(&g, "/api/models/o/n/revision/refs%2Fpr%2F1"),
            Route::Info {
                repo: m("o/n"),
                rev: "refs/pr/1".into()
            }
        );
        assert_eq!(
            parse(&g, "/api/models/gpt2/revision/main"),
            Route::Info {
                repo: m("gpt2"),
                rev: "main".into()
            }
        );
        assert_eq!(
            parse(&g, "/api/datasets/o/d/tree/main/sub/dir"),
            Route::Tree {
                repo: RepoId::new(Kind::Dataset, "o/d").unwrap(),
                rev: "main".into(),
                path: "sub/dir".into()
            }
        );
        assert_eq!(
            parse(&Method::POST, "/api/models/o/n/paths-info/abc"),
            Route::PathsInfo {
                repo: m("o/n"),
                rev: "abc".into()
            }
        );
        assert_eq!(
            parse(&Method::HEAD, "/o/n/resolve/main/d/a%20b.bin"),
            Route::Resolve {
                repo: m("o/n"),
                rev: "main".into(),
                path: "d/a b.bin".into()
            }
        );
        for relayed in [
            "/",
            "/o/n",
            "/o/n/blob/main/x",
            "/api/whoami-v2",
            "/api/models/o/n/xet-read-token/main",
            "/o/n/resolve/main/..%2Fx",
            "/o/n/resolve/main/",
            "/spaces/o/s/resolve/main/x",
        ] {
            assert_eq!(parse(&g, relayed), Route::Relay, "{relayed}");
        }
        assert_eq!(parse(&Method::POST, "/o/n/resolve/main/x"), Route::Relay);
    }
}

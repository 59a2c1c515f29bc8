//! Docker Registry v2 token scopes: `repository:NAME:pull,push`.

use serde::Serialize;

/// One `access` entry of a registry token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Parses one scope. The name may itself hold ':' (never in our names,
/// but a registry host:port could appear), so the type ends at the first
/// ':' and the actions start after the last.
pub fn parse(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let mut list: Vec<String> = Vec::new();
    for a in actions.split(',').filter(|a| !a.is_empty()) {
        let a = a.to_string();
        if !list.contains(&a) {
            list.push(a);
        }
    }
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: list,
    })
}

/// Every scope of the request: repeated `scope` parameters, each possibly
/// holding several space-separated scopes.
pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Access>, String> {
    let mut out = Vec::new();
    for v in values {
        for s in v.split(' ').filter(|s| !s.is_empty()) {
            out.push(
                parse(s)
                    .ok_or_else(|| format!("malformed scope {s:?} (want type:name:actions)"))?,
            );
        }
    }
    Ok(out)
}

/// Splits a raw query string into decoded pairs.
pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        let a = parse("repository:team/web:pull,push").unwrap();
        assert_eq!(a.kind, "repository");
        assert_eq!(a.name, "team/web");
        assert_eq!(a.actions, vec!["pull", "push"]);
        assert_eq!(parse("registry:catalog:*").unwrap().actions, vec!["*"]);
        assert_eq!(parse("repository:h:5000/x:pull").unwrap().name, "h:5000/x");
        assert_eq!(
            parse("repository:a:pull,pull").unwrap().actions,
            vec!["pull"]
        );
        assert!(parse("nonsense").is_none());
        assert!(parse("repository::pull").is_none());
        let all = parse_all([
            "repository:a/b:pull repository:c/d:push",
            "repository:e/f:pull",
        ])
        .unwrap();
        assert_eq!(all.len(), 3);
        assert!(parse_all(["bad"]).is_err());
    }

    #[test]
    fn decodes_queries() {
        let q =
            query_pairs("service=reg&scope=repository%3Ateam%2Fweb%3Apull%2Cpush&x=%zz&y=a+b&z=%4");
        assert_eq!(q[0], ("service".into(), "reg".into()));
        assert_eq!(q[1].1, "repository:team/web:pull,push");
        assert_eq!(q[2].1, "%zz");
        assert_eq!(q[3].1, "a b");
        assert_eq!(q[4].1, "%4");
    }
}

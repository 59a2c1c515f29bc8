//! What a change in etcd means for a running nginx. The rendered file is the
//! judge: a config write that renders the same text (a re-put, a reordered
//! JSON object) costs nothing, and since files never name peers an upstream
//! write can never require a reload.

use std::collections::BTreeMap;

use crate::model::Upstream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing nginx would notice.
    None,
    /// Push the peers to the shared dict; no reload.
    UpstreamOnly,
    /// Push the lua router's route (and maybe peers); no reload.
    Route,
    /// The domain file changes (added, edited or removed): test and reload.
    Config,
}

/// One domain before and after: its rendered file and its peers.
pub fn classify(
    old_file: Option<&str>,
    new_file: Option<&str>,
    old_up: Option<&Upstream>,
    new_up: Option<&Upstream>,
) -> Change {
    if old_file != new_file {
        Change::Config
    } else if old_up != new_up {
        Change::UpstreamOnly
    } else {
        Change::None
    }
}

/// Domains whose file must be written (`Some`) or deleted (`None`) to turn
/// `applied` into `desired`.
pub fn file_changes(
    applied: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for (d, text) in desired {
        if applied.get(d) != Some(text) {
            out.insert(d.clone(), Some(text.clone()));
        }
    }
    for d in applied.keys() {
        if !desired.contains_key(d) {
            out.insert(d.clone(), None);
        }
    }
    out
}

/// Upserts (`Some`) and removals (`None`) that bring `pushed` to `desired`.
pub fn upstream_changes<'a>(
    pushed: &BTreeMap<String, Upstream>,
    desired: &'a BTreeMap<String, Upstream>,
) -> Vec<(String, Option<&'a Upstream>)> {
    let mut out = Vec::new();
    for (d, up) in desired {
        if pushed.get(d) != Some(up) {
            out.push((d.clone(), Some(up)));
        }
    }
    for d in pushed.keys() {
        if !desired.contains_key(d) {
            out.push((d.clone(), None));
        }
    }
    out
}

/// `applied` with `changes` applied.
pub fn apply_file_changes(
    applied: &BTreeMap<String, String>,
    changes: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, String> {
    let mut out = applied.clone();
    for (d, c) in changes {
        match c {
            Some(text) => out.insert(d.clone(), text.clone()),
            None => out.remove(d),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Server;

    fn up(port: u16) -> Upstream {
        Upstream {
            servers: vec![Server::new(([10, 0, 0, 1], port).into())],
            ..Default::default()
        }
    }

    #[test]
    fn classification() {
        let (a, b) = (up(1), up(2));
        assert_eq!(
            classify(Some("f"), Some("f"), Some(&a), Some(&b)),
            Change::UpstreamOnly
        );
        assert_eq!(
            classify(Some("f"), Some("g"), Some(&a), Some(&b)),
            Change::Config
        );
        assert_eq!(
            classify(Some("f"), Some("g"), Some(&a), Some(&a)),
            Change::Config
        );
        assert_eq!(classify(None, Some("g"), None, None), Change::Config);
        assert_eq!(classify(Some("f"), None, Some(&a), None), Change::Config);
        assert_eq!(
            classify(Some("f"), Some("f"), Some(&a), Some(&a)),
            Change::None
        );
        assert_eq!(classify(None, None, None, Some(&a)), Change::UpstreamOnly);
    }

    #[test]
    fn file_diff_and_apply() {
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let applied = m(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let desired = m(&[("a", "1"), ("b", "2"), ("d", "1")]);
        let ch = file_changes(&applied, &desired);
        assert_eq!(ch.len(), 3);
        assert_eq!(ch["b"], Some("2".into()));
        assert_eq!(ch["c"], None);
        assert_eq!(ch["d"], Some("1".into()));
        assert_eq!(apply_file_changes(&applied, &ch), desired);
    }

    #[test]
    fn upstream_diff() {
        let pushed: BTreeMap<_, _> = [("a".to_string(), up(1)), ("b".to_string(), up(1))].into();
        let desired: BTreeMap<_, _> = [("a".to_string(), up(1)), ("c".to_string(), up(2))].into();
        let ch = upstream_changes(&pushed, &desired);
        assert_eq!(
            ch,
            vec![("c".to_string(), Some(&up(2))), ("b".to_string(), None)]
        );
    }
}

//! What users configure in DNS for a domain served by an nginx group: a
//! CNAME target and/or VIPs, set by admins on the group
//! (`/slb/{group}/dns`). The original told users "point your domain at
//! this group"; apps show it next to their LB.

use std::net::IpAddr;

use axum::http::StatusCode;
use leengine_store::{keys, record};
use serde::{Deserialize, Serialize};

use super::SlbState;
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};

/// Most VIPs one group announces (a record set, not an address pool).
pub const MAX_VIPS: usize = 16;

/// `/slb/{group}/dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDns {
    /// The name a user's domain is a CNAME of.
    #[serde(default)]
    pub cname: Option<String>,
    /// Addresses for A/AAAA records, when a CNAME is not possible (apex).
    #[serde(default)]
    pub vips: Vec<IpAddr>,
}

/// A DNS host name: labels of letters, digits and inner hyphens, at most
/// 63 bytes each and 253 in all, not all-numeric at the top (RFC 1123).
pub fn valid_dns_name(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    crate::apps::valid_domain(d)
        && !d
            .rsplit('.')
            .next()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
}

/// The rules of a group's DNS record: at least one of the two, a valid
/// name, unicast addresses (no loopback, unspecified or multicast), none twice.
pub fn check(d: &GroupDns) -> Result<(), ApiError> {
    if d.cname.is_none() && d.vips.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_dns",
            "set a cname, vips or both (DELETE removes the record)",
        ));
    }
    if let Some(c) = &d.cname {
        if !valid_dns_name(c) {
            return Err(ApiError::bad_request(
                "invalid_cname",
                format!("{c:?} is not a lower-case DNS name"),
            ));
        }
    }
    if d.vips.len() > MAX_VIPS {
        return Err(ApiError::bad_request(
            "invalid_vip",
            format!("a group has at most {MAX_VIPS} VIPs"),
        ));
    }
    for (i, ip) in d.vips.iter().enumerate() {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return Err(ApiError::bad_request(
                "invalid_vip",
                format!("{ip} is not a unicast service address"),
            ));
        }
        if d.vips[..i].contains(ip) {
            return Err(ApiError::bad_request(
                "invalid_vip",
                format!("{ip} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The group's record, if an admin set one.
pub async fn read(etcd: &etcd_client::Client, group: &str) -> Result<Option<GroupDns>, ApiError> {
    Ok(
        record::get_json::<GroupDns>(etcd, &keys::slb_group_dns(group))
            .await?
            .map(|r| r.value),
    )
}

fn dns_missing(group: &str) -> ApiError {
    ApiError::not_found("dns_not_found", format!("group {group} has no DNS record"))
}

pub(super) async fn show(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
) -> Result<Json<GroupDns>, ApiError> {
    super::api::check_group(&group)?;
    read(&st.etcd, &group)
        .await?
        .map(Json)
        .ok_or_else(|| dns_missing(&group))
}

pub(super) async fn set(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
    Json(body): Json<GroupDns>,
) -> Result<Json<GroupDns>, ApiError> {
    super::api::require_admin(&caller)?;
    super::api::check_group(&group)?;
    check(&body)?;
    // No compare: the last admin's record wins, and the transaction applies.
    let _ = record::commit(
        &st.etcd,
        vec![],
        vec![record::put(keys::slb_group_dns(&group), &body)],
    )
    .await?;
    tracing::info!(user = %caller.user, group = %group, "slb group dns set");
    Ok(Json(body))
}

pub(super) async fn remove(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::api::require_admin(&caller)?;
    super::api::check_group(&group)?;
    let k = keys::slb_group_dns(&group);
    let done = record::commit(
        &st.etcd,
        vec![record::present(&k)],
        vec![record::delete(k.as_str())],
    )
    .await?;
    if !done.applied() {
        return Err(dns_missing(&group));
    }
    tracing::info!(user = %caller.user, group = %group, "slb group dns removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(cname: Option<&str>, vips: &[&str]) -> GroupDns {
        GroupDns {
            cname: cname.map(str::to_string),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        }
    }

    fn code(d: GroupDns) -> &'static str {
        check(&d).map(|_| "ok").unwrap_or_else(|e| e.code)
    }

    #[test]
    fn a_record_needs_a_cname_or_a_vip() {
        assert_eq!(code(dns(None, &[])), "invalid_dns");
        assert_eq!(code(dns(Some("lb.example.com"), &[])), "ok");
        assert_eq!(code(dns(None, &["10.0.0.5", "2001:db8::5"])), "ok");
    }

    #[test]
    fn a_cname_is_a_dns_name() {
        assert_eq!(code(dns(Some("lb.example.com."), &[])), "ok");
        for bad in [
            "",
            "LB.example.com",
            "-a.example",
            "a..b",
            "a_b.c",
            "10.0.0.1",
            "a b",
        ] {
            assert_eq!(code(dns(Some(bad), &[])), "invalid_cname", "{bad:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(code(dns(Some(&long), &[])), "invalid_cname");
    }

    #[test]
    fn vips_are_unicast_and_listed_once() {
        for bad in ["127.0.0.1", "0.0.0.0", "224.0.0.1", "::1"] {
            assert_eq!(code(dns(None, &[bad])), "invalid_vip", "{bad}");
        }
        assert_eq!(code(dns(None, &["10.0.0.5", "10.0.0.5"])), "invalid_vip");
        let many: Vec<String> = (1..=17).map(|i| format!("10.0.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(code(dns(None, &many)), "invalid_vip");
    }
}

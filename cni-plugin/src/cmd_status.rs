//! STATUS (CNI 1.1): can this plugin serve an ADD right now?

use crate::backend::Sessions;
use crate::config::NetConf;
use crate::error::{CniError, CniResult, NOT_AVAILABLE};

pub async fn status(conf: &NetConf, s: &Sessions) -> CniResult<()> {
    let unavailable = |what: String| CniError::new(NOT_AVAILABLE, what);
    let (ovs, ipam) = tokio::join!(s.ovs(conf), s.ipam(conf));
    let ovs = ovs.map_err(|e| unavailable(format!("OVSDB {}: {}", conf.ovsdb, e.msg)))?;
    let ipam = ipam.map_err(|e| unavailable(format!("etcd: {}", e.msg)))?;
    let (bridge, pools) = tokio::join!(ovs.bridge_exists(&conf.bridge), ipam.list_pools());
    match bridge {
        Ok(true) => {}
        Ok(false) => {
            return Err(unavailable(format!(
                "OVS bridge {} does not exist",
                conf.bridge
            )))
        }
        Err(e) => return Err(unavailable(format!("OVSDB {}: {e}", conf.ovsdb))),
    }
    match pools {
        Ok(p) if p.is_empty() => Err(unavailable("no IP pool is defined in etcd".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(unavailable(format!("etcd: {e}"))),
    }
}

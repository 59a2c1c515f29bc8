//! Gratuitous ARPs after the first: sent by a short-lived detached copy of
//! this binary, so ADD returns as soon as the pod is reachable instead of
//! sleeping `count × interval` while the runtime waits.

use leengine_netdp::{format_mac, parse_mac, send_garp, GarpSpec, NetnsFile};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// argv[1] that turns the binary into the follow-up sender.
pub const ARG: &str = "--garp-follow-up";

/// Starts the sender for `spec.count` more announcements, the first one
/// `spec.interval` from now. Its stdio is /dev/null, so the runtime reading
/// our stdout never waits for it.
pub fn spawn(netns: &Path, spec: &GarpSpec) -> std::io::Result<()> {
    Command::new("/proc/self/exe")
        .arg(ARG)
        .arg(netns)
        .arg(&spec.ifname)
        .arg(format_mac(&spec.mac))
        .arg(spec.ip.to_string())
        .arg(spec.count.to_string())
        .arg(spec.interval.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
}

/// Entry point of the follow-up process (`args` after [`ARG`]). Errors are
/// only logged: the pod may be gone already, which is fine.
pub fn run(args: &[String]) -> i32 {
    let [netns, ifname, mac, ip, count, interval_ms] = args else {
        tracing::error!(?args, "bad garp follow-up arguments");
        return 2;
    };
    let (Some(mac), Ok(ip), Ok(count), Ok(ms)) = (
        parse_mac(mac),
        ip.parse::<Ipv4Addr>(),
        count.parse::<u32>(),
        interval_ms.parse::<u64>(),
    ) else {
        tracing::error!(?args, "bad garp follow-up arguments");
        return 2;
    };
    let interval = Duration::from_millis(ms);
    std::thread::sleep(interval);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    let spec = GarpSpec {
        ifname: ifname.clone(),
        mac,
        ip,
        count,
        interval,
    };
    let sent = rt.block_on(async {
        let ns = NetnsFile::open(Path::new(netns))?;
        send_garp(&ns, spec).await
    });
    match sent {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(error = %e, "garp follow-up stopped");
            1
        }
    }
}

//! The gratuitous ARPs of a new attachment: sent once ovs-vswitchd has
//! brought the port up — by a short-lived detached copy of this binary, or
//! by a task of the node-agent's warm CNI service — so ADD
//! neither waits for the port (a wait that grows with the number of ports
//! on the userspace datapath) nor sleeps `count × interval` while the
//! runtime waits.

use crate::backend;
use leengine_netdp::{format_mac, parse_mac, send_garp, GarpSpec, NetnsFile};
use leengine_ovsdb::Client as Ovs;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// argv[1] that turns the binary into the follow-up sender.
pub const ARG: &str = "--garp-follow-up";

/// The OVS port whose bring-up the announcements wait for.
#[derive(Debug)]
pub struct Port<'a> {
    pub ovsdb: &'a str,
    pub name: &'a str,
}

/// Starts the sender of `spec.count` announcements, the first as soon as
/// `port` has an OpenFlow port number. Its stdio is /dev/null, so the
/// runtime reading our stdout never waits for it.
///
/// A plain fork: `Command::spawn` (posix_spawn, or fork with an exec-status
/// pipe) blocks until the child has exec'd, which on a loaded node means
/// waiting for the child to be scheduled, on ADD's critical path. Only the
/// exec can fail unseen then, and it is this very binary.
pub fn spawn(netns: &Path, port: &Port<'_>, spec: &GarpSpec) -> std::io::Result<()> {
    let args = [
        ARG.as_bytes().to_vec(),
        netns.as_os_str().as_bytes().to_vec(),
        spec.ifname.clone().into_bytes(),
        format_mac(&spec.mac).into_bytes(),
        spec.ip.to_string().into_bytes(),
        spec.count.to_string().into_bytes(),
        spec.interval.as_millis().to_string().into_bytes(),
        port.ovsdb.as_bytes().to_vec(),
        port.name.as_bytes().to_vec(),
    ];
    let exe = CString::new("/proc/self/exe")?;
    let args = std::iter::once(Ok(exe.clone()))
        .chain(args.into_iter().map(CString::new))
        .collect::<Result<Vec<_>, _>>()?;
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null = null.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (dup2,
    // execv, _exit) on memory prepared before the fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: as above; `argv` is NULL-terminated and outlives the call.
            unsafe {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                libc::execv(exe.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            }
        }
        _ => Ok(()),
    }
}

/// Entry point of the follow-up process (`args` after [`ARG`]). Errors are
/// only logged: the pod (or its port) may be gone already, which is fine;
/// a port that never comes up is CHECK's to report.
pub fn run(args: &[String]) -> i32 {
    let [netns, ifname, mac, ip, count, interval_ms, ovsdb, port] = args else {
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
        interval: Duration::from_millis(ms),
    };
    let sent = rt.block_on(async {
        let ovs = backend::ovs_at(ovsdb).await.map_err(|e| e.msg)?;
        let ns = NetnsFile::open(Path::new(netns)).map_err(|e| e.to_string())?;
        follow(&ovs, port, &ns, spec).await
    });
    match sent {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(error = %e, "garp follow-up stopped");
            1
        }
    }
}

/// Waits for ovs-vswitchd to give `port` its OpenFlow number, then sends
/// the announcements into the pod's namespace `ns`.
pub async fn follow(ovs: &Ovs, port: &str, ns: &NetnsFile, spec: GarpSpec) -> Result<(), String> {
    ovs.wait_ofport(port, backend::OFPORT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    send_garp(ns, spec).await.map_err(|e| e.to_string())
}

//! Container cgroups: discovery, counters and the swap guard, for cgroup v1
//! (one hierarchy per controller) and v2 (unified). File parsing is pure.

use std::path::{Path, PathBuf};

/// Which cgroup layout the host uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

/// Memory limit values at or above this mean "no limit" (v1 prints
/// `PAGE_COUNTER_MAX * PAGE_SIZE`, about 2^63).
const UNLIMITED: u64 = 1 << 62;

pub fn detect(root: &Path) -> Layout {
    if root.join("cgroup.controllers").exists() {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// Where container runtimes put containers: cgroupfs driver (`docker`,
/// `kubepods`) and systemd driver (`kubepods.slice/…/cri-containerd-ID.scope`,
/// `system.slice/docker-ID.scope` — a `*` in the last segment of a root
/// matches within that segment, since `system.slice` itself holds services).
pub const DEFAULT_CONTAINER_ROOTS: &[&str] = &[
    "docker",
    "kubepods",
    "kubepods.slice",
    "system.slice/docker-*.scope",
];

/// A container: a leaf cgroup below one of the configured roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Path relative to a controller's mount, e.g. `docker/3f2a...`.
    pub rel: String,
    /// Last path segment; the metrics label.
    pub name: String,
}

/// Counters read from one container's cgroup files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub io_read_ops: Option<u64>,
    pub io_write_ops: Option<u64>,
    /// Usage minus inactive page cache (what the OOM killer looks at).
    pub working_set: Option<u64>,
    /// Swap charged to the container (v1 needs swap accounting).
    pub swap_bytes: Option<u64>,
    pub pids: Vec<i32>,
}

/// Where each controller lives.
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    layout: Layout,
}

impl Cgroups {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            layout: detect(root),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        match self.layout {
            Layout::V2 => self.root.join(rel),
            Layout::V1 => {
                let c = self.root.join(controller);
                // cpu and cpuacct are often co-mounted as "cpu,cpuacct".
                if !c.exists() && controller == "cpuacct" {
                    return self.root.join("cpu,cpuacct").join(rel);
                }
                c.join(rel)
            }
        }
    }

    /// Leaf directories below each `roots` entry (missing roots are skipped;
    /// a root whose last segment has a `*` stands for every directory it matches).
    pub fn containers(&self, roots: &[String]) -> Vec<Container> {
        let mut out = Vec::new();
        for r in roots {
            for r in self.expand(r.trim_matches('/')) {
                let base = self.dir("memory", &r);
                if base.is_dir() {
                    collect_leaves(&base, &r, &mut out);
                }
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        out.dedup();
        out
    }

    fn expand(&self, root: &str) -> Vec<String> {
        let (parent, last) = match root.rsplit_once('/') {
            Some((p, l)) => (Some(p), l),
            None => (None, root),
        };
        let Some((head, tail)) = last.split_once('*') else {
            return vec![root.to_string()];
        };
        let Ok(entries) = std::fs::read_dir(self.dir("memory", parent.unwrap_or(""))) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
            })
            .map(|n| match parent {
                Some(p) => format!("{p}/{n}"),
                None => n,
            })
            .collect();
        out.sort();
        out
    }

    pub fn usage(&self, c: &Container) -> Usage {
        let read =
            |controller: &str, file: &str| read_opt(&self.dir(controller, &c.rel).join(file));
        let pids = read("memory", "cgroup.procs")
            .map(|t| parse_pids(&t))
            .unwrap_or_default();
        match self.layout {
            Layout::V1 => {
                let io = read("blkio", "blkio.throttle.io_service_bytes_recursive")
                    .or_else(|| read("blkio", "blkio.io_service_bytes_recursive"))
                    .map(|t| parse_blkio_v1(&t));
                let ops = read("blkio", "blkio.throttle.io_serviced_recursive")
                    .or_else(|| read("blkio", "blkio.io_serviced_recursive"))
                    .map(|t| parse_blkio_v1(&t));
                let memory = read("memory", "memory.usage_in_bytes").and_then(|t| parse_u64(&t));
                let stat = read("memory", "memory.stat").unwrap_or_default();
                Usage {
                    cpu_ns: read("cpuacct", "cpuacct.usage").and_then(|t| parse_u64(&t)),
                    working_set: working_set(memory, parse_keyed(&stat, "total_inactive_file")),
                    swap_bytes: parse_keyed(&stat, "total_swap"),
                    io_read_ops: ops.map(|x| x.0),
                    io_write_ops: ops.map(|x| x.1),
                    memory_bytes: memory,
                    memory_limit: read("memory", "memory.limit_in_bytes")
                        .and_then(|t| parse_u64(&t))
                        .filter(|l| *l < UNLIMITED),
                    io_read_bytes: io.map(|x| x.0),
                    io_write_bytes: io.map(|x| x.1),
                    pids,
                }
            }
            Layout::V2 => {
                let io_stat = read("", "io.stat");
                let io = io_stat.as_deref().map(parse_io_stat_v2);
                let ops = io_stat.as_deref().map(|t| sum_io_stat(t, "rios", "wios"));
                let memory = read("", "memory.current").and_then(|t| parse_u64(&t));
                let stat = read("", "memory.stat").unwrap_or_default();
                Usage {
                    working_set: working_set(memory, parse_keyed(&stat, "inactive_file")),
                    swap_bytes: read("", "memory.swap.current").and_then(|t| parse_u64(&t)),
                    io_read_ops: ops.map(|x| x.0),
                    io_write_ops: ops.map(|x| x.1),
                    cpu_ns: read("", "cpu.stat")
                        .and_then(|t| parse_keyed(&t, "usage_usec"))
                        .map(|us| us.saturating_mul(1000)),
                    memory_bytes: memory,
                    memory_limit: read("", "memory.max").and_then(|t| parse_u64(&t)),
                    io_read_bytes: io.map(|x| x.0),
                    io_write_bytes: io.map(|x| x.1),
                    pids,
                }
            }
        }
    }

    /// Keeps the container from swapping; returns whether it is constrained
    /// afterwards (read back, not assumed) and the first error if not.
    pub fn guard_swap(&self, c: &Container) -> Result<(), String> {
        match self.layout {
            Layout::V1 => {
                let dir = self.dir("memory", &c.rel);
                let limit =
                    read_opt(&dir.join("memory.limit_in_bytes")).and_then(|t| parse_u64(&t));
                let mut errors = Vec::new();
                for (file, value) in
                    swap_plan_v1(limit, dir.join("memory.memsw.limit_in_bytes").exists())
                {
                    if let Err(e) = std::fs::write(dir.join(file), &value) {
                        errors.push(format!("{file}={value}: {e}"));
                    }
                }
                let swappiness =
                    read_opt(&dir.join("memory.swappiness")).and_then(|t| parse_u64(&t));
                let memsw =
                    read_opt(&dir.join("memory.memsw.limit_in_bytes")).and_then(|t| parse_u64(&t));
                if constrained_v1(limit, memsw, swappiness) {
                    Ok(())
                } else {
                    Err(if errors.is_empty() {
                        "settings did not stick".into()
                    } else {
                        errors.join("; ")
                    })
                }
            }
            Layout::V2 => {
                let file = self.dir("", &c.rel).join("memory.swap.max");
                let written = std::fs::write(&file, "0");
                match read_opt(&file).as_deref().map(str::trim) {
                    Some("0") => Ok(()),
                    _ => Err(match written {
                        Err(e) => format!("memory.swap.max=0: {e}"),
                        Ok(()) => "memory.swap.max did not stick".into(),
                    }),
                }
            }
        }
    }
}

fn collect_leaves(dir: &Path, rel: &str, out: &mut Vec<Container>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut has_child = false;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            has_child = true;
            let name = e.file_name().to_string_lossy().into_owned();
            collect_leaves(&e.path(), &format!("{rel}/{name}"), out);
        }
    }
    if !has_child && rel.contains('/') {
        let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        out.push(Container {
            rel: rel.to_string(),
            name,
        });
    }
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

pub fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// `key value` lines (cpu.stat, memory.stat): the value of `key`.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// blkio `io_service_bytes`: `MAJ:MIN Read N` / `Write N` lines per device
/// (plus a `Total` line) → summed (read, write).
pub fn parse_blkio_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match op {
            "Read" => r = r.saturating_add(n),
            "Write" => w = w.saturating_add(n),
            _ => {}
        }
    }
    (r, w)
}

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N ...` per device → summed (read, write).
pub fn parse_io_stat_v2(text: &str) -> (u64, u64) {
    sum_io_stat(text, "rbytes", "wbytes")
}

/// `io.stat` fields `rk` and `wk` summed over devices.
pub fn sum_io_stat(text: &str, rk: &str, wk: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some((k, v)) = field.split_once('=') {
            let Ok(n) = v.parse::<u64>() else { continue };
            if k == rk {
                r = r.saturating_add(n);
            } else if k == wk {
                w = w.saturating_add(n);
            }
        }
    }
    (r, w)
}

/// cAdvisor's working set: usage without the inactive file cache.
pub fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|u| u.saturating_sub(inactive_file.unwrap_or(0)))
}

/// v1 writes that stop swapping: swappiness 0 always; memory+swap = memory
/// when a memory limit is set (the kernel refuses memsw below the limit, and
/// "equal" means zero swap).
pub fn swap_plan_v1(limit: Option<u64>, memsw_supported: bool) -> Vec<(&'static str, String)> {
    let mut plan = vec![("memory.swappiness", "0".to_string())];
    if let (Some(l), true) = (limit.filter(|l| *l < UNLIMITED), memsw_supported) {
        plan.push(("memory.memsw.limit_in_bytes", l.to_string()));
    }
    plan
}

/// Constrained: with a memory limit, memsw must equal it (hard guarantee)
/// or swappiness be 0; without one only swappiness 0 can help.
pub fn constrained_v1(limit: Option<u64>, memsw: Option<u64>, swappiness: Option<u64>) -> bool {
    let limited = limit.is_some_and(|l| l < UNLIMITED);
    (limited && memsw.is_some() && memsw == limit) || swappiness == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkio_v1_summing_devices() {
        let text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n\
                    8:16 Read 1\n8:16 Write 2\n8:16 Total 3\nTotal 12291\n";
        assert_eq!(parse_blkio_v1(text), (4097, 8194));
        assert_eq!(parse_blkio_v1("Total 0\n"), (0, 0));
    }

    #[test]
    fn parses_io_stat_v2() {
        let text = "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
                    259:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(parse_io_stat_v2(text), (101, 202));
        assert_eq!(sum_io_stat(text, "rios", "wios"), (2, 3));
    }

    #[test]
    fn working_set_leaves_out_inactive_file_cache() {
        assert_eq!(working_set(Some(100), Some(30)), Some(70));
        assert_eq!(working_set(Some(10), Some(30)), Some(0));
        assert_eq!(working_set(Some(10), None), Some(10));
        assert_eq!(working_set(None, Some(1)), None);
    }

    #[test]
    fn parses_keyed_and_pids() {
        assert_eq!(
            parse_keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
        assert_eq!(parse_keyed("usage_usec x\n", "usage_usec"), None);
        assert_eq!(parse_keyed("a 1\n", "usage_usec"), None);
        assert_eq!(parse_pids("12\n34\n\n"), vec![12, 34]);
        assert_eq!(
            parse_u64("9223372036854771712\n"),
            Some(9223372036854771712)
        );
    }

    #[test]
    fn swap_plan_and_verdict() {
        assert_eq!(
            swap_plan_v1(None, true),
            vec![("memory.swappiness", "0".into())]
        );
        assert_eq!(
            swap_plan_v1(Some(9223372036854771712), true).len(),
            1,
            "unlimited memory: memsw cannot help"
        );
        assert_eq!(
            swap_plan_v1(Some(1 << 30), true),
            vec![
                ("memory.swappiness", "0".into()),
                ("memory.memsw.limit_in_bytes", (1u64 << 30).to_string())
            ]
        );
        assert_eq!(swap_plan_v1(Some(1 << 30), false).len(), 1);
        assert!(constrained_v1(Some(100), Some(100), Some(60)));
        assert!(constrained_v1(None, None, Some(0)));
        assert!(!constrained_v1(Some(100), Some(200), Some(60)));
        assert!(!constrained_v1(None, Some(1 << 63), Some(60)));
    }

    #[test]
    fn discovers_leaves_under_roots_v1() {
        let d = tempfile::tempdir().unwrap();
        for p in [
            "memory/docker/aaa",
            "memory/kubepods/burstable/pod1/ccc",
            "memory/kubepods/burstable/pod1/ddd",
            "memory/other/x",
        ] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(
            d.path().join("memory/docker/aaa/memory.usage_in_bytes"),
            "4096\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("memory/docker/aaa/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(d.path().join("memory/docker/aaa/cgroup.procs"), "1\n2\n").unwrap();
        std::fs::create_dir_all(d.path().join("cpuacct/docker/aaa")).unwrap();
        std::fs::write(d.path().join("cpuacct/docker/aaa/cpuacct.usage"), "777\n").unwrap();
        std::fs::create_dir_all(d.path().join("blkio/docker/aaa")).unwrap();
        std::fs::write(
            d.path()
                .join("blkio/docker/aaa/blkio.throttle.io_service_bytes_recursive"),
            "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
        )
        .unwrap();
        let cg = Cgroups::new(d.path());
        assert_eq!(cg.layout(), Layout::V1);
        let names: Vec<_> = cg
            .containers(&["docker".into(), "/kubepods/".into(), "missing".into()])
            .into_iter()
            .map(|c| c.rel)
            .collect();
        assert_eq!(
            names,
            [
                "docker/aaa",
                "kubepods/burstable/pod1/ccc",
                "kubepods/burstable/pod1/ddd"
            ]
        );
        let u = cg.usage(&Container {
            rel: "docker/aaa".into(),
            name: "aaa".into(),
        });
        assert_eq!(u.cpu_ns, Some(777));
        assert_eq!(u.memory_bytes, Some(4096));
        assert_eq!(u.memory_limit, None);
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(5), Some(6)));
        assert_eq!(u.pids, vec![1, 2]);
    }

    #[test]
    fn default_roots_find_systemd_driver_containers() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        for p in [
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaa.scope",
            "kubepods.slice/kubepods-pod2.slice/cri-containerd-bbb.scope",
            "system.slice/docker-ccc.scope",
            "system.slice/sshd.service",
            "user.slice/user-0.slice",
        ] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        let cg = Cgroups::new(d.path());
        let roots: Vec<String> = DEFAULT_CONTAINER_ROOTS
            .iter()
            .map(|r| r.to_string())
            .collect();
        let names: Vec<_> = cg.containers(&roots).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "cri-containerd-aaa.scope",
                "cri-containerd-bbb.scope",
                "docker-ccc.scope"
            ]
        );
        // The guard reaches them: memory.swap.max=0 is written and read back.
        for c in cg.containers(&roots) {
            assert_eq!(cg.guard_swap(&c), Ok(()));
        }
    }

    #[test]
    fn guard_reports_a_container_it_cannot_constrain() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("memory/docker/bad");
        // A dangling link where the file should be: the write fails, even for root.
        std::fs::create_dir_all(&c).unwrap();
        std::os::unix::fs::symlink("/nonexistent-leengine/x", c.join("memory.swappiness")).unwrap();
        std::fs::write(c.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        let cg = Cgroups::new(d.path());
        let ctr = &cg.containers(&["docker".into()])[0];
        let err = cg.guard_swap(ctr).unwrap_err();
        assert!(err.contains("memory.swappiness=0"), "{err}");
        // memsw missing (no swap accounting): swappiness alone constrains.
        let ok = d.path().join("memory/docker/ok");
        std::fs::create_dir_all(&ok).unwrap();
        std::fs::write(ok.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        std::fs::write(ok.join("memory.swappiness"), "60\n").unwrap();
        let ctr = cg
            .containers(&["docker".into()])
            .into_iter()
            .find(|c| c.name == "ok")
            .unwrap();
        assert_eq!(cg.guard_swap(&ctr), Ok(()));
        assert_eq!(
            std::fs::read_to_string(ok.join("memory.swappiness")).unwrap(),
            "0"
        );
    }

    #[test]
    fn reads_v2_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let c = d.path().join("kubepods/pod1/ctr");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("cpu.stat"), "usage_usec 3\nuser_usec 2\n").unwrap();
        std::fs::write(c.join("memory.current"), "10\n").unwrap();
        std::fs::write(c.join("memory.stat"), "anon 6\ninactive_file 4\n").unwrap();
        std::fs::write(c.join("memory.swap.current"), "2\n").unwrap();
        std::fs::write(c.join("memory.max"), "max\n").unwrap();
        std::fs::write(c.join("io.stat"), "8:0 rbytes=7 wbytes=9 rios=1 wios=3\n").unwrap();
        let cg = Cgroups::new(d.path());
        assert_eq!(cg.layout(), Layout::V2);
        let ctr = &cg.containers(&["kubepods".into()])[0];
        assert_eq!(ctr.name, "ctr");
        let u = cg.usage(ctr);
        assert_eq!(u.cpu_ns, Some(3000));
        assert_eq!(u.memory_bytes, Some(10));
        assert_eq!(u.memory_limit, None);
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(7), Some(9)));
        assert_eq!((u.io_read_ops, u.io_write_ops), (Some(1), Some(3)));
        assert_eq!((u.working_set, u.swap_bytes), (Some(6), Some(2)));
        // A plain file accepts the write: the guard reads back "0".
        assert_eq!(cg.guard_swap(ctr), Ok(()));
    }
}

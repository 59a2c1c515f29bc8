//! Test support for LeEngine: the real services, started for one test.
//!
//! Every object starts its service on free loopback ports under a per-run
//! directory (`/tmp/leengine-testenv/run-{pid}-{start}/`), tracks it by PID and
//! stops it on `Drop` (also while a test panics). The first object a test
//! process creates reaps what killed runs left behind: processes, network
//! namespaces and directories of runs whose process is gone.
//!
//! Open vSwitch's userspace datapath creates a tap named `ovs-netdev`, so two
//! `ovs-vswitchd` cannot share a network namespace. [`Ovs`] therefore runs
//! `ovs-vswitchd` inside its own namespace (`Ovs::netns`), which plays the
//! compute node's (or the whole test data centre's) host namespace: bridge
//! internal ports, bond members and the host ends of pod veths live there, and
//! anything that must see them (the CNI plugin, the node-agent) is run inside
//! it with [`Ovs::command`].
//!
//! A missing tool panics with one line naming the Debian package
//! (`hack/deps.sh` installs them all).

mod alertmanager;
mod cell;
mod cgroup;
mod dc;
mod docker;
mod etcd;
mod git;
mod http;
mod image;
mod java;
mod lb;
mod netns;
mod nginx;
mod ovs;
mod pki;
mod prometheus;
mod run;
mod smtp;

pub use alertmanager::Alertmanager;
pub use cell::{
    describe_pod, pod_ready, Cell, CellNetwork, CellPool, CellSpec, KubeNode, PAUSE_IMAGE,
};
pub use dc::{DataCentre, Pod};
pub use docker::{build_busybox_image, busybox_rootfs, Dockerd, Registry};
pub use etcd::{Etcd, TlsFiles};
pub use git::{git, GitServer};
pub use http::{form, http, http_json, HttpSink, Received};
pub use image::Image;
pub use java::{load_java_images, MavenMirror, COMPILE_IMAGE, JRE_IMAGE};
pub use lb::{
    http_get, http_get_host, nginx_agent_command, spawn_agent, spawn_nginx, Discovery, Load,
    LoadCount, NginxAgent,
};
pub use leengine_store::keys::Component;
pub use netns::Netns;
pub use nginx::{worker_pids as nginx_worker_pids, Nginx, NginxCtx};
pub use ovs::Ovs;
pub use pki::{Ca, CertPair};
pub use prometheus::Prometheus;
pub use run::{free_port, reap_stale, require_bin, run_dir, unique_name, wait_until};
pub use smtp::Smtp;
